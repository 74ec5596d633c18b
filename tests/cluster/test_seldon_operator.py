"""What Seldon Core's real operator makes of the SeldonDeployment abflow renders.

The operator stand-in the other cluster tests use writes what we believe Seldon writes; this test asks
Seldon's own controller (``tests.fixtures.seldon_operator``) on the real API server instead, and checks
what users' clusters would run: the orchestrator that answers with ``meta.routing`` (it writes it only
when ``SELDON_ENABLE_ROUTING_INJECTION`` is set on it) and model containers that run abflow's image
with the ports, probes, resources, service account and model URIs abflow meant — whatever the
operator's defaulting adds or rewrites. No kubelet runs, so no pod starts: the Deployments and Services
are the result.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from abflow.components.seldon_manifests import SELDON_GROUP, SELDON_PLURAL, render_seldon_deployment
from abflow.pipelines.cli import main
from abflow.serving.graph import shadow_graph
from tests.fixtures.control_plane import ControlPlane
from tests.fixtures.processes import wait_until
from tests.fixtures.seldon_operator import EXECUTOR_IMAGE, SELDON_RELEASE, seldon_operator

IMAGE = "registry.example.com/abflow/iris-server:3f2a9c"
MODEL_A = "gs://bucket/abflow/models/iris/v1"
MODEL_B = "gs://bucket/abflow/models/iris/v2"
MODEL_SERVICE_ACCOUNT = "iris-models"
ORCHESTRATOR = "seldon-container-engine"


def rendered(namespace: str) -> dict[str, Any]:
    """The SeldonDeployment ``abflow render`` prints (the deploy step applies the same)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["render", "--model-a", MODEL_A, "--model-b", MODEL_B, "--ratio-a", "0.3", "--image", IMAGE,
                     "--namespace", namespace, "--model-service-account", MODEL_SERVICE_ACCOUNT]) == 0  # fmt: skip
    return next(d for d in yaml.safe_load_all(printed.getvalue()) if d["kind"] == "SeldonDeployment")


@pytest.fixture(scope="module")
def reconciled(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Apply abflow's graph in a namespace of its own and let the operator reconcile it; return the
    Deployments, Services and SeldonDeployment it leaves there."""
    namespace = new_namespace(control_plane)
    return reconcile(control_plane, rendered(namespace), tmp_path_factory.mktemp("seldon-operator"))


def new_namespace(control_plane: ControlPlane) -> str:
    namespace = f"seldon-operator-{uuid.uuid4().hex[:8]}"
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    return namespace


def reconcile(control_plane: ControlPlane, sdep: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Apply ``sdep`` and let the operator reconcile it into Deployments and Services, play the
    Deployment controller until Seldon reports it Available, and return what is left there."""
    namespace = sdep["metadata"]["namespace"]
    with seldon_operator(control_plane, namespace, workdir) as operator:
        control_plane.apply([sdep])
        with control_plane.api_client() as admin:
            apps, core, objects = client.AppsV1Api(admin), client.CoreV1Api(admin), client.CustomObjectsApi(admin)

            def listed() -> dict[str, Any] | None:
                operator.alive()
                deployments = json.loads(apps.list_namespaced_deployment(namespace, _preload_content=False).data)
                services = json.loads(core.list_namespaced_service(namespace, _preload_content=False).data)
                stored = objects.get_namespaced_custom_object(
                    SELDON_GROUP, "v1", namespace, SELDON_PLURAL, sdep["metadata"]["name"]
                )
                pods = [d["spec"]["template"]["spec"] for d in deployments["items"]]
                names = {c["name"] for pod in pods for c in pod["containers"]}
                if not {ORCHESTRATOR, "classifier-1", "classifier-2"} <= names or not services["items"]:
                    return None
                if stored.get("status", {}).get("state") != "Creating":  # reconciled once through
                    return None
                return {"deployments": deployments["items"], "services": services["items"], "sdep": stored}

            made = wait_until(listed, timeout=60, what=f"Seldon {SELDON_RELEASE}'s operator to create the graph")

            # Play the Deployment controller and kubelet: every Deployment's pods are up.
            for deployment in made["deployments"]:
                apps.patch_namespaced_deployment_status(
                    deployment["metadata"]["name"], namespace, {"status": rolled_out(deployment)}
                )

            def available() -> dict[str, Any] | None:
                operator.alive()
                stored: dict[str, Any] = objects.get_namespaced_custom_object(
                    SELDON_GROUP, "v1", namespace, SELDON_PLURAL, sdep["metadata"]["name"]
                )
                return stored if stored.get("status", {}).get("state") == "Available" else None

            made["available"] = wait_until(available, timeout=60, what="the operator to report the graph Available")
    return {**made, "rendered": sdep}


def rolled_out(deployment: dict[str, Any]) -> dict[str, Any]:
    """The status a Deployment controller writes once its one replica runs the current template."""
    replicas = deployment["spec"].get("replicas", 1)
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    }


