"""The inference graph, parsed once from the SeldonDeployment users already have.

The local executor and the manifest renderer both consume the one ``Graph`` built here, so what runs
on a laptop and what is applied to a cluster cannot drift. Real Seldon silently falls back to a 50/50
split when it cannot read ``ratioA``; this parser refuses anything it cannot honour exactly and says
how to fix the document instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

API_GROUP = "machinelearning.seldon.io"
API_VERSIONS = ("v1alpha2", "v1alpha3", "v1")
DEFAULT_API_VERSION = f"{API_GROUP}/v1"
KIND = "SeldonDeployment"
SKLEARN_SERVER = "SKLEARN_SERVER"
RANDOM_ABTEST = "RANDOM_ABTEST"
# Bandits, as Seldon v1 shipped them (as routers in its component library): they learn from feedback.
EPSILON_GREEDY = "EPSILON_GREEDY"
THOMPSON_SAMPLING = "THOMPSON_SAMPLING"
BANDITS = (EPSILON_GREEDY, THOMPSON_SAMPLING)
MODEL_IMPLEMENTATIONS = (SKLEARN_SERVER,)
ROUTER_IMPLEMENTATIONS = (RANDOM_ABTEST, *BANDITS)
EPSILON_PARAMETER = "epsilon"
DEFAULT_EPSILON = 0.1
RATIO_PARAMETER = "ratioA"
RATIO_PARAMETER_EXAMPLE = '{"name":"ratioA","value":"0.5","type":"FLOAT"}'
# abflow's sticky assignment: the router parameter naming the unit a request is assigned by, either a
# request header or a ``meta.tags`` key, e.g. {"name":"unit","value":"header:X-User-Id","type":"STRING"}.
UNIT_PARAMETER = "unit"
HEADER_UNIT = "header"
TAG_UNIT = "tag"
UNIT_PARAMETER_EXAMPLE = '{"name":"unit","value":"header:X-User-Id","type":"STRING"}'
UNIT_ENV = "ABFLOW_UNIT"
"""``abflow serve --unit``, as the serving process (foreground, detached or a successor) reads it."""
FLOAT_TYPES = ("FLOAT", "DOUBLE")
# SKLEARN_SERVER's ``method`` parameter: predict_proba is the only method abflow serves.
METHOD_PARAMETER = "method"
SERVED_METHOD = "predict_proba"


# The node names of the tutorial's ab_test.json, which the pipeline's own A/B graph keeps so that
# what users read in meta.routing and the smoke report matches what they know.
DEFAULT_ROUTER_NAME = "random-ab-test"
DEFAULT_ARM_NAMES = ("classifier-1", "classifier-2")
SHADOW_PREDICTOR = "shadow"
"""The name abflow gives the predictor marked ``shadow: true`` (Seldon v1 names it nowhere itself)."""
AB_MODE = "ab"
SHADOW_MODE = "shadow"
DEPLOY_MODES = (AB_MODE, SHADOW_MODE)
"""How the pipeline deploys a challenger: as arm B of the A/B graph (``ab_graph``), or as a shadow of
the champion that no user sees (``shadow_graph``)."""


class GraphError(ValueError):
    """A graph abflow cannot run exactly as written; the message names the node and the fix."""


@dataclass(frozen=True)
class ModelNode:
    name: str
    implementation: str | None
    model_uri: str | None
    image: str | None


@dataclass(frozen=True)
class RouterNode:
    """A router over two MODEL nodes; ``unit`` (``header:NAME`` or ``tag:KEY``) makes a RANDOM_ABTEST
    split sticky. ``ratio_a`` is RANDOM_ABTEST's and ``epsilon`` EPSILON_GREEDY's; the other router
    implementations ignore them."""

    name: str
    implementation: str
    ratio_a: float
    children: tuple[ModelNode, ModelNode]
    unit: str | None = None
    epsilon: float = DEFAULT_EPSILON

    @property
    def unit_source(self) -> tuple[str, str] | None:
        """``unit`` split into its kind (``header`` or ``tag``) and the header name or tag key."""
        return parse_unit(self.unit, self.name) if self.unit is not None else None


def parse_unit(spec: str, node: str = "") -> tuple[str, str]:
    """``header:X-User-Id`` → ``("header", "X-User-Id")``, ``tag:user`` → ``("tag", "user")``."""
    kind, sep, key = spec.partition(":")
    kind, key = kind.strip(), key.strip()
    if not sep or kind not in (HEADER_UNIT, TAG_UNIT) or not key:
        where = f" (graph node {node!r})" if node else ""
        raise GraphError(f"the unit of assignment must be header:NAME or tag:KEY (e.g. header:X-User-Id or "
                         f"tag:user), got {spec!r}{where}")
    return kind, key


@dataclass(frozen=True)
class Graph:
    """One predictor's graph plus the deployment-level settings the executor honours.

    ``annotations`` are the predictor's annotations (e.g. the tutorial's ``predictor_version``),
    held read-only so a parsed graph can be shared between threads without copying. ``shadow`` is the
    MODEL node of a second predictor marked ``shadow: true`` (named ``shadow_predictor``), which gets
    a copy of ``shadow_fraction`` of the served requests and whose answers are compared, never
    returned. The fraction is the shadow predictor's ``traffic`` as Seldon v1 reads it (its operator
    sets Istio's mirror percentage from it; 0 or none mirrors everything).
    """

    name: str
    predictor: str
    root: ModelNode | RouterNode
    oauth_key: str | None = None
    oauth_secret: str | None = None
    api_version: str = DEFAULT_API_VERSION
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    shadow: ModelNode | None = None
    shadow_predictor: str | None = None
    shadow_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.annotations, MappingProxyType):
            object.__setattr__(self, "annotations", MappingProxyType(dict(self.annotations)))

    def __reduce__(self) -> tuple[type[Graph], tuple[Any, ...]]:
        """Pickle the annotations as a plain dict (a mappingproxy cannot be pickled), so a graph can
        be handed to a worker process."""
        fields = (self.name, self.predictor, self.root, self.oauth_key, self.oauth_secret, self.api_version)
        return type(self), (*fields, dict(self.annotations), self.shadow, self.shadow_predictor,
                            self.shadow_fraction)

    def model_nodes(self) -> tuple[ModelNode, ...]:
        if isinstance(self.root, RouterNode):
            return self.root.children
        return (self.root,)

    def served_nodes(self) -> tuple[ModelNode, ...]:
        """Every MODEL node that runs: the serving predictor's, then the shadow's."""
        return (*self.model_nodes(), *([self.shadow] if self.shadow is not None else []))

    @property
    def router(self) -> RouterNode | None:
        return self.root if isinstance(self.root, RouterNode) else None


def parse_graph(document: Mapping[str, Any]) -> Graph:
    """Validate a SeldonDeployment document and turn it into a ``Graph``."""
    if not isinstance(document, Mapping):
        raise GraphError(f"a SeldonDeployment must be a JSON/YAML object, got {type(document).__name__}")
    api_version = _parse_api_version(document.get("apiVersion"))
    kind = document.get("kind")
    if kind != KIND:
        raise GraphError(f"kind must be {KIND!r}, got {kind!r}")
    metadata = _mapping(document.get("metadata"), "metadata", required=True)
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise GraphError("metadata.name is missing: give the SeldonDeployment a name")
    spec = _mapping(document.get("spec"), "spec", required=True)
    predictor, shadow_predictor = _predictors(spec.get("predictors"))
    predictor_name = predictor.get("name")
    if not isinstance(predictor_name, str) or not predictor_name:
        raise GraphError("spec.predictors[0].name is missing: give the predictor a name")
    if "graph" not in predictor:
        raise GraphError(f"predictor {predictor_name!r} has no graph: add spec.predictors[0].graph")
    images = _container_images(predictor.get("componentSpecs"))
    root = _parse_node(predictor["graph"], images, "spec.predictors[0].graph", top=True)
    names = [root.name] + [child.name for child in getattr(root, "children", ())]
    shadow = _parse_shadow(shadow_predictor) if shadow_predictor is not None else None
    if shadow is not None:
        names.append(shadow.name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GraphError(f"node name {duplicates[0]!r} is used more than once: give every graph node a distinct name")
    return Graph(
        name=name,
        predictor=predictor_name,
        root=root,
        oauth_key=_optional_str(spec.get("oauth_key"), "spec.oauth_key"),
        oauth_secret=_optional_str(spec.get("oauth_secret"), "spec.oauth_secret"),
        api_version=api_version,
        annotations=_annotations(predictor.get("annotations"), predictor_name),
        shadow=shadow,
        shadow_predictor=shadow_predictor.get("name") if shadow_predictor is not None else None,
        shadow_fraction=_mirror_fraction(shadow_predictor) if shadow_predictor is not None else 1.0,
    )


def load_graph(path: str | Path) -> Graph:
    """Read a SeldonDeployment from a JSON or YAML file (decided by content, not by extension)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphError(f"cannot read graph file {str(path)!r}: {exc}") from exc
    try:
        return parse_graph(json.loads(text))
    except json.JSONDecodeError:
        pass
    return parse_graph(_yaml_deployment(text, str(path)))


