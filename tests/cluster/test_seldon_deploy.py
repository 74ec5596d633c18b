"""The ``seldon`` deploy target over real HTTP: apply, wait, report, roll back, explain failures.

Stand-ins (no Kubernetes API server or Seldon operator can run here): kmock's KubernetesEmulator on
127.0.0.1 replaces the API server (the real ``kubernetes`` client talks to it over HTTP), and
``SeldonOperatorStandIn`` replaces Seldon Core's operator by writing ``status``, pods and events.
The code under test runs in a worker thread, as it blocks; the stand-ins run on the test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import pytest_asyncio
from kubernetes import client

from abflow.components.seldon_deploy import (
    DeploymentRecord,
    SeldonCrdMissingError,
    SeldonForbiddenError,
    SeldonRollbackConflict,
    SeldonTimeoutError,
    deploy_ab_seldon,
    deploy_seldon,
    model_uris,
    rollback_seldon,
)
from abflow.components.seldon_manifests import RBAC_RULES, ROLE_NAME, render_seldon_deployment
from abflow.serving.graph import ab_graph
from tests.cluster.kube_standin import SELDON_RESOURCE, Cluster, SeldonOperatorStandIn, seldon_cluster

NAMESPACE = "models"
GOOD_IMAGE = "registry.example.com/abflow/iris-server:1"
MISSING_IMAGE = "registry.example.com/missing:tag"
FAST = {"timeout": 10.0, "poll_interval": 0.02}


def manifest(ratio_a: float, model_b: str = "gs://m/iris/v2", image: str = GOOD_IMAGE) -> dict[str, Any]:
    graph = ab_graph("iris-ab", "gs://m/iris/v1", model_b, ratio_a)
    return render_seldon_deployment(graph, image=image, namespace=NAMESPACE)


def pods_can_start(sdep: dict[str, Any]) -> bool:
    containers = [c for spec in sdep["spec"]["predictors"][0]["componentSpecs"] for c in spec["spec"]["containers"]]
    return all(c.get("image") != MISSING_IMAGE for c in containers)


def is_main_resource(request: kmock.Request) -> bool:
    """Refuse the target's writes only; the operator stand-in still writes ``/status``."""
    return request.subresource is None


def api_client(cluster: Cluster) -> client.ApiClient:
    return client.ApiClient(client.Configuration(host=cluster.url))


def stored(cluster: Cluster) -> Any:
    key = (kmock.resource(SELDON_RESOURCE), NAMESPACE, "iris-ab")
    if key not in cluster.api.objects or cluster.api.objects[key].deleted:
        return None
    return cluster.api.objects[key].raw


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with seldon_cluster() as running:
        operator = SeldonOperatorStandIn(running.url, NAMESPACE, healthy=pods_can_start)
        async with operator.running():
            yield running


async def deploy(cluster: Cluster, body: dict[str, Any], **kwargs: Any) -> DeploymentRecord:
    options = {**FAST, **kwargs}
    return await asyncio.to_thread(deploy_seldon, body, namespace=NAMESPACE, api_client=api_client(cluster), **options)


async def rollback(cluster: Cluster, record: DeploymentRecord) -> None:
    await asyncio.to_thread(rollback_seldon, record, api_client=api_client(cluster), **FAST)


@pytest.mark.asyncio
async def test_first_deploy_creates_waits_reports_endpoint_and_rollback_deletes(cluster: Cluster) -> None:
    record = await deploy(cluster, manifest(0.5))
    assert record.previous is None
    assert record.endpoint == "http://iris-ab-default.models:8000/api/v1.0/predictions"
    sdep = stored(cluster)
    assert sdep["status"]["state"] == "Available"
    assert sdep["spec"]["predictors"][0]["svcOrchSpec"]["env"][0]["name"] == "SELDON_ENABLE_ROUTING_INJECTION"
    assert DeploymentRecord.from_json(record.to_json()) == record

    await rollback(cluster, record)
    assert stored(cluster) is None


@pytest.mark.asyncio
async def test_redeploy_keeps_previous_spec_and_rollback_restores_it(cluster: Cluster) -> None:
    first = manifest(0.5)
    await deploy(cluster, first)
    record = await deploy(cluster, manifest(0.3, model_b="gs://m/iris/v3"), ingress_url="http://gateway.example.com/")
    assert record.endpoint == "http://gateway.example.com/seldon/models/iris-ab/api/v1.0/predictions"
    assert record.previous is not None and record.previous["spec"] == first["spec"]
    assert stored(cluster)["spec"]["predictors"][0]["graph"]["parameters"][0]["value"] == "0.3"
    assert stored(cluster)["metadata"]["generation"] == 2

    await rollback(cluster, record)  # e.g. after a failed smoke test
    sdep = stored(cluster)
    assert sdep["spec"] == first["spec"]
    assert sdep["status"] == {**sdep["status"], "state": "Available", "observedGeneration": 3}


