"""The ``seldon`` deploy target against a real kube-apiserver: apply, wait, report, roll back, explain.

The code under test acts as the pipeline's ServiceAccount (a TokenRequest token), allowed only what
abflow's Role grants, so every call it makes is decided by the real RBAC authorizer and stored by the
real API server with Seldon's real CRD (structural-schema pruning, generations, resourceVersions).
What no process here runs, Seldon's operator and the Deployment controller, the test plays
(``tests.cluster.seldon_operator_standin``) by writing ``status``, pods and events as the admin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from abflow.components.seldon_deploy import (
    SeldonCrdMissingError,
    SeldonForbiddenError,
    SeldonRelease,
    SeldonRollbackConflict,
    SeldonTimeoutError,
    deploy_ab_seldon,
    deploy_seldon,
    model_uris,
    rollback_seldon,
)
from abflow.components.seldon_manifests import RBAC_RULES, ROLE_NAME, SELDON_GROUP, render_seldon_deployment
from abflow.serving.graph import THOMPSON_SAMPLING, Graph, ab_graph, shadow_graph
from tests.cluster.namespaces import RUNNER, Namespace, new_namespace
from tests.cluster.seldon_operator_standin import MISSING_IMAGE
from tests.fixtures.control_plane import ControlPlane
from tests.fixtures.processes import wait_until

GOOD_IMAGE = "registry.example.com/abflow/iris-server:1"
FAST = {"timeout": 10.0, "poll_interval": 0.02}


def manifest(namespace: Namespace, ratio_a: float, model_b: str = "gs://m/iris/v2", image: str | None = GOOD_IMAGE,
             service_account: str | None = None) -> dict[str, Any]:  # fmt: skip
    graph = ab_graph("iris-ab", "gs://m/iris/v1", model_b, ratio_a)
    return render_seldon_deployment(graph, image=image, namespace=namespace.name, service_account=service_account)


def deploy(namespace: Namespace, body: dict[str, Any], **kwargs: Any) -> SeldonRelease:
    with namespace.runner_client() as api_client:
        return deploy_seldon(body, namespace=namespace.name, api_client=api_client, **{**FAST, **kwargs})


def rollback(namespace: Namespace, record: SeldonRelease) -> None:
    with namespace.runner_client() as api_client:
        rollback_seldon(record, api_client=api_client, **FAST)


def stored(namespace: Namespace) -> dict[str, Any]:
    found = namespace.stored()
    assert found is not None, f"no SeldonDeployment {namespace.name}/iris-ab stored"
    return found


def test_first_deploy_creates_waits_reports_endpoint_and_rollback_deletes(namespace: Namespace) -> None:
    record = deploy(namespace, manifest(namespace, 0.5))
    assert record.previous is None
    assert record.endpoint == f"http://iris-ab-default.{namespace.name}:8000/api/v1.0/predictions"
    sdep = stored(namespace)
    assert sdep["status"]["state"] == "Available"
    assert sdep["spec"]["predictors"][0]["svcOrchSpec"]["env"][0]["name"] == "SELDON_ENABLE_ROUTING_INJECTION"
    assert SeldonRelease.from_json(record.to_json()) == record

    rollback(namespace, record)
    assert namespace.stored() is None


@pytest.mark.parametrize("image", [GOOD_IMAGE, None], ids=["serving-image", "sklearn-server"])
def test_the_server_stores_every_field_abflow_sends(namespace: Namespace, image: str | None) -> None:
    """The CRD's structural schema prunes unknown fields without an error: a field abflow renders but
    Seldon's v1 schema does not know would vanish silently (and a rollback would restore less)."""
    sent = manifest(namespace, 0.3, image=image, service_account="abflow-model-reader")
    record = deploy(namespace, sent)
    sdep = stored(namespace)
    assert sdep["spec"] == sent["spec"]
    assert {k: sdep["metadata"].get(k) for k in ("name", "namespace", "labels")} == sent["metadata"]
    assert model_uris(sdep) == record.details["model_uris"] == ["gs://m/iris/v1", "gs://m/iris/v2"]


