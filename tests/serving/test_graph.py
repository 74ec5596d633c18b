"""The graph parser against the tutorial's files, the traps real Seldon leaves open, and the renderer."""

from __future__ import annotations

import copy
import functools
import json
import pickle
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from abflow.serving.graph import (
    RATIO_PARAMETER_EXAMPLE,
    Graph,
    GraphError,
    ModelNode,
    RouterNode,
    ab_graph,
    load_graph,
    parse_graph,
    parse_model_option,
    resolve_model_uris,
    single_model_graph,
    to_seldon_deployment,
)

DATA = Path(__file__).parent.parent / "data"
TUTORIAL = DATA / "tutorial"
CRD = DATA / "crds" / "seldondeployments.machinelearning.seldon.io.v1.17.1.yaml"


def tutorial(name: str) -> dict[str, Any]:
    return dict(json.loads((TUTORIAL / name).read_text()))


@pytest.fixture
def ab_doc() -> dict[str, Any]:
    return tutorial("ab_test.json")


def router_of(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["predictors"][0]["graph"])


def test_tutorial_single_model_parses_unchanged() -> None:
    graph = load_graph(TUTORIAL / "TMPL_deployment.json")
    assert graph.name == "sklearn-iris-example"
    assert graph.predictor == "classifier"
    assert graph.root == ModelNode("sklearn-iris-classifier", None, None, "gcav66/sklearn-iris:0.1")
    assert graph.router is None
    assert graph.model_nodes() == (graph.root,)
    assert (graph.oauth_key, graph.oauth_secret) == ("oauth-key", "oauth-secret")
    assert graph.api_version == "machinelearning.seldon.io/v1alpha2"
    assert dict(graph.annotations) == {"predictor_version": "0.1"}


def test_tutorial_ab_test_parses_unchanged() -> None:
    graph = load_graph(TUTORIAL / "ab_test.json")
    router = graph.router
    assert router is not None
    assert (router.name, router.implementation, router.ratio_a) == ("random-ab-test", "RANDOM_ABTEST", 0.5)
    assert [node.name for node in graph.model_nodes()] == ["classifier-1", "classifier-2"]
    assert {node.image for node in graph.model_nodes()} == {"gcav66/sklearn-iris:0.1"}
    assert dict(graph.annotations) == {"predictor_version": "v1"}


def test_yaml_is_read_by_content_whatever_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "graph.json"
    path.write_text(yaml.safe_dump(tutorial("ab_test.json")))
    assert load_graph(path) == load_graph(TUTORIAL / "ab_test.json")


def test_multi_document_yaml_picks_the_seldon_deployment(tmp_path: Path) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "models"}}
    path = tmp_path / "graph.yaml"
    path.write_text(yaml.safe_dump_all([namespace, tutorial("ab_test.json")]))
    assert load_graph(path).router is not None


def test_unreadable_files_are_graph_errors(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="cannot read graph file"):
        load_graph(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(GraphError, match="neither JSON nor YAML"):
        load_graph(bad)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([tutorial("ab_test.json"), tutorial("TMPL_deployment.json")]))
    with pytest.raises(GraphError, match="holds 2 SeldonDeployments"):
        load_graph(two)


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha3", "v1"])
def test_all_three_api_versions_are_accepted(ab_doc: dict[str, Any], version: str) -> None:
    ab_doc["apiVersion"] = f"machinelearning.seldon.io/{version}"
    assert parse_graph(ab_doc).api_version.endswith(version)


def test_sklearn_server_nodes_keep_their_model_uri(ab_doc: dict[str, Any]) -> None:
    child = router_of(ab_doc)["children"][0]
    child.update(implementation="SKLEARN_SERVER", modelUri="gs://bucket/models/iris/v1")
    child["parameters"] = [{"name": "method", "value": "predict_proba", "type": "STRING"}]
    node = parse_graph(ab_doc).model_nodes()[0]
    assert node == ModelNode("classifier-1", "SKLEARN_SERVER", "gs://bucket/models/iris/v1", "gcav66/sklearn-iris:0.1")