def containers(reconciled: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each container the operator created, by name, with the pod spec it runs in."""
    found = {}
    for deployment in reconciled["deployments"]:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            found[container["name"]] = (container, pod)
    return found


def test_the_orchestrator_writes_meta_routing(reconciled: dict[str, Any]) -> None:
    orchestrator, _ = containers(reconciled)[ORCHESTRATOR]
    env = {e["name"]: e.get("value") for e in orchestrator["env"]}
    assert env["SELDON_ENABLE_ROUTING_INJECTION"] == "true"
    assert orchestrator["image"] == EXECUTOR_IMAGE
    # The graph it routes is ours: RANDOM_ABTEST over both arms with the ratio we asked for.
    predictor = json.loads(base64.b64decode(env["ENGINE_PREDICTOR"]))
    graph = predictor["graph"]
    assert graph["implementation"] == "RANDOM_ABTEST"
    assert [child["name"] for child in graph["children"]] == ["classifier-1", "classifier-2"]
    assert {p["name"]: p["value"] for p in graph["parameters"]} == {"ratioA": "0.3"}
    # abflow's resources for it, not the operator's defaults.
    wanted = reconciled["rendered"]["spec"]["predictors"][0]["svcOrchSpec"]["resources"]
    assert quantities(orchestrator["resources"]) == quantities(wanted)


def test_the_models_run_what_abflow_meant(reconciled: dict[str, Any]) -> None:
    made = containers(reconciled)
    specs = reconciled["rendered"]["spec"]["predictors"][0]["componentSpecs"]
    for component, model_uri in zip(specs, (MODEL_A, MODEL_B), strict=True):
        (meant,) = component["spec"]["containers"]
        container, pod = made[meant["name"]]
        assert container["image"] == IMAGE
        assert container["args"] == meant["args"]
        assert container["args"][container["args"].index("--model") + 1] == model_uri
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == 9000
        for probe in ("livenessProbe", "readinessProbe"):
            # The API server adds the default scheme (HTTP); path and port are abflow's.
            assert container[probe]["httpGet"] == {"scheme": "HTTP", **meant[probe]["httpGet"]}, (meant["name"], probe)
            assert container[probe]["initialDelaySeconds"] == meant[probe]["initialDelaySeconds"]
        assert quantities(container["resources"]) == quantities(meant["resources"])
        assert pod["serviceAccountName"] == MODEL_SERVICE_ACCOUNT
        # What Seldon tells each model about itself: abflow's metric labels read these.
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PREDICTIVE_UNIT_ID"] == meant["name"]
        assert env["PREDICTIVE_UNIT_IMAGE"] == IMAGE
        assert env["SELDON_DEPLOYMENT_ID"] == reconciled["sdep"]["metadata"]["name"]


def test_the_graph_is_served_and_its_status_written_by_the_controller(reconciled: dict[str, Any]) -> None:
    services = {s["metadata"]["name"]: s for s in reconciled["services"]}
    name = reconciled["sdep"]["metadata"]["name"]
    predictor = reconciled["sdep"]["spec"]["predictors"][0]["name"]
    assert f"{name}-{predictor}" in services, sorted(services)
    # Until the pods run, Seldon says Creating; once every Deployment is available, Available, with
    # each Deployment's replicas: what abflow's deploy step waits for.
    assert reconciled["sdep"]["status"]["state"] == "Creating"
    status = reconciled["available"]["status"]
    assert {name: s["availableReplicas"] for name, s in status["deploymentStatus"].items()} == {
        d["metadata"]["name"]: 1 for d in reconciled["deployments"]
    }


def quantities(resources: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Resource quantities as strings, however the YAML or JSON typed them."""
    return {kind: {k: str(v) for k, v in values.items()} for kind, values in resources.items()}


def test_the_stored_graph_is_what_abflow_sent(reconciled: dict[str, Any]) -> None:
    """The CRD's structural schema prunes unknown fields silently, and the operator reconciles what is
    stored: every field abflow sends must survive, through the operator's reconcile too."""
    sent = reconciled["rendered"]["spec"]["predictors"][0]
    stored = reconciled["available"]["spec"]["predictors"][0]
    for field in ("componentSpecs", "graph", "svcOrchSpec", "replicas", "name"):
        assert stored[field] == sent[field], field


def test_a_shadow_predictor_is_reconciled_beside_the_serving_one(control_plane: ControlPlane,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pipeline's ``deploy_mode=shadow``: the champion alone in the serving predictor's graph, the
    challenger in a predictor of its own with its own orchestrator, Service and Deployment. (The mirror
    itself, with its ``traffic`` percentage, is Istio's VirtualService, which the operator writes only
    with Istio enabled; this cluster has none.)"""
    namespace = new_namespace(control_plane)
    graph = shadow_graph("iris-shadow", MODEL_A, MODEL_B, 0.25)
    sdep = render_seldon_deployment(graph, image=IMAGE, namespace=namespace)
    made = reconcile(control_plane, sdep, tmp_path_factory.mktemp("seldon-operator-shadow"))
    by_predictor: dict[str, list[str]] = {}
    for deployment in made["deployments"]:
        pod = deployment["spec"]["template"]["spec"]
        label = deployment["metadata"]["labels"].get("seldon-deployment-id")
        assert label == "iris-shadow"
        for container in pod["containers"]:
            if container["name"] != ORCHESTRATOR:
                model = container["args"][container["args"].index("--model") + 1]
                by_predictor.setdefault(container["name"], []).append(model)
    assert by_predictor == {"classifier-1": [MODEL_A], "classifier-2": [MODEL_B]}
    services = {s["metadata"]["name"] for s in made["services"]}
    assert {"iris-shadow-default", "iris-shadow-shadow"} <= services, sorted(services)
    stored = made["available"]["spec"]["predictors"]
    assert [(p["name"], p.get("shadow", False), p.get("traffic")) for p in stored][1] == ("shadow", True, 25)