def test_the_comparison_has_teeth(namespace: Namespace) -> None:
    """This server does prune: a field the CRD does not know is accepted and dropped."""
    sent = manifest(namespace, 0.3)
    sent["spec"]["predictors"][0]["graph"]["children"][0]["modelVersion"] = "v1"
    deploy(namespace, sent)
    assert "modelVersion" not in stored(namespace)["spec"]["predictors"][0]["graph"]["children"][0]


def test_redeploy_keeps_previous_spec_and_rollback_restores_it(namespace: Namespace) -> None:
    first = manifest(namespace, 0.5)
    deploy(namespace, first)
    record = deploy(namespace, manifest(namespace, 0.3, model_b="gs://m/iris/v3"),
                    ingress_url="http://gateway.example.com/")  # fmt: skip
    assert record.endpoint == f"http://gateway.example.com/seldon/{namespace.name}/iris-ab/api/v1.0/predictions"
    assert record.previous is not None and record.previous["spec"] == first["spec"]
    assert stored(namespace)["spec"]["predictors"][0]["graph"]["parameters"][0]["value"] == "0.3"
    assert stored(namespace)["metadata"]["generation"] == 2
    managers = {m["manager"]: m["operation"] for m in stored(namespace)["metadata"]["managedFields"]}
    assert managers["abflow"] == "Apply", "redeploys are server-side applies by field manager abflow"

    rollback(namespace, record)  # e.g. after a failed smoke test
    sdep = stored(namespace)
    assert sdep["spec"] == first["spec"]
    assert sdep["status"] == {**sdep["status"], "state": "Available", "observedGeneration": 3}


def test_timeout_shows_status_and_pod_reasons_then_rolls_back(namespace: Namespace) -> None:
    first = manifest(namespace, 0.5)
    deploy(namespace, first)
    with pytest.raises(SeldonTimeoutError) as caught:
        deploy(namespace, manifest(namespace, 0.3, image=MISSING_IMAGE), timeout=0.5)
    message = str(caught.value)
    assert f"SeldonDeployment {namespace.name}/iris-ab not Available after 0.5s: state='Creating'" in message
    assert "replicas=1" in message
    assert "0/1 available" in message
    assert "classifier-1 waiting: ImagePullBackOff" in message
    assert "event InternalError: Deployment is not yet available" in message
    assert "rolled back: the previous spec was re-applied" in message
    assert caught.value.record.previous is not None
    assert stored(namespace)["spec"] == first["spec"]


def test_stale_available_status_of_the_old_spec_is_not_trusted(namespace: Namespace) -> None:
    """Right after an apply the status still says Available (for the old spec): wait must not stop."""
    deploy(namespace, manifest(namespace, 0.5))
    with pytest.raises(SeldonTimeoutError, match="state='Creating'"):
        deploy(namespace, manifest(namespace, 0.5, image=MISSING_IMAGE), timeout=0.5, rollback_on_failure=False)


def granted() -> set[tuple[str, str]]:
    return {(verb, resource) for _, resource, verbs, _ in RBAC_RULES for verb in verbs}


def test_role_grants_exactly_what_the_target_calls(namespace: Namespace, control_plane: ControlPlane) -> None:
    """A whole lifecycle as the ServiceAccount succeeds under the Role, and the API server's audit log
    shows it used every verb the Role grants: nothing is missing, nothing is granted in vain."""
    rollback(namespace, deploy(namespace, manifest(namespace, 0.5)))  # create, then delete
    deploy(namespace, manifest(namespace, 0.5))
    with pytest.raises(SeldonTimeoutError):  # apply, then apply the previous spec back
        deploy(namespace, manifest(namespace, 0.3, image=MISSING_IMAGE), timeout=0.3)
    wait_until(lambda: granted() <= control_plane.audited(RUNNER, namespace.name), timeout=10,
               what="the runner's calls in the audit log")  # fmt: skip
    assert control_plane.audited(RUNNER, namespace.name) == granted()