def resolve_model_uris(graph: Graph, overrides: Mapping[str, str]) -> dict[str, str]:
    """Decide which model every MODEL node serves: ``--model NODE=URI`` wins over the node's modelUri."""
    nodes = {node.name: node for node in graph.served_nodes()}
    unknown = sorted(set(overrides) - nodes.keys())
    if unknown:
        raise GraphError(
            f"--model names node {unknown[0]!r}, which is not a model node of graph {graph.name!r}; "
            f"model nodes are: {', '.join(repr(n) for n in nodes)}"
        )
    resolved: dict[str, str] = {}
    for name, node in nodes.items():
        if name in overrides:
            resolved[name] = overrides[name]
        elif node.implementation == SKLEARN_SERVER and node.model_uri:
            resolved[name] = node.model_uri
        else:
            why = (
                "its SKLEARN_SERVER node has no modelUri"
                if node.implementation == SKLEARN_SERVER
                else "it runs a custom image, so abflow cannot know its model"
            )
            raise GraphError(
                f"no model for graph node {name!r}: {why}; pass --model {name}=URI "
                "(a folder holding model.joblib, a .joblib file, file://… or gs://…)"
            )
    return resolved


def with_unit(graph: Graph, unit: str) -> Graph:
    """``graph`` with its router made sticky by ``unit`` (``abflow serve --unit``, which wins over the
    router's own ``unit`` parameter)."""
    router = graph.router
    if router is None:
        raise GraphError(f"--unit {unit} needs a graph with a router, and graph {graph.name!r} serves one model: "
                         "drop --unit or serve an A/B graph")
    parse_unit(unit, router.name)
    return dataclasses.replace(graph, root=dataclasses.replace(router, unit=unit.strip()))