def _set(path: str, value: Any) -> Any:
    """A mutation of the tutorial's ab_test.json: set the dotted ``path`` (list indexes as digits)."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list) and int(last) == len(target):
            target.append(value)
        elif isinstance(target, list):
            target[int(last)] = value
        elif value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()
GRAPH = "spec.predictors.0.graph"
RATIO = f"{GRAPH}.parameters.0.value"
CHILD = f"{GRAPH}.children.0"
MODEL_CHILD = {"name": "classifier-3", "type": "MODEL", "children": []}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(RATIO, "1.5"), "ratioA must be between 0 and 1, got 1.5 (graph node 'random-ab-test')"),
        (_set(RATIO, "-0.1"), "ratioA must be between 0 and 1, got -0.1"),
        (_set(RATIO, "half"), "ratioA must be between 0 and 1, got 'half'"),
        (_set(RATIO, "NaN"), "ratioA must be between 0 and 1, got nan"),
        (_set(RATIO, "inf"), "ratioA must be between 0 and 1, got inf"),
        (_set(RATIO, True), "ratioA must be between 0 and 1, got True"),
        (_set(RATIO, None), "ratioA must be between 0 and 1, got None"),
        (_set(f"{GRAPH}.parameters.0.type", "INT"), 'ratioA must have "type": "FLOAT"'),
        (_set(f"{GRAPH}.parameters", []), f"add {RATIO_PARAMETER_EXAMPLE}"),
        (_set(f"{GRAPH}.parameters", _DELETE), "RANDOM_ABTEST needs a ratioA parameter"),
        (
            _set(f"{GRAPH}.parameters.1", {"name": "seed", "value": "1", "type": "INT"}),
            "does not take parameter 'seed' (graph node 'random-ab-test')",
        ),
        (
            _set(f"{GRAPH}.parameters.0.name", "ratioB"),
            "does not take parameter 'ratioB'",
        ),
        (
            _set(f"{GRAPH}.parameters.1", {"name": "ratioA", "value": "0.2", "type": "FLOAT"}),
            "sets parameter 'ratioA' twice",
        ),
        (_set(f"{GRAPH}.parameters", "ratioA=0.5"), "must be a list"),
        (_set(f"{GRAPH}.children.2", MODEL_CHILD), "exactly two children, got 3 (graph node 'random-ab-test')"),
        (_set(f"{GRAPH}.children", [MODEL_CHILD]), "exactly two children, got 1"),
        (_set(f"{GRAPH}.implementation", "UCB1"), "supported implementations: SKLEARN_SERVER, RANDOM_ABTEST"),
        (
            _set(GRAPH, {"name": "custom-router", "type": "ROUTER", "children": [MODEL_CHILD, MODEL_CHILD]}),
            'set "implementation": "RANDOM_ABTEST"',
        ),
        (
            _set(f"{CHILD}.implementation", "TENSORFLOW_SERVER"),
            "supported implementations: SKLEARN_SERVER, RANDOM_ABTEST",
        ),
        (_set(f"{CHILD}.type", "TRANSFORMER"), "has type 'TRANSFORMER'"),
        (
            _set(f"{CHILD}.parameters", [{"name": "method", "value": "predict", "type": "STRING"}]),
            "MODEL node 'classifier-1' has parameter 'method'='predict'",
        ),
        (_set(f"{CHILD}.children", [MODEL_CHILD]), "MODEL node 'classifier-1' has children"),
        (
            _set(CHILD, {"name": "inner", "implementation": "RANDOM_ABTEST", "children": []}),
            "nested routers are not supported",
        ),
        (_set(f"{CHILD}.name", "classifier-2"), "node name 'classifier-2' is used more than once"),
        (_set(f"{CHILD}.name", "random-ab-test"), "node name 'random-ab-test' is used more than once"),
        (_set(f"{CHILD}.name", ""), "has no name"),
        (_set(f"{CHILD}.modelUri", 7), "modelUri of graph node 'classifier-1' must be a string"),
        (_set("spec.predictors.1", {"name": "canary", "graph": {}}), "splitting traffic between predictors"),
        (_set("spec.predictors", []), "exactly one predictor"),
        (_set("spec.predictors", _DELETE), "spec.predictors is missing"),
        (_set("spec.predictors.0.graph", _DELETE), "predictor 'classifier' has no graph"),
        (_set("spec.predictors.0.name", _DELETE), "spec.predictors[0].name is missing"),
        (_set("spec.predictors.0.componentSpecs", {}), "componentSpecs must be a list"),
        (
            _set("spec.predictors.0.componentSpecs.1.spec.containers.0.name", "classifier-1"),
            "container name 'classifier-1' appears twice",
        ),
        (_set("spec.predictors.0.annotations.predictor_version", 2), "annotation 'predictor_version'"),
        (_set("spec.oauth_key", 1), "spec.oauth_key must be a string"),
        (_set("spec", _DELETE), "spec is missing"),
        (_set("spec", []), "spec must be an object"),
        (_set("metadata.name", _DELETE), "metadata.name is missing"),
        (_set("kind", "Deployment"), "kind must be 'SeldonDeployment'"),
        (_set("apiVersion", "machinelearning.seldon.io/v2"), "is not supported: use one of"),
        (_set("apiVersion", _DELETE), "apiVersion is missing"),
    ],
)
def test_graphs_abflow_cannot_honour_are_refused_with_the_fix(
    ab_doc: dict[str, Any], mutate: Any, message: str
) -> None:
    mutate(ab_doc)
    with pytest.raises(GraphError) as error:
        parse_graph(ab_doc)
    assert message in str(error.value)


@pytest.mark.parametrize("document", [[], "SeldonDeployment", None, 3])
def test_a_document_that_is_not_an_object_is_refused(document: Any) -> None:
    with pytest.raises(GraphError, match="must be a JSON/YAML object"):
        parse_graph(document)


def test_ratio_may_be_a_yaml_number_and_the_edges_are_valid(ab_doc: dict[str, Any]) -> None:
    for value, expected in [(0, 0.0), (1, 1.0), ("0.25", 0.25), (0.75, 0.75)]:
        _set(RATIO, value)(ab_doc)
        router = parse_graph(ab_doc).router
        assert router is not None and router.ratio_a == expected


def test_overrides_win_and_sklearn_server_nodes_use_their_model_uri() -> None:
    graph = ab_graph("iris", "gs://b/iris/v1", "gs://b/iris/v2", 0.5)
    assert resolve_model_uris(graph, {}) == {"classifier-1": "gs://b/iris/v1", "classifier-2": "gs://b/iris/v2"}
    assert resolve_model_uris(graph, {"classifier-2": "/tmp/v3"}) == {
        "classifier-1": "gs://b/iris/v1",
        "classifier-2": "/tmp/v3",
    }


def test_custom_image_nodes_need_an_override() -> None:
    graph = load_graph(TUTORIAL / "ab_test.json")
    with pytest.raises(GraphError) as error:
        resolve_model_uris(graph, {"classifier-1": "/m/v1"})
    assert "no model for graph node 'classifier-2'" in str(error.value)
    assert "pass --model classifier-2=URI" in str(error.value)
    both = {"classifier-1": "/m/v1", "classifier-2": "/m/v2"}
    assert resolve_model_uris(graph, both) == both


def test_sklearn_server_without_model_uri_says_so() -> None:
    graph = single_model_graph("iris", "unused")
    graph = Graph(graph.name, graph.predictor, ModelNode("classifier", "SKLEARN_SERVER", None, None))
    with pytest.raises(GraphError, match="has no modelUri; pass --model classifier=URI"):
        resolve_model_uris(graph, {})


def test_an_override_for_an_unknown_node_is_refused() -> None:
    graph = load_graph(TUTORIAL / "ab_test.json")
    with pytest.raises(GraphError) as error:
        resolve_model_uris(graph, {"classifier-1": "/a", "classifier-2": "/b", "random-ab-test": "/c"})
    assert "'random-ab-test', which is not a model node" in str(error.value)
    assert "'classifier-1', 'classifier-2'" in str(error.value)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("classifier-1=./models/iris/v1", ("classifier-1", "./models/iris/v1")),
        ("a=gs://b/p?x=1", ("a", "gs://b/p?x=1")),
        (" a = /m ", ("a", "/m")),
    ],
)
def test_model_options_split_at_the_first_equals(option: str, expected: tuple[str, str]) -> None:
    assert parse_model_option(option) == expected


@pytest.mark.parametrize("option", ["classifier-1", "=/m", "a=", ""])
def test_malformed_model_options_show_the_expected_form(option: str) -> None:
    with pytest.raises(GraphError, match="--model expects NODE=URI"):
        parse_model_option(option)


def test_ab_graph_checks_its_inputs() -> None:
    with pytest.raises(GraphError, match="ratioA must be between 0 and 1, got 1.2 \\(graph node 'split'\\)"):
        ab_graph("iris", "a", "b", 1.2, router_name="split")
    with pytest.raises(GraphError, match="must be distinct"):
        ab_graph("iris", "a", "b", 0.5, arm_names=("same", "same"))


def test_graphs_survive_pickling_and_deep_copies() -> None:
    graph = load_graph(TUTORIAL / "ab_test.json")
    assert pickle.loads(pickle.dumps(graph)) == graph
    assert copy.deepcopy(graph) == graph
    assert isinstance(pickle.loads(pickle.dumps(graph)).annotations, MappingProxyType)


def test_graph_annotations_are_read_only() -> None:
    graph = Graph("g", "p", ModelNode("m", None, None, None), annotations={"a": "b"})
    with pytest.raises(TypeError):
        graph.annotations["a"] = "c"  # type: ignore[index]


@functools.cache
def crd_validator(version: str) -> jsonschema.Draft7Validator:
    """The CRD's schema for ``version``, built once: checking the 30k-line schema itself is slow."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with CRD.open() as handle:
        crd = yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader, chosen for speed
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(served["schema"]["openAPIV3Schema"])


