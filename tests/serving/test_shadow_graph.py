"""A second predictor marked ``shadow: true`` (Seldon v1's shadow): parsed, refused where abflow cannot
run it, rendered back and for the cluster."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from abflow.components.seldon_manifests import render_seldon_deployment
from abflow.serving.graph import (
    SKLEARN_SERVER,
    GraphError,
    ModelNode,
    ab_graph,
    parse_graph,
    resolve_model_uris,
    shadow_graph,
    to_seldon_deployment,
)
from tests.cluster.test_seldon_manifests import CRD_PATH, check_against_crd

TUTORIAL = Path(__file__).parent.parent / "data" / "tutorial"
SHADOW = {"name": "shadow", "shadow": True, "graph": {"name": "challenger", "implementation": "SKLEARN_SERVER",
                                                      "modelUri": "gs://b/iris/v3", "children": []}}


def shadowed(shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((TUTORIAL / "ab_test.json").read_text())
    document["spec"]["predictors"].append(shadow or json.loads(json.dumps(SHADOW)))
    return document


def test_a_shadow_predictor_is_parsed_beside_the_serving_one_and_needs_its_model() -> None:
    graph = parse_graph(shadowed())
    assert graph.shadow is not None and graph.shadow.name == "challenger" and graph.shadow_predictor == "shadow"
    assert [n.name for n in graph.model_nodes()] == ["classifier-1", "classifier-2"], "the shadow serves nobody"
    uris = resolve_model_uris(graph, {"classifier-1": "m1", "classifier-2": "m2"})
    assert uris["challenger"] == "gs://b/iris/v3"


@pytest.mark.parametrize(("shadow", "message"), [
    ({**SHADOW, "shadow": False}, "2 serving and 0 shadow predictors"),
    ({**SHADOW, "graph": json.loads((TUTORIAL / "ab_test.json").read_text())["spec"]["predictors"][0]["graph"]},
     "a shadow is one MODEL node"),
    ({**SHADOW, "graph": {"name": "split", "implementation": "RANDOM_ABTEST", "parameters": [
        {"name": "ratioA", "value": "0.5", "type": "FLOAT"}], "children": [
        {"name": "x", "type": "MODEL"}, {"name": "y", "type": "MODEL"}]}}, "a shadow is one MODEL node"),
    ({**SHADOW, "graph": {**SHADOW["graph"], "name": "classifier-1"}}, "'classifier-1' is used more than once"),
])
def test_shadows_abflow_cannot_run_are_refused_with_the_fix(shadow: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        parse_graph(shadowed(shadow))


def test_a_shadowed_graph_renders_back_and_for_the_cluster() -> None:
    assert parse_graph(to_seldon_deployment(parse_graph(shadowed()))) == parse_graph(shadowed())
    challenger = ModelNode("challenger", SKLEARN_SERVER, "gs://b/iris/v3", None)
    graph = dataclasses.replace(ab_graph("iris-ab", "gs://b/iris/v1", "gs://b/iris/v2", 0.5), shadow=challenger,
                                shadow_predictor="shadow")
    assert parse_graph(to_seldon_deployment(graph)) == graph
    manifest = render_seldon_deployment(graph, image="registry.example.com/abflow:1", namespace="models")
    crd = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    check_against_crd(manifest, {f"{crd['spec']['group']}/{v['name']}": v["schema"]["openAPIV3Schema"]
                                 for v in crd["spec"]["versions"]})
    serving, shadow = manifest["spec"]["predictors"]
    assert "shadow" not in serving and shadow["shadow"] is True
    (pod,) = shadow["componentSpecs"]
    assert pod["spec"]["containers"][0]["args"][:2] == ["--model", "gs://b/iris/v3"]


def test_a_bandit_graph_with_a_shadow_keeps_the_shadow_a_model() -> None:
    challenger = ModelNode("challenger", SKLEARN_SERVER, "gs://b/iris/v3", None)
    graph = ab_graph("iris-ab", "gs://b/iris/v1", "gs://b/iris/v2", 0.5, unit="tag:user")
    graph = dataclasses.replace(graph, shadow=challenger, shadow_predictor="shadow")
    serving, shadow = render_seldon_deployment(graph, image="img:1", namespace="models")["spec"]["predictors"]
    assert serving["graph"]["type"] == "ROUTER" and len(serving["componentSpecs"]) == 3
    assert shadow["graph"]["type"] == "MODEL" and len(shadow["componentSpecs"]) == 1


@pytest.mark.parametrize(("traffic", "fraction"), [(None, 1.0), (0, 1.0), (25, 0.25), (100, 1.0)])
def test_the_shadows_traffic_is_its_mirror_percentage_as_seldons_operator_reads_it(traffic: int | None,
                                                                                  fraction: float) -> None:
    shadow = {**SHADOW, **({"traffic": traffic} if traffic is not None else {})}
    graph = parse_graph(shadowed(shadow))
    assert graph.shadow_fraction == fraction
    rendered = to_seldon_deployment(graph)["spec"]["predictors"][1]
    assert rendered.get("traffic") == (traffic if fraction < 1 else None)
    assert parse_graph(to_seldon_deployment(graph)) == graph


@pytest.mark.parametrize("traffic", [101, -1, 2.5, "25", True])
def test_a_mirror_percentage_that_is_not_a_whole_percent_is_refused(traffic: object) -> None:
    with pytest.raises(GraphError, match="traffic of shadow predictor 'shadow' must be a whole percent"):
        parse_graph(shadowed({**SHADOW, "traffic": traffic}))


def test_the_pipelines_shadow_graph_serves_the_champion_and_mirrors_a_stated_fraction() -> None:
    graph = shadow_graph("iris-ab", "gs://b/iris/v1", "gs://b/iris/v2", 0.25, image="img:1")
    assert [n.name for n in graph.model_nodes()] == ["classifier-1"] and graph.router is None
    assert graph.shadow == ModelNode("classifier-2", SKLEARN_SERVER, "gs://b/iris/v2", "img:1")
    assert parse_graph(to_seldon_deployment(graph)) == graph
    manifest = render_seldon_deployment(graph, image="img:1", namespace="models")
    crd = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    check_against_crd(manifest, {f"{crd['spec']['group']}/{v['name']}": v["schema"]["openAPIV3Schema"]
                                 for v in crd["spec"]["versions"]})
    assert manifest["spec"]["predictors"][1]["traffic"] == 25
    for fraction in (0.0, 0.333, 1.5):
        with pytest.raises(GraphError, match="whole percent in"):
            shadow_graph("iris-ab", "a", "b", fraction)