def parse_router_node(raw: object, where: str = "router node") -> RouterNode:
    """One router node in the graph's own form (``to_seldon_deployment``'s), as the router server
    takes it on a cluster, validated like the whole graph."""
    node = _parse_node(raw, {}, where, top=True)
    if not isinstance(node, RouterNode):
        raise GraphError(f"{where} is a MODEL node ({node.name!r}); a router server needs a router node")
    return node


def render_router_node(node: RouterNode) -> dict[str, Any]:
    """``node`` in the graph's own form, what ``parse_router_node`` reads back."""
    return _render_node(node)


def parse_model_option(option: str) -> tuple[str, str]:
    """Split a ``--model NODE=URI`` value (the URI may itself contain '=')."""
    node, sep, uri = option.partition("=")
    node, uri = node.strip(), uri.strip()
    if not sep or not node or not uri:
        raise GraphError(f"--model expects NODE=URI (e.g. classifier-1=./models/iris/v1), got {option!r}")
    return node, uri


def ab_graph(
    name: str,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    *,
    router_name: str = DEFAULT_ROUTER_NAME,
    arm_names: tuple[str, str] = DEFAULT_ARM_NAMES,
    image: str | None = None,
    unit: str | None = None,
    router: str = RANDOM_ABTEST,
) -> Graph:
    """The champion/challenger graph the pipeline deploys: arm A (child 0) gets ``ratio_a`` of traffic,
    of units when ``unit`` (``header:NAME`` or ``tag:KEY``) makes the split sticky; ``router`` may be a
    bandit instead (``EPSILON_GREEDY``, ``THOMPSON_SAMPLING``), which ignores ``ratio_a``."""
    if router not in ROUTER_IMPLEMENTATIONS:
        raise GraphError(f"router {router!r} is not one abflow runs: use one of {', '.join(ROUTER_IMPLEMENTATIONS)}")
    _check_ratio(ratio_a, router_name)
    if unit is not None:
        parse_unit(unit, router_name)
    arms = (
        ModelNode(arm_names[0], SKLEARN_SERVER, model_a_uri, image),
        ModelNode(arm_names[1], SKLEARN_SERVER, model_b_uri, image),
    )
    names = [router_name, *arm_names]
    if len(set(names)) != len(names):
        raise GraphError(f"router and arm names must be distinct, got {names}")
    root = RouterNode(router_name, router, float(ratio_a), arms, unit=unit)
    return Graph(name=name, predictor="default", root=root)


