"""Seldon Core's operator and the Deployment controller, played on the real API server.

No controller runs beside the test control plane, so ``SeldonOperatorStandIn`` does, as the admin, the
little of their work the deploy target observes: for every new generation of a SeldonDeployment it
applies one Deployment per ``componentSpec`` of every predictor, a shadow's too (named and labelled as
Seldon v1 names them, the model URIs in its pod template), writes the Deployments' rollout status, and
writes the SeldonDeployment's ``status`` for that generation. When a namespace's scenario says the pods
cannot start, it reports ``Creating`` with a pod stuck in ImagePullBackOff and the operator's warning
event instead. With ``slow_rollout`` it behaves as Seldon v1 does during a rolling update:
``Available`` for the new generation at once, while the Deployments still run an old pod, until
``finish_rollouts``.

Everything else — validation, defaulting, pruning, generations, resourceVersions, RBAC, field managers
— is the real API server's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from tests.fixtures.control_plane import ControlPlane

SELDON_PATH = "/apis/machinelearning.seldon.io/v1"
SELDON_ID = "seldon-deployment-id"
FIELD_MANAGER = "seldon-operator-standin"
MISSING_IMAGE = "registry.example.com/missing:tag"
# What Seldon's operator puts where a graph node names a prepackaged server or a modelUri.
SKLEARN_SERVER_IMAGE = "seldonio/sklearnserver:1.17.1"
STORAGE_INITIALIZER_IMAGE = "seldonio/rclone-storage-initializer:1.17.1"


def pods_can_start(sdep: dict[str, Any]) -> bool:
    containers = [c for predictor in sdep["spec"]["predictors"] for spec in predictor.get("componentSpecs") or []
                  for c in spec["spec"]["containers"]]  # fmt: skip
    return all(c.get("image") != MISSING_IMAGE for c in containers)


@dataclass
class Scenario:
    healthy: Callable[[dict[str, Any]], bool] = pods_can_start
    slow_rollout: bool = False
    rolling: list[str] = field(default_factory=list)


@dataclass
class SeldonOperatorStandIn:
    """Watches SeldonDeployments in every namespace and reconciles those of namespaces it was given."""

    plane: ControlPlane
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    _handled: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def running(self) -> Iterator[SeldonOperatorStandIn]:
        stopped = threading.Event()
        with self.plane.api_client() as admin:
            watching: list[Any] = []
            thread = threading.Thread(target=self._watch, args=(admin, stopped, watching), daemon=True)
            thread.start()
            try:
                yield self
            finally:
                stopped.set()
                for response in watching:
                    response.shutdown()
                thread.join(timeout=10)

    def _watch(self, admin: client.ApiClient, stopped: threading.Event, watching: list[Any]) -> None:
        resource_version = ""
        while not stopped.is_set():
            response = admin.call_api(
                f"{SELDON_PATH}/seldondeployments",
                "GET",
                query_params=[("watch", "true"), ("resourceVersion", resource_version)],
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
            watching[:] = [response]
            try:
                for line in response:
                    event = json.loads(line)
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._reconcile(admin, event["object"])
            except Exception:  # noqa: BLE001 - the connection closed: watch again unless stopped
                if stopped.is_set():
                    return
                raise

    def _reconcile(self, admin: client.ApiClient, sdep: dict[str, Any]) -> None:
        metadata = sdep["metadata"]
        scenario = self.scenarios.get(metadata["namespace"])
        generation = metadata["generation"]
        if scenario is None or self._handled.get(metadata["uid"]) == generation:
            return  # not a test's namespace, or a status write of ours
        self._handled[metadata["uid"]] = generation
        healthy = scenario.healthy(sdep)
        rolling: list[str] = []
        names = self._apply_deployments(admin, sdep, healthy and not scenario.slow_rollout, rolling)
        with self._lock:
            scenario.rolling += rolling
        name, namespace = metadata["name"], metadata["namespace"]
        predictor = sdep["spec"]["predictors"][0]["name"]
        available = 1 if healthy else 0
        status: dict[str, Any] = {
            "state": "Available" if healthy else "Creating",
            "replicas": 1,
            "observedGeneration": generation,
            "deploymentStatus": {n: {"replicas": 1, "availableReplicas": available} for n in names},
        }
        if healthy:
            status["address"] = {"url": f"http://{name}-{predictor}.{namespace}:8000/api/v1.0/predictions"}
        else:
            self._failing_pod(admin, sdep)
        _merge(admin, f"{SELDON_PATH}/namespaces/{namespace}/seldondeployments/{name}/status", {"status": status})

    def _apply_deployments(self, admin: client.ApiClient, sdep: dict[str, Any], rolled_out: bool,
                           rolling: list[str]) -> list[str]:  # fmt: skip
        """One Deployment per componentSpec of each predictor; its status what the Deployment controller
        reports: rolled out, or (adding its name to ``rolling``) one new pod started beside the old one."""
        names = []
        for predictor in sdep["spec"]["predictors"]:
            names += self._apply_predictor(admin, sdep, predictor, rolled_out, rolling)
        return names

    def _apply_predictor(self, admin: client.ApiClient, sdep: dict[str, Any], predictor: dict[str, Any],
                         rolled_out: bool, rolling: list[str]) -> list[str]:  # fmt: skip
        name, namespace = sdep["metadata"]["name"], sdep["metadata"]["namespace"]
        uris = [n["modelUri"] for n in _leaves(predictor["graph"]) if n.get("modelUri")]
        names = []
        for index, component in enumerate(predictor.get("componentSpecs") or []):
            pod_spec = json.loads(json.dumps(component["spec"]))
            for container in pod_spec["containers"]:
                container.setdefault("image", SKLEARN_SERVER_IMAGE)
            if uris:  # where the real operator hands a prepackaged server its model
                pod_spec["initContainers"] = [{"name": "model-initializer", "image": STORAGE_INITIALIZER_IMAGE,
                                               "args": uris}]  # fmt: skip
            deployment = f"{name}-{predictor['name']}-{index}-{pod_spec['containers'][0]['name']}"
            labels = {SELDON_ID: name, "seldon-app": deployment}
            body = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": deployment, "namespace": namespace, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            }
            path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}"
            applied = _call(admin, path, "PATCH", body, "application/apply-patch+yaml",
                            [("fieldManager", FIELD_MANAGER), ("force", "true")])  # fmt: skip
            names.append(deployment)
            generation = applied["metadata"]["generation"]
            seen = (applied.get("status") or {}).get("observedGeneration")
            if seen == generation:
                continue  # its pod template did not change: it keeps running the pods it has
            if rolled_out:
                status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
            elif seen is None:  # created: its first pod is starting
                status = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 0, "availableReplicas": 0}
            else:  # rolling: one new pod beside the old one, which still serves
                status = {"replicas": 2, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
                rolling.append(deployment)
            _merge(admin, f"{path}/status", {"status": {**status, "observedGeneration": generation}})
        return names

    def finish_rollouts(self, namespace: str) -> None:
        """The old pods are gone and the new ones ready: what the Deployment controller reports last."""
        scenario = self.scenarios[namespace]
        with self.plane.api_client() as admin, self._lock:
            while scenario.rolling:
                path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{scenario.rolling.pop()}"
                generation = _call(admin, path, "GET")["metadata"]["generation"]
                done = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}
                _merge(admin, f"{path}/status", {"status": {**done, "observedGeneration": generation}})

    def _failing_pod(self, admin: client.ApiClient, sdep: dict[str, Any]) -> None:
        name, namespace = sdep["metadata"]["name"], sdep["metadata"]["namespace"]
        generation = sdep["metadata"]["generation"]
        pod_name = f"{name}-classifier-1-gen{generation}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "labels": {SELDON_ID: name}},
            "spec": {"containers": [{"name": "classifier-1", "image": MISSING_IMAGE}]},
        }
        _call(admin, f"/api/v1/namespaces/{namespace}/pods", "POST", pod)
        waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{MISSING_IMAGE}"'}
        pod_status = {"phase": "Pending", "containerStatuses": [
            {"name": "classifier-1", "image": MISSING_IMAGE, "imageID": "", "ready": False, "restartCount": 0,
             "state": {"waiting": waiting}}]}  # fmt: skip
        _merge(admin, f"/api/v1/namespaces/{namespace}/pods/{pod_name}/status", {"status": pod_status})
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.gen{generation}", "namespace": namespace},
            "involvedObject": {"kind": "SeldonDeployment", "name": name, "namespace": namespace,
                               "apiVersion": "machinelearning.seldon.io/v1", "uid": sdep["metadata"]["uid"]},
            "type": "Warning",
            "reason": "InternalError",
            "message": "Deployment is not yet available",
            "source": {"component": "seldon-controller-manager"},
        }  # fmt: skip
        _call(admin, f"/api/v1/namespaces/{namespace}/events", "POST", event)


def _leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children") or []
    return [leaf for child in children for leaf in _leaves(child)] if children else [node]


def _merge(admin: client.ApiClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return _call(admin, path, "PATCH", body, "application/merge-patch+json")


def _call(admin: client.ApiClient, path: str, method: str, body: dict[str, Any] | None = None,
          content_type: str = "application/json", query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    response = admin.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    result: dict[str, Any] = json.loads(response.data)
    return result
