"""abflow's deploy waits for the new pods of a rolling update made by Seldon's real operator.

Seldon v1 says Available again as soon as it has pushed a new template to a Deployment whose old pods
are ready: it judges the Deployment by its status, which the Deployment controller has not updated for
the new template yet. A deploy that trusted that Available would smoke-test the old model and promote
the new one untested. Here the real operator (``tests.fixtures.seldon_operator``) makes the Deployments,
the test plays the Deployment controller (it writes each Deployment's status, as no controller-manager
or kubelet runs), and ``deploy_seldon`` — what the pipeline's deploy step calls — must keep waiting
through that stale Available and return only once the new template has rolled out.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from abflow.components.seldon_deploy import SELDON_GROUP, SELDON_ID_LABEL, SELDON_PLURAL, deploy_seldon
from abflow.pipelines.cli import main
from tests.fixtures.control_plane import ControlPlane
from tests.fixtures.processes import wait_until
from tests.fixtures.seldon_operator import RunningOperator, seldon_operator

IMAGE = "registry.example.com/abflow/iris-server:3f2a9c"
CHAMPION = "gs://bucket/abflow/models/iris/v1"
CHALLENGER = "gs://bucket/abflow/models/iris/v2"
NEXT_CHALLENGER = "gs://bucket/abflow/models/iris/v3"
NAME = "iris-ab"


def rendered(namespace: str, challenger: str) -> dict[str, Any]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["render", "--model-a", CHAMPION, "--model-b", challenger, "--image", IMAGE,
                     "--namespace", namespace, "--name", NAME]) == 0  # fmt: skip
    return next(d for d in yaml.safe_load_all(printed.getvalue()) if d["kind"] == "SeldonDeployment")


def rolled_out(deployment: dict[str, Any]) -> bool:
    return bool(deployment.get("status", {}).get("observedGeneration", 0) >= deployment["metadata"]["generation"])


class Cluster:
    """What the test reads from the API server, and the Deployment controller it plays."""

    def __init__(self, admin: Any, namespace: str, operator: RunningOperator) -> None:
        self.apps, self.objects = client.AppsV1Api(admin), client.CustomObjectsApi(admin)
        self.namespace, self.operator = namespace, operator

    def deployments(self) -> list[dict[str, Any]]:
        self.operator.alive()
        listed = self.apps.list_namespaced_deployment(
            self.namespace, label_selector=f"{SELDON_ID_LABEL}={NAME}", _preload_content=False
        )
        return list(json.loads(listed.data)["items"])

    def state(self) -> str | None:
        stored = self.objects.get_namespaced_custom_object(SELDON_GROUP, "v1", self.namespace, SELDON_PLURAL, NAME)
        return (stored.get("status") or {}).get("state")

    def serving(self, uri: str) -> Callable[[], list[dict[str, Any]] | None]:
        """A check: the operator's Deployments, once one of them carries ``uri`` in its template."""

        def check() -> list[dict[str, Any]] | None:
            deployments = self.deployments()
            return deployments if uri in json.dumps([d["spec"]["template"] for d in deployments]) else None

        return check

    def roll_out(self, deployments: list[dict[str, Any]]) -> None:
        """Write what the Deployment controller writes once every replica runs the current template."""
        for deployment in deployments:
            replicas = deployment["spec"].get("replicas", 1)
            status = {
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
            }
            self.apps.patch_namespaced_deployment_status(
                deployment["metadata"]["name"], self.namespace, {"status": status}
            )


def test_deploy_waits_through_the_operators_stale_available(control_plane: ControlPlane, tmp_path: Path) -> None:
    namespace = f"seldon-rollout-{uuid.uuid4().hex[:8]}"
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    with (
        seldon_operator(control_plane, namespace, tmp_path) as operator,
        control_plane.api_client() as admin,
        control_plane.api_client() as deployer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        cluster = Cluster(admin, namespace, operator)

        def deploy(challenger: str) -> Any:
            return pool.submit(deploy_seldon, rendered(namespace, challenger), namespace=namespace,
                               api_client=deployer, timeout=60, poll_interval=0.05)  # fmt: skip

        first = deploy(CHALLENGER)
        cluster.roll_out(wait_until(cluster.serving(CHALLENGER), timeout=60, what="the operator's Deployments"))
        first.result(timeout=60)

        second = deploy(NEXT_CHALLENGER)
        wait_until(cluster.serving(NEXT_CHALLENGER), timeout=60, what="the new template")

        def stale_available() -> bool:
            # The new template is pushed, its pods do not exist, and Seldon says Available anyway.
            arm_b = [d for d in cluster.deployments() if NEXT_CHALLENGER in json.dumps(d["spec"]["template"])]
            return bool(arm_b) and not rolled_out(arm_b[0]) and cluster.state() == "Available"

        wait_until(stale_available, timeout=60, what="Seldon to call the graph Available before the new pods run")
        assert not second.done(), "deploy returned on Seldon's Available before the new pods ran"

        # Both Deployments got a new template: arm B's model URI, and the orchestrator's graph (its
        # ENGINE_PREDICTOR names arm B's arguments), which lives in arm A's pod: both roll.
        renewed = [d for d in cluster.deployments() if not rolled_out(d)]
        assert len(renewed) == 2, [d["metadata"]["name"] for d in renewed]
        cluster.roll_out(renewed)
        record = second.result(timeout=60)
        assert record.previous is not None, "a redeploy keeps the spec it replaced, for rollback"
        assert CHALLENGER in json.dumps(record.previous)