def shadow_graph(name: str, champion_uri: str, challenger_uri: str, fraction: float = 1.0, *,
                 arm_names: tuple[str, str] = DEFAULT_ARM_NAMES, image: str | None = None) -> Graph:
    """The graph of a shadow deployment: the champion (``arm_names[0]``) serves every request, and the
    challenger (``arm_names[1]``) gets a copy of ``fraction`` of them, compared and never returned."""
    mirror_percent(fraction)
    if arm_names[0] == arm_names[1]:
        raise GraphError(f"the champion and the shadow need distinct names, got {arm_names}")
    champion = ModelNode(arm_names[0], SKLEARN_SERVER, champion_uri, image)
    challenger = ModelNode(arm_names[1], SKLEARN_SERVER, challenger_uri, image)
    return Graph(name=name, predictor="default", root=champion, shadow=challenger, shadow_predictor=SHADOW_PREDICTOR,
                 shadow_fraction=float(fraction))


def single_model_graph(name: str, model_uri: str, node_name: str = "classifier", image: str | None = None) -> Graph:
    return Graph(name=name, predictor="default", root=ModelNode(node_name, SKLEARN_SERVER, model_uri, image))


def to_seldon_deployment(graph: Graph) -> dict[str, Any]:
    """Render the minimal SeldonDeployment that parses back to ``graph``; cluster extras go on top."""
    spec: dict[str, Any] = {}
    if graph.oauth_key is not None:
        spec["oauth_key"] = graph.oauth_key
    if graph.oauth_secret is not None:
        spec["oauth_secret"] = graph.oauth_secret
    predictor: dict[str, Any] = {"name": graph.predictor, "graph": _render_node(graph.root)}
    containers = [{"name": node.name, "image": node.image} for node in graph.model_nodes() if node.image]
    if containers:
        predictor["componentSpecs"] = [{"spec": {"containers": containers}}]
    if graph.annotations:
        predictor["annotations"] = dict(graph.annotations)
    spec["predictors"] = [predictor]
    if graph.shadow is not None:
        shadow: dict[str, Any] = {"name": graph.shadow_predictor or SHADOW_PREDICTOR, "shadow": True,
                                  "graph": _render_node(graph.shadow)}
        if graph.shadow_fraction < 1.0:
            shadow["traffic"] = mirror_percent(graph.shadow_fraction)
        if graph.shadow.image:
            shadow["componentSpecs"] = [{"spec": {"containers": [{"name": graph.shadow.name,
                                                                  "image": graph.shadow.image}]}}]
        spec["predictors"].append(shadow)
    return {
        "apiVersion": graph.api_version,
        "kind": KIND,
        "metadata": {"name": graph.name},
        "spec": spec,
    }