def _failing_deploy(namespace: Namespace, _: Any) -> Any:
    return deploy(namespace, manifest(namespace, 0.3, image=MISSING_IMAGE), timeout=0.5, rollback_on_failure=False)


def _first_deploy(namespace: Namespace) -> SeldonRelease:
    return deploy(namespace, manifest(namespace, 0.5))


Step = Callable[[Namespace, Any], Any]
# For each verb of the Role: what runs before it is revoked, and the step that then needs it.
NEEDS: dict[tuple[str, str], tuple[Callable[[Namespace], Any] | None, Step]] = {
    ("get", "seldondeployments"): (None, lambda ns, _: _first_deploy(ns)),
    ("create", "seldondeployments"): (None, lambda ns, _: _first_deploy(ns)),
    ("patch", "seldondeployments"): (_first_deploy, lambda ns, _: deploy(ns, manifest(ns, 0.3))),
    ("delete", "seldondeployments"): (_first_deploy, rollback),
    ("list", "deployments"): (None, lambda ns, _: _first_deploy(ns)),
    ("list", "pods"): (None, _failing_deploy),
    ("list", "events"): (None, _failing_deploy),
}


def test_every_verb_of_the_role_has_a_case() -> None:
    assert set(NEEDS) == granted()


@pytest.mark.parametrize("verb,resource", sorted(NEEDS), ids=[f"{v}-{r}" for v, r in sorted(NEEDS)])
def test_a_revoked_verb_gets_advice_naming_it(namespace: Namespace, verb: str, resource: str) -> None:
    """The real authorizer refuses the one verb removed from the Role; abflow's message names the verb,
    the resource and its group, the ServiceAccount the server named, and how to grant the Role alone."""
    before, step = NEEDS[(verb, resource)]
    state = before(namespace) if before else None
    documents = namespace.rbac()
    role = next(d for d in documents if d["kind"] == "Role")
    for rule in role["rules"]:
        if rule["resources"] == [resource]:
            rule["verbs"].remove(verb)
    role["rules"] = [rule for rule in role["rules"] if rule["verbs"]]  # the API server refuses a rule of no verbs
    namespace.grant(documents)

    with pytest.raises((SeldonForbiddenError, SeldonTimeoutError)) as caught:
        step(namespace, state)
    message = str(caught.value)
    group = {"seldondeployments": SELDON_GROUP, "deployments": "apps"}.get(resource)
    qualified = f"{resource}.{group}" if group else resource
    assert f"forbidden: cannot {verb} {qualified} in namespace {namespace.name!r}" in message
    assert f"kubectl auth can-i {verb} {qualified} -n {namespace.name} --as {RUNNER}." in message
    assert f"Grant abflow's Role {ROLE_NAME!r} alone" in message
    assert (f"abflow render --rbac-only --namespace {namespace.name} --runner-namespace kubeflow | kubectl apply -f -"
            in message)  # fmt: skip
    if resource in ("pods", "events"):  # only the explanation of a timeout needs them: the timeout still shows
        assert isinstance(caught.value, SeldonTimeoutError)
        assert f"({resource} not listed: forbidden" in message