@pytest.mark.asyncio
async def test_timeout_shows_status_and_pod_reasons_then_rolls_back(cluster: Cluster) -> None:
    first = manifest(0.5)
    await deploy(cluster, first)
    with pytest.raises(SeldonTimeoutError) as caught:
        await deploy(cluster, manifest(0.3, image=MISSING_IMAGE), timeout=0.5)
    message = str(caught.value)
    assert "SeldonDeployment models/iris-ab not Available after 0.5s: state='Creating'" in message
    assert "replicas=1" in message
    assert "0/1 available" in message
    assert "classifier-1 waiting: ImagePullBackOff" in message
    assert "event InternalError: Deployment is not yet available" in message
    assert "rolled back: the previous spec was re-applied" in message
    assert caught.value.record.previous is not None
    assert stored(cluster)["spec"] == first["spec"]


@pytest.mark.asyncio
async def test_stale_available_status_of_the_old_spec_is_not_trusted(cluster: Cluster) -> None:
    """Right after a patch the status still says Available (for the old spec): wait must not stop."""
    await deploy(cluster, manifest(0.5))
    with pytest.raises(SeldonTimeoutError, match="state='Creating'"):
        await deploy(cluster, manifest(0.5, image=MISSING_IMAGE), timeout=0.5, rollback_on_failure=False)


@pytest.mark.asyncio
async def test_role_grants_exactly_what_the_target_calls(cluster: Cluster) -> None:
    """Every verb the target used in a full lifecycle is in the Role, and the Role grants nothing more."""
    await rollback(cluster, await deploy(cluster, manifest(0.5)))  # create, then delete
    await deploy(cluster, manifest(0.5))
    with pytest.raises(SeldonTimeoutError):  # apply, then apply the previous spec back
        await deploy(cluster, manifest(0.3, image=MISSING_IMAGE), timeout=0.3)
    granted = {(verb, resource) for _, resource, verbs, _ in RBAC_RULES for verb in verbs}
    target_calls = {
        (verb, resource)
        for verb, resource in cluster.api.calls
        if resource != "discovery"
        and not resource.endswith("/status")  # discovery: allowed to all
        and verb != "watch"  # the operator stand-in's watch and writes are not the target's
    }
    operator_writes = {("create", "pods"), ("create", "events")}
    operator_writes |= {(verb, "deployments") for verb in ("get", "create", "patch")}
    assert target_calls - operator_writes == granted


@pytest.mark.asyncio
async def test_forbidden_names_the_verb_resource_and_role(cluster: Cluster) -> None:
    await deploy(cluster, manifest(0.5))
    cluster.api[kmock.action.UPDATE, kmock.resource(SELDON_RESOURCE), is_main_resource] << kmock.KubernetesError(
        status=403,
        reason="Forbidden",
        message='seldondeployments.machinelearning.seldon.io "iris-ab" is forbidden: User '
        '"system:serviceaccount:kubeflow:pipeline-runner" cannot patch resource "seldondeployments"',
    )
    with pytest.raises(SeldonForbiddenError) as caught:
        await deploy(cluster, manifest(0.3))
    message = str(caught.value)
    assert "cannot patch seldondeployments.machinelearning.seldon.io in namespace 'models'" in message
    assert (
        "Check: kubectl auth can-i patch seldondeployments.machinelearning.seldon.io -n models "
        "--as system:serviceaccount:kubeflow:pipeline-runner." in message
    )
    assert f"Grant abflow's Role {ROLE_NAME!r} alone" in message
    assert "abflow render --rbac-only --namespace models --runner-namespace kubeflow | kubectl apply -f -" in message
    assert "system:serviceaccount:kubeflow:pipeline-runner" in message