def _render_node(node: ModelNode | RouterNode) -> dict[str, Any]:
    if isinstance(node, RouterNode):
        parameters = []
        if node.implementation == RANDOM_ABTEST:
            parameters.append({"name": RATIO_PARAMETER, "value": repr(node.ratio_a), "type": "FLOAT"})
        if node.implementation == EPSILON_GREEDY:
            parameters.append({"name": EPSILON_PARAMETER, "value": repr(node.epsilon), "type": "FLOAT"})
        if node.unit is not None:
            parameters.append({"name": UNIT_PARAMETER, "value": node.unit, "type": "STRING"})
        return {
            "name": node.name,
            "implementation": node.implementation,
            "parameters": parameters,
            "children": [_render_node(child) for child in node.children],
        }
    rendered: dict[str, Any] = {
        "name": node.name,
        "type": "MODEL",
        "endpoint": {"type": "REST"},
        "children": [],
    }
    if node.implementation is not None:
        rendered["implementation"] = node.implementation
    if node.model_uri is not None:
        rendered["modelUri"] = node.model_uri
    return rendered


def _parse_api_version(value: object) -> str:
    supported = ", ".join(f"{API_GROUP}/{v}" for v in API_VERSIONS)
    if not isinstance(value, str):
        raise GraphError(f"apiVersion is missing: set it to one of {supported}")
    group, _, version = value.partition("/")
    if group != API_GROUP or version not in API_VERSIONS:
        raise GraphError(f"apiVersion {value!r} is not supported: use one of {supported}")
    return value


def _predictors(predictors: object) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """The one serving predictor and, if there is one, the predictor marked ``shadow: true``."""
    if predictors is None:
        raise GraphError("spec.predictors is missing: a SeldonDeployment needs exactly one predictor")
    if not isinstance(predictors, list) or not predictors:
        raise GraphError("spec.predictors must be a non-empty list holding exactly one predictor")
    parsed = [_mapping(p, f"spec.predictors[{i}]", required=True) for i, p in enumerate(predictors)]
    shadows = [p for p in parsed if p.get("shadow") is True]
    serving = [p for p in parsed if p.get("shadow") is not True]
    if len(serving) != 1 or len(shadows) > 1:
        raise GraphError(
            f"spec.predictors has {len(serving)} serving and {len(shadows)} shadow predictors; abflow runs "
            "exactly one, plus at most one marked \"shadow\": true (splitting traffic between predictors is "
            "not supported): put the A/B split in one predictor's graph with a RANDOM_ABTEST router"
        )
    return serving[0], shadows[0] if shadows else None


def _parse_shadow(predictor: Mapping[str, Any]) -> ModelNode:
    """A shadow predictor's graph: one MODEL node (a challenger tried on mirrored traffic)."""
    name = predictor.get("name")
    if not isinstance(name, str) or not name:
        raise GraphError("the shadow predictor has no name: give it one")
    node = _parse_node(predictor.get("graph"), _container_images(predictor.get("componentSpecs")),
                       f"graph of shadow predictor {name!r}", top=True)
    if not isinstance(node, ModelNode):
        raise GraphError(f"shadow predictor {name!r} has a router; a shadow is one MODEL node: give it one model")
    return node


def mirror_percent(fraction: float) -> int:
    """A mirror fraction as the whole percent a shadow predictor's ``traffic`` holds (Seldon's CRD
    types it as an integer, and Istio mirrors by percent)."""
    percent = round(fraction * 100)
    if not 0 < fraction <= 1 or abs(percent - fraction * 100) > 1e-9:
        raise GraphError(f"the shadow's mirror fraction must be a whole percent in (0, 1] (e.g. 0.25), "
                         f"got {fraction!r}")
    return percent


