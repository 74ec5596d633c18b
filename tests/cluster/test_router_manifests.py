"""Sticky and bandit graphs rendered for the cluster: the router becomes a Seldon ROUTER node served by
abflow's router server, valid against Seldon's CRD and as a Pod, and refused where Seldon v1 cannot
carry it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from typing import Any

import pytest
import yaml

from abflow.components.seldon_manifests import ROUTER_COMMAND, SERVING_PORT, render_seldon_deployment
from abflow.pipelines.cli import main
from abflow.serving.graph import EPSILON_GREEDY, THOMPSON_SAMPLING, Graph, ab_graph, parse_router_node
from tests.cluster.test_seldon_manifests import CRD_PATH, IMAGE, URI_A, URI_B, check_against_crd


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    crd = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    return {f"{crd['spec']['group']}/{v['name']}": v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def bandit(implementation: str) -> Graph:
    graph = ab_graph("iris-bandit", URI_A, URI_B, 0.5)
    assert graph.router is not None
    return dataclasses.replace(graph, root=dataclasses.replace(graph.router, implementation=implementation))


VARIANTS = {
    "sticky-tag": lambda: ab_graph("iris-ab", URI_A, URI_B, 0.3, unit="tag:user"),
    "epsilon-greedy": lambda: bandit(EPSILON_GREEDY),
    "thompson": lambda: bandit(THOMPSON_SAMPLING),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_sticky_or_bandit_router_is_a_router_node_on_abflows_image(variant: str,
                                                                      schemas: dict[str, Any]) -> None:
    graph = VARIANTS[variant]()
    manifest = render_seldon_deployment(graph, image=IMAGE, namespace="models")
    check_against_crd(manifest, schemas)
    predictor = manifest["spec"]["predictors"][0]
    router = predictor["graph"]
    assert router["type"] == "ROUTER" and "implementation" not in router and "parameters" not in router
    assert router["endpoint"] == {"type": "REST", "httpPort": SERVING_PORT}
    assert [c["name"] for c in router["children"]] == ["classifier-1", "classifier-2"]
    pods = {c["spec"]["containers"][0]["name"]: c for c in predictor["componentSpecs"]}
    assert set(pods) == {"classifier-1", "classifier-2", "random-ab-test"}
    pod = pods["random-ab-test"]
    assert pod["replicas"] == 1, "one replica: one state learns from every feedback"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGE and container["command"] == list(ROUTER_COMMAND)
    args = container["args"]
    served = parse_router_node(json.loads(args[args.index("--node") + 1]))
    assert served.implementation == graph.router.implementation  # type: ignore[union-attr]
    assert served.unit == graph.router.unit and served.ratio_a == graph.router.ratio_a  # type: ignore[union-attr]
    assert [c.model_uri for c in served.children] == [None, None], "the router needs no model URIs"
    assert args[args.index("--graph-name") + 1] == graph.name


def test_the_experiment_id_salts_the_router_on_the_cluster_as_it_does_locally() -> None:
    manifest = render_seldon_deployment(VARIANTS["sticky-tag"](), image=IMAGE, namespace="models",
                                        experiment_id="iris-20261203-1")
    pods = manifest["spec"]["predictors"][0]["componentSpecs"]
    (router,) = [pod["spec"]["containers"][0] for pod in pods if pod["spec"]["containers"][0]["name"] ==
                 "random-ab-test"]
    assert router["args"][router["args"].index("--experiment") + 1] == "iris-20261203-1"


def test_a_plain_split_stays_seldons_own_random_abtest() -> None:
    manifest = render_seldon_deployment(ab_graph("iris-ab", URI_A, URI_B, 0.3), image=IMAGE, namespace="models")
    predictor = manifest["spec"]["predictors"][0]
    assert predictor["graph"]["implementation"] == "RANDOM_ABTEST"
    assert len(predictor["componentSpecs"]) == 2


def test_a_header_unit_cannot_reach_a_seldon_v1_router_and_says_to_use_a_tag() -> None:
    with pytest.raises(ValueError, match="passes no request headers to a router.*tag:KEY"):
        render_seldon_deployment(ab_graph("iris-ab", URI_A, URI_B, 0.3, unit="header:X-User-Id"), image=IMAGE,
                                 namespace="models")


def test_a_router_server_needs_abflows_image() -> None:
    with pytest.raises(ValueError, match="needs abflow's serving image: pass --image"):
        render_seldon_deployment(bandit(THOMPSON_SAMPLING), image=None, namespace="models")


def render_cli(*flags: str) -> tuple[int, list[dict[str, Any]], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["render", "--model-a", URI_A, "--model-b", URI_B, "--image", IMAGE, *flags])
    return code, list(yaml.safe_load_all(out.getvalue())) if code == 0 else [], err.getvalue()


def test_abflow_render_writes_a_bandit_whose_state_lives_on_a_claim(schemas: dict[str, Any]) -> None:
    code, documents, _ = render_cli("--router", "THOMPSON_SAMPLING", "--experiment", "iris-nightly",
                                    "--router-state-claim", "iris-router-state")
    assert code == 0
    manifest = documents[0]
    check_against_crd(manifest, schemas)
    pods = {c["spec"]["containers"][0]["name"]: c["spec"] for c in manifest["spec"]["predictors"][0]["componentSpecs"]}
    router = pods["random-ab-test"]
    (container,) = router["containers"]
    args = container["args"]
    assert parse_router_node(json.loads(args[args.index("--node") + 1])).implementation == THOMPSON_SAMPLING
    assert args[args.index("--experiment") + 1] == "iris-nightly"
    state_dir = args[args.index("--state-dir") + 1]
    assert container["volumeMounts"] == [{"name": "router-state", "mountPath": state_dir}]
    assert router["volumes"] == [{"name": "router-state", "persistentVolumeClaim": {"claimName": "iris-router-state"}}]
    assert "volumes" not in pods["classifier-1"], "the arms keep no state"


def test_a_state_claim_without_an_experiment_is_refused_with_the_fix() -> None:
    code, _, err = render_cli("--router", "EPSILON_GREEDY", "--router-state-claim", "iris-router-state")
    assert code == 2 and "abflow render --experiment ID" in err


def test_abflow_render_writes_sticky_and_shadow_graphs(schemas: dict[str, Any]) -> None:
    code, documents, _ = render_cli("--unit", "tag:user", "--ratio-a", "0.3")
    assert code == 0
    args = documents[0]["spec"]["predictors"][0]["componentSpecs"][2]["spec"]["containers"][0]["args"]
    router = parse_router_node(json.loads(args[args.index("--node") + 1]))
    assert (router.unit, router.ratio_a) == ("tag:user", 0.3)
    code, documents, _ = render_cli("--shadow-fraction", "0.25")
    assert code == 0
    check_against_crd(documents[0], schemas)
    serving, shadow = documents[0]["spec"]["predictors"]
    assert serving["graph"]["type"] == "MODEL" and (shadow["shadow"], shadow["traffic"]) == (True, 25)