def test_rendered_deployments_match_the_real_crd_schema() -> None:
    graphs = [
        ab_graph("iris", "gs://b/iris/v1", "gs://b/iris/v2", 0.25, image="registry.local/abflow-serving:abc"),
        single_model_graph("iris", "file:///models/iris/v1"),
        load_graph(TUTORIAL / "ab_test.json"),
    ]
    for graph in graphs:
        document = to_seldon_deployment(graph)
        crd_validator(graph.api_version.rpartition("/")[2]).validate(document)
        assert parse_graph(document) == graph


def test_rendered_ab_graph_is_what_seldon_expects() -> None:
    document = to_seldon_deployment(ab_graph("iris", "gs://b/v1", "gs://b/v2", 0.3, image="img:1"))
    assert document["apiVersion"] == "machinelearning.seldon.io/v1"
    (predictor,) = document["spec"]["predictors"]
    assert predictor["graph"]["parameters"] == [{"name": "ratioA", "value": "0.3", "type": "FLOAT"}]
    assert [c["modelUri"] for c in predictor["graph"]["children"]] == ["gs://b/v1", "gs://b/v2"]
    assert predictor["componentSpecs"] == [
        {
            "spec": {
                "containers": [{"name": "classifier-1", "image": "img:1"}, {"name": "classifier-2", "image": "img:1"}]
            }
        }
    ]


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=16)
optional_text = st.none() | st.text(min_size=1, max_size=20)
model_nodes = st.builds(
    ModelNode,
    name=names,
    implementation=st.sampled_from([None, "SKLEARN_SERVER"]),
    model_uri=st.none() | st.sampled_from(["gs://b/iris/v1", "file:///m/v2", "/models/iris/v3"]),
    image=st.none() | st.sampled_from(["img:1", "registry.local:5000/abflow-serving:0123abcd"]),
)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    root: ModelNode | RouterNode
    if draw(st.booleans()):
        root = draw(model_nodes)
    else:
        arm_a, arm_b = draw(st.lists(model_nodes, min_size=2, max_size=2, unique_by=lambda n: n.name))
        router_name = draw(names.filter(lambda n: n not in (arm_a.name, arm_b.name)))
        ratio = draw(st.floats(min_value=0.0, max_value=1.0))
        root = RouterNode(router_name, "RANDOM_ABTEST", ratio, (arm_a, arm_b))
    return Graph(
        name=draw(names),
        predictor=draw(names),
        root=root,
        oauth_key=draw(optional_text),
        oauth_secret=draw(optional_text),
        api_version=f"machinelearning.seldon.io/{draw(st.sampled_from(['v1alpha2', 'v1alpha3', 'v1']))}",
        annotations=draw(st.dictionaries(names, st.text(max_size=10), max_size=3)),
    )


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_rendering_then_parsing_gives_back_the_same_graph(graph: Graph) -> None:
    document = to_seldon_deployment(graph)
    assert parse_graph(copy.deepcopy(document)) == graph
    assert parse_graph(json.loads(json.dumps(document))) == graph