def _mirror_fraction(predictor: Mapping[str, Any]) -> float:
    traffic = predictor.get("traffic", 0)
    if isinstance(traffic, bool) or not isinstance(traffic, int) or not 0 <= traffic <= 100:
        raise GraphError(f"traffic of shadow predictor {predictor.get('name')!r} must be a whole percent from 0 "
                         f"to 100 (the share of requests mirrored to it; 0 or none: all), got {traffic!r}")
    return traffic / 100 if traffic else 1.0


def _container_images(component_specs: object) -> dict[str, str]:
    """Map container name → image over all componentSpecs, so a node can find its own image."""
    if component_specs is None:
        return {}
    if not isinstance(component_specs, list):
        raise GraphError("spec.predictors[0].componentSpecs must be a list")
    images: dict[str, str] = {}
    for i, component in enumerate(component_specs):
        where = f"spec.predictors[0].componentSpecs[{i}]"
        pod_spec = _mapping(_mapping(component, where, required=True).get("spec"), f"{where}.spec")
        containers = pod_spec.get("containers", [])
        if not isinstance(containers, list):
            raise GraphError(f"{where}.spec.containers must be a list")
        for j, container in enumerate(containers):
            container = _mapping(container, f"{where}.spec.containers[{j}]", required=True)
            name, image = container.get("name"), container.get("image")
            if not isinstance(name, str):
                raise GraphError(f"{where}.spec.containers[{j}] has no name")
            if name in images:
                raise GraphError(f"container name {name!r} appears twice in componentSpecs: rename one")
            if isinstance(image, str):
                images[name] = image
    return images


def _parse_node(raw: object, images: Mapping[str, str], where: str, *, top: bool) -> ModelNode | RouterNode:
    node = _mapping(raw, where, required=True)
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise GraphError(f"{where} has no name: every graph node needs a name")
    implementation = node.get("implementation")
    node_type = node.get("type")
    children = node.get("children") or []
    if not isinstance(children, list):
        raise GraphError(f"children of graph node {name!r} must be a list")
    if implementation in ROUTER_IMPLEMENTATIONS or node_type == "ROUTER":
        if not top:
            raise GraphError(
                f"graph node {name!r} is a router inside a router; nested routers are not supported: "
                "use one RANDOM_ABTEST router with two MODEL children"
            )
        return _parse_router(name, implementation, node, children, images, where)
    if implementation is not None and implementation not in MODEL_IMPLEMENTATIONS:
        supported = ", ".join([*MODEL_IMPLEMENTATIONS, *ROUTER_IMPLEMENTATIONS])
        raise GraphError(
            f"graph node {name!r} has implementation {implementation!r}, which abflow does not run; "
            f"supported implementations: {supported} (or type MODEL with a custom image)"
        )
    if implementation is None and node_type != "MODEL":
        raise GraphError(
            f"graph node {name!r} has type {node_type!r}; abflow runs MODEL nodes and a RANDOM_ABTEST "
            'router: set "type": "MODEL" or "implementation": "SKLEARN_SERVER"'
        )
    if children:
        raise GraphError(
            f"MODEL node {name!r} has children; abflow does not chain models: "
            "remove its children or put the models under a RANDOM_ABTEST router"
        )
    _check_model_parameters(name, node.get("parameters"))
    model_uri = node.get("modelUri")
    if model_uri is not None and not isinstance(model_uri, str):
        raise GraphError(f"modelUri of graph node {name!r} must be a string, got {model_uri!r}")
    return ModelNode(name=name, implementation=implementation, model_uri=model_uri, image=images.get(name))