def test_the_403_advice_cannot_overwrite_a_serving_graph(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command the advice names applies RBAC only: nothing it prints is a SeldonDeployment
    (the old advice piped `abflow render` with laptop defaults over a production iris-ab)."""
    from abflow.pipelines.cli import main

    assert main(["render", "--rbac-only", "--namespace", "models", "--runner-namespace", "kubeflow"]) == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding"]
    kustomization = yaml.safe_load((Path(__file__).parents[2] / "manifests" / "kustomization.yaml").read_text())
    assert all(resource.startswith("rbac/") for resource in kustomization["resources"])


def test_forbidden_read_when_no_role_is_bound(control_plane: ControlPlane, namespace: Namespace,
                                              runner: Any, operator: Any) -> None:  # fmt: skip
    bare = new_namespace(control_plane, runner, operator, f"{namespace.name}-bare")
    with pytest.raises(SeldonForbiddenError, match="cannot get seldondeployments.machinelearning.seldon.io"):
        deploy(bare, manifest(bare, 0.5))


def test_missing_crd_says_to_install_seldon_core(namespace: Namespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server answers 404 for a group version it does not serve: here v1 of Seldon's group
    is served, so the deploy target is asked for a version this cluster lacks."""
    from abflow.components import seldon_deploy

    monkeypatch.setattr(seldon_deploy, "SELDON_VERSION", "v2")
    with pytest.raises(SeldonCrdMissingError) as caught:
        deploy(namespace, manifest(namespace, 0.5))
    assert str(caught.value).startswith("SeldonDeployment CRD not installed")
    assert "helm install seldon-core seldon-core-operator" in str(caught.value)


def test_deploy_ab_renders_the_graph_the_pipeline_step_asks_for(namespace: Namespace) -> None:
    with namespace.runner_client() as api_client:
        record = deploy_ab_seldon(name="iris-ab", model_a_uri="gs://m/iris/v1", model_b_uri="gs://m/iris/v2",
                                  ratio_a=0.8, image="", namespace=namespace.name, api_client=api_client,
                                  timeout=10)  # fmt: skip
    graph = stored(namespace)["spec"]["predictors"][0]["graph"]
    assert graph["parameters"][0]["value"] == "0.8"
    assert [c["implementation"] for c in graph["children"]] == ["SKLEARN_SERVER", "SKLEARN_SERVER"]
    rollback(namespace, SeldonRelease.from_json(record.to_json()))
    assert namespace.stored() is None


def test_deploy_waits_for_the_new_pods_not_a_stale_available(namespace: Namespace) -> None:
    """Seldon v1 says Available for the new generation during the rolling update: a smoke test run
    then would hit the old pods. deploy must return only once the Deployments rolled out."""
    deploy(namespace, manifest(namespace, 0.5))
    namespace.scenario.slow_rollout = True
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(deploy, namespace, manifest(namespace, 0.3, model_b="gs://m/iris/v3"), timeout=30)
        wait_until(lambda: stored(namespace)["status"].get("observedGeneration") == 2 and namespace.scenario.rolling,
                   timeout=10, what="Available for generation 2 while rolling")  # fmt: skip
        assert stored(namespace)["status"]["state"] == "Available"
        assert not waiting.done(), "returned while the old pods still served"
        namespace.operator.finish_rollouts(namespace.name)
        record = waiting.result(timeout=30)
    assert record.details["model_uris"] == ["gs://m/iris/v1", "gs://m/iris/v3"]


def test_a_rollout_that_never_finishes_times_out_naming_the_old_replicas(namespace: Namespace) -> None:
    deploy(namespace, manifest(namespace, 0.5))
    namespace.scenario.slow_rollout = True
    with pytest.raises(SeldonTimeoutError) as caught:
        deploy(namespace, manifest(namespace, 0.3, model_b="gs://m/iris/v3"), timeout=0.5, rollback_on_failure=False)
    message = str(caught.value)
    assert "not serving the new spec after 0.5s: state='Available'" in message
    assert "deployment iris-ab-default-1-classifier-2: 1/1 updated, 1 available, 1 old replica(s) left" in message
    assert "iris-ab-default-0-classifier-1: 1/1 updated" not in message, "arm A's pods did not change"


def test_rollback_never_undoes_a_later_runs_deploy(namespace: Namespace) -> None:
    """A manual run overlapping a scheduled one: run 1's failed smoke test must not revert run 2."""
    deploy(namespace, manifest(namespace, 0.5))
    run_1 = deploy(namespace, manifest(namespace, 0.4, model_b="gs://m/iris/v3"))
    run_2 = deploy(namespace, manifest(namespace, 0.3, model_b="gs://m/iris/v4"))
    with pytest.raises(SeldonRollbackConflict) as caught:
        rollback(namespace, run_1)
    assert str(caught.value).startswith(
        f"not rolled back: SeldonDeployment {namespace.name}/iris-ab changed after this run deployed it (generation 3"
    )
    assert model_uris(stored(namespace)) == ["gs://m/iris/v1", "gs://m/iris/v4"], "run 2's graph still serves"
    rollback(namespace, run_2)
    assert model_uris(stored(namespace)) == ["gs://m/iris/v1", "gs://m/iris/v3"]


def test_model_pods_run_as_the_given_service_account(namespace: Namespace) -> None:
    """Under Workload Identity gs:// reads need the pods' own identity, not the namespace's default."""
    with namespace.runner_client() as api_client:
        deploy_ab_seldon(name="iris-ab", model_a_uri="gs://m/iris/v1", model_b_uri="gs://m/iris/v2", ratio_a=0.5,
                         image=GOOD_IMAGE, namespace=namespace.name, service_account="abflow-model-reader",
                         api_client=api_client, timeout=10)  # fmt: skip
    pods = [c["spec"] for c in stored(namespace)["spec"]["predictors"][0]["componentSpecs"]]
    assert [pod["serviceAccountName"] for pod in pods] == ["abflow-model-reader"] * 2
    deployments = namespace.deployments()
    assert [d["spec"]["template"]["spec"]["serviceAccountName"] for d in deployments] == ["abflow-model-reader"] * 2


def bandit(graph: Graph) -> Graph:
    assert graph.router is not None
    return dataclasses.replace(graph, root=dataclasses.replace(graph.router, implementation=THOMPSON_SAMPLING))


TRAFFIC_GRAPHS = {
    "sticky-tag": lambda: ab_graph("iris-ab", "gs://m/iris/v1", "gs://m/iris/v2", 0.3, unit="tag:user"),
    "thompson": lambda: bandit(ab_graph("iris-ab", "gs://m/iris/v1", "gs://m/iris/v2", 0.5)),
    "shadow-25": lambda: shadow_graph("iris-ab", "gs://m/iris/v1", "gs://m/iris/v2", 0.25),
}
ROUTER_STATE = {"thompson": {"experiment_id": "iris-e1", "router_state_claim": "iris-router-state"}}
"""The bandit also keeps its state on a claim: the volume and its mount must survive pruning too."""


@pytest.mark.parametrize("variant", sorted(TRAFFIC_GRAPHS))
def test_sticky_bandit_and_shadow_graphs_are_stored_as_sent_and_deployed(namespace: Namespace, variant: str) -> None:
    """The traffic policies' SeldonDeployments through the real API server's CRD schema (which prunes
    what it does not know, silently), applied and waited for as the pipeline's ServiceAccount."""
    sent = render_seldon_deployment(TRAFFIC_GRAPHS[variant](), image=GOOD_IMAGE, namespace=namespace.name,
                                    **ROUTER_STATE.get(variant, {}))
    record = deploy(namespace, sent)
    sdep = stored(namespace)
    assert sdep["spec"] == sent["spec"]
    assert sdep["status"]["state"] == "Available"
    assert model_uris(sdep) == record.details["model_uris"] == ["gs://m/iris/v1", "gs://m/iris/v2"]
    rollback(namespace, record)
    assert namespace.stored() is None


def test_a_shadow_deploy_keeps_its_mirror_fraction_in_the_record(namespace: Namespace) -> None:
    with namespace.runner_client() as api_client:
        record = deploy_ab_seldon(name="iris-ab", model_a_uri="gs://m/iris/v1", model_b_uri="gs://m/iris/v2",
                                  ratio_a=0.5, image=GOOD_IMAGE, namespace=namespace.name, api_client=api_client,
                                  timeout=10, shadow_fraction=0.25)  # fmt: skip
    serving, shadow = stored(namespace)["spec"]["predictors"]
    assert serving["graph"]["type"] == "MODEL" and "shadow" not in serving
    assert (shadow["shadow"], shadow["traffic"]) == (True, 25)
    assert SeldonRelease.from_json(record.to_json()).details["shadow_fraction"] == 0.25