def test_the_403_advice_cannot_overwrite_a_serving_graph(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command the advice names applies RBAC only: nothing it prints is a SeldonDeployment
    (the old advice piped `abflow render` with laptop defaults over a production iris-ab)."""
    import yaml

    from abflow.pipelines.cli import main

    assert main(["render", "--rbac-only", "--namespace", "models", "--runner-namespace", "kubeflow"]) == 0
    kinds = [doc["kind"] for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding"]
    from pathlib import Path

    kustomization = yaml.safe_load((Path(__file__).parents[2] / "manifests" / "kustomization.yaml").read_text())
    assert all(resource.startswith("rbac/") for resource in kustomization["resources"])


@pytest.mark.asyncio
async def test_forbidden_read_when_no_role_is_bound(cluster: Cluster) -> None:
    cluster.api[kmock.action.FETCH, kmock.resource(SELDON_RESOURCE)] << kmock.KubernetesError(
        status=403, reason="Forbidden"
    )
    with pytest.raises(SeldonForbiddenError, match="cannot get seldondeployments.machinelearning.seldon.io"):
        await deploy(cluster, manifest(0.5))


@pytest.mark.asyncio
async def test_missing_crd_says_to_install_seldon_core() -> None:
    async with seldon_cluster(crd_installed=False) as bare:
        with pytest.raises(SeldonCrdMissingError) as caught:
            await deploy(bare, manifest(0.5))
    assert str(caught.value).startswith("SeldonDeployment CRD not installed")
    assert "helm install seldon-core seldon-core-operator" in str(caught.value)


@pytest.mark.asyncio
async def test_deploy_ab_renders_the_graph_the_pipeline_step_asks_for(cluster: Cluster) -> None:
    record = await asyncio.to_thread(
        deploy_ab_seldon,
        name="iris-ab",
        model_a_uri="gs://m/iris/v1",
        model_b_uri="gs://m/iris/v2",
        ratio_a=0.8,
        image="",
        namespace=NAMESPACE,
        api_client=api_client(cluster),
    )
    graph = stored(cluster)["spec"]["predictors"][0]["graph"]
    assert graph["parameters"][0]["value"] == "0.8"
    assert [c["implementation"] for c in graph["children"]] == ["SKLEARN_SERVER", "SKLEARN_SERVER"]
    restored = DeploymentRecord.from_json(record.to_json())
    await rollback(cluster, restored)
    assert stored(cluster) is None


@pytest.mark.asyncio
async def test_deploy_waits_for_the_new_pods_not_a_stale_available() -> None:
    """Seldon v1 says Available for the new generation during the rolling update: a smoke test run
    then would hit the old pods. deploy must return only once the Deployments rolled out."""
    async with seldon_cluster() as running:
        operator = SeldonOperatorStandIn(running.url, NAMESPACE, healthy=pods_can_start)
        async with operator.running():
            await deploy(running, manifest(0.5))
            operator.slow_rollout = True
            waiting = asyncio.ensure_future(deploy(running, manifest(0.3, model_b="gs://m/iris/v3"), timeout=30))
            await _until(lambda: stored(running)["status"].get("observedGeneration") == 2 and _lists(running) >= 3)
            assert stored(running)["status"]["state"] == "Available"
            assert not waiting.done(), "returned while the old pods still served"
            await operator.finish_rollouts()
            record = await waiting
    assert record.details["model_uris"] == ["gs://m/iris/v1", "gs://m/iris/v3"]


@pytest.mark.asyncio
async def test_a_rollout_that_never_finishes_times_out_naming_the_old_replicas() -> None:
    async with seldon_cluster() as running:
        operator = SeldonOperatorStandIn(running.url, NAMESPACE, healthy=pods_can_start, slow_rollout=True)
        async with operator.running():
            with pytest.raises(SeldonTimeoutError) as caught:
                await deploy(running, manifest(0.5), timeout=0.5, rollback_on_failure=False)
    message = str(caught.value)
    assert "not serving the new spec after 0.5s: state='Available'" in message
    assert "deployment iris-ab-default-0-classifier-1: 1/1 updated, 0 available, 1 old replica(s) left" in message


@pytest.mark.asyncio
async def test_rollback_never_undoes_a_later_runs_deploy(cluster: Cluster) -> None:
    """A manual run overlapping a scheduled one: run 1's failed smoke test must not revert run 2."""
    await deploy(cluster, manifest(0.5))
    run_1 = await deploy(cluster, manifest(0.4, model_b="gs://m/iris/v3"))
    run_2 = await deploy(cluster, manifest(0.3, model_b="gs://m/iris/v4"))
    with pytest.raises(SeldonRollbackConflict) as caught:
        await rollback(cluster, run_1)
    assert str(caught.value).startswith(
        "not rolled back: SeldonDeployment models/iris-ab changed after this run deployed it (generation 3"
    )
    assert model_uris(stored(cluster)) == ["gs://m/iris/v1", "gs://m/iris/v4"], "run 2's graph still serves"
    await rollback(cluster, run_2)
    assert model_uris(stored(cluster)) == ["gs://m/iris/v1", "gs://m/iris/v3"]


@pytest.mark.asyncio
async def test_model_pods_run_as_the_given_service_account(cluster: Cluster) -> None:
    """Under Workload Identity gs:// reads need the pods' own identity, not the namespace's default."""
    await asyncio.to_thread(
        deploy_ab_seldon,
        name="iris-ab",
        model_a_uri="gs://m/iris/v1",
        model_b_uri="gs://m/iris/v2",
        ratio_a=0.5,
        image=GOOD_IMAGE,
        namespace=NAMESPACE,
        service_account="abflow-model-reader",
        api_client=api_client(cluster),
        timeout=10,
    )
    pods = [c["spec"] for c in stored(cluster)["spec"]["predictors"][0]["componentSpecs"]]
    assert [pod["serviceAccountName"] for pod in pods] == ["abflow-model-reader"] * 2


async def _until(condition: Any, timeout: float = 20.0) -> None:
    """Poll ``condition`` on the event loop until true (the stand-ins run on this loop)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _lists(cluster: Cluster) -> int:
    return sum(1 for verb, resource in cluster.api.calls if (verb, resource) == ("list", "deployments"))