def _parse_router(
    name: str,
    implementation: object,
    node: Mapping[str, Any],
    children: list[Any],
    images: Mapping[str, str],
    where: str,
) -> RouterNode:
    if implementation not in ROUTER_IMPLEMENTATIONS:
        raise GraphError(
            f"router node {name!r} has implementation {implementation!r}; abflow routes only with "
            f'{", ".join(ROUTER_IMPLEMENTATIONS)}: set "implementation": "RANDOM_ABTEST"'
        )
    if len(children) != 2:
        raise GraphError(
            f"{implementation} needs exactly two children, got {len(children)} (graph node {name!r}): "
            "give the router two MODEL children, A first"
        )
    parsed = tuple(_parse_node(child, images, f"{where}.children[{i}]", top=False) for i, child in enumerate(children))
    first, second = parsed
    assert isinstance(first, ModelNode) and isinstance(second, ModelNode)
    if implementation in BANDITS:
        epsilon = _parse_bandit_parameters(name, implementation, node.get("parameters"))
        return RouterNode(name=name, implementation=implementation, ratio_a=0.5, children=(first, second),
                          epsilon=epsilon)
    ratio_a, unit = _parse_router_parameters(name, node.get("parameters"))
    return RouterNode(name=name, implementation=RANDOM_ABTEST, ratio_a=ratio_a, children=(first, second), unit=unit)


def _parse_bandit_parameters(name: str, implementation: str, parameters: object) -> float:
    """EPSILON_GREEDY's ``epsilon`` (default 0.1); Seldon's ``n_branches`` is accepted when it is 2.
    Nothing else: a parameter abflow would not honour is an error, not a silent default."""
    params = _parameters(name, parameters)
    known = ("n_branches", EPSILON_PARAMETER) if implementation == EPSILON_GREEDY else ("n_branches",)
    extra = [p for p in params if p not in known]
    if extra:
        raise GraphError(f"{implementation} does not take parameter {extra[0]!r} (graph node {name!r}); it takes "
                         f"{', '.join(known)}: remove {extra[0]!r}")
    if "n_branches" in params and str(params["n_branches"][0]) != "2":
        raise GraphError(f"n_branches must be 2, the number of children, got {params['n_branches'][0]!r} "
                         f"(graph node {name!r})")
    if EPSILON_PARAMETER not in params:
        return DEFAULT_EPSILON
    value = params[EPSILON_PARAMETER][0]
    try:
        epsilon = float(value) if not isinstance(value, bool) and isinstance(value, str | int | float) else math.nan
    except ValueError:
        epsilon = math.nan
    if math.isnan(epsilon) or not 0.0 <= epsilon <= 1.0:
        raise GraphError(f"epsilon must be a number between 0 and 1, got {value!r} (graph node {name!r})")
    return epsilon


def _parse_router_parameters(name: str, parameters: object) -> tuple[float, str | None]:
    """``ratioA`` and the optional sticky ``unit``. Anything else is refused: real Seldon silently
    ignores ratioA and splits 50/50 when ratioA is not the only parameter it knows."""
    params = _parameters(name, parameters)
    extra = [p for p in params if p not in (RATIO_PARAMETER, UNIT_PARAMETER)]
    if extra:
        raise GraphError(
            f"RANDOM_ABTEST does not take parameter {extra[0]!r} (graph node {name!r}); real Seldon "
            f"silently ignores ratioA and splits 50/50 when it is not the only parameter: remove {extra[0]!r} "
            f"(abflow's one addition is {UNIT_PARAMETER_EXAMPLE}, for sticky assignment)"
        )
    unit = None
    if UNIT_PARAMETER in params:
        value, value_type = params[UNIT_PARAMETER]
        if value_type not in (None, "STRING") or not isinstance(value, str):
            raise GraphError(f"the unit parameter must be a STRING like {UNIT_PARAMETER_EXAMPLE}, got "
                             f"{value!r} of type {value_type!r} (graph node {name!r})")
        parse_unit(value, name)
        unit = value.strip()
    return _parse_ratio(name, params), unit


def _parse_ratio(name: str, params: dict[str, tuple[object, object]]) -> float:
    if RATIO_PARAMETER not in params:
        raise GraphError(
            f"RANDOM_ABTEST needs a ratioA parameter (graph node {name!r}); real Seldon silently splits "
            f"50/50 without one: add {RATIO_PARAMETER_EXAMPLE} to its parameters"
        )
    value, value_type = params[RATIO_PARAMETER]
    if value_type is not None and value_type not in FLOAT_TYPES:
        raise GraphError(f'ratioA must have "type": "FLOAT", got {value_type!r} (graph node {name!r})')
    ratio: object = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a number: check_ratio names the text as written
            ratio = float(value)
    return _check_ratio(ratio, name)


def check_ratio(value: object, what: str = "ratioA", where: str = "") -> float:
    """``value`` as a float if it is a number in [0, 1] (NaN, infinities and booleans are not), else a
    ``ValueError`` naming ``what`` (and ``where``, e.g. the graph node) and what the number means.

    The one validator of a share of traffic: the graph parser, the routers, the pipeline's deploy and
    smoke steps, ``ratio_schedule`` and ``abflow run``'s flags all call it, so they accept the same
    numbers and refuse the rest in the same words."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1, got {value!r}{where}: it is the share of traffic "
                         "arm A (the champion) gets, e.g. 0.5")
    return float(value)


def _check_ratio(ratio: object, name: str) -> float:
    try:
        return check_ratio(ratio, where=f" (graph node {name!r})")
    except ValueError as exc:
        raise GraphError(str(exc)) from None


def _check_model_parameters(name: str, parameters: object) -> None:
    for param, (value, _) in _parameters(name, parameters).items():
        if param == METHOD_PARAMETER and value == SERVED_METHOD:
            continue
        raise GraphError(
            f"MODEL node {name!r} has parameter {param!r}={value!r}, which abflow would not honour "
            f"(it always serves {SERVED_METHOD}): remove the parameter"
        )


def _parameters(name: str, parameters: object) -> dict[str, tuple[object, object]]:
    """Parameter name → (value, type); a repeated name is an error rather than last-one-wins."""
    if parameters is None:
        return {}
    if not isinstance(parameters, list):
        raise GraphError(f"parameters of graph node {name!r} must be a list of {{name, value, type}}")
    parsed: dict[str, tuple[object, object]] = {}
    for param in parameters:
        if not isinstance(param, Mapping) or not isinstance(param.get("name"), str):
            raise GraphError(f"graph node {name!r} has a parameter without a name: {param!r}")
        if param["name"] in parsed:
            raise GraphError(f"graph node {name!r} sets parameter {param['name']!r} twice: keep one")
        parsed[param["name"]] = (param.get("value"), param.get("type"))
    return parsed


def _annotations(raw: object, predictor: str) -> Mapping[str, str]:
    annotations = _mapping(raw, f"annotations of predictor {predictor!r}")
    for key, value in annotations.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise GraphError(
                f"annotation {key!r} of predictor {predictor!r} must map a string to a string, "
                f"got {value!r}: quote the value"
            )
    return MappingProxyType(dict(annotations))


def _mapping(value: object, where: str, *, required: bool = False) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if value is None:
        raise GraphError(f"{where} is missing")
    if not isinstance(value, Mapping):
        raise GraphError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _optional_str(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise GraphError(f"{where} must be a string, got {value!r}")


def _yaml_deployment(text: str, source: str) -> Any:
    """The SeldonDeployment in a YAML file, which may hold other documents (a namespace, a secret)."""
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise GraphError(f"{source} is neither JSON nor YAML: {exc}") from exc
    if len(documents) == 1:
        return documents[0]
    deployments = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(deployments) != 1:
        raise GraphError(
            f"{source} holds {len(deployments)} SeldonDeployments among {len(documents)} documents; keep exactly one"
        )
    return deployments[0]
