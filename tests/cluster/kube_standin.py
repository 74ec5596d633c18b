"""A Kubernetes API with Seldon's CRD installed and a scripted Seldon operator, on 127.0.0.1.

No API server can run here, so kmock's ``KubernetesEmulator`` (an in-memory API over real HTTP)
stands in for it, and ``SeldonOperatorStandIn`` plays Seldon Core's operator and the Deployment
controller: it watches SeldonDeployments over HTTP and, for every new spec generation, writes one
Deployment per model pod (labelled ``seldon-deployment-id``, its template holding the model URIs) and
``status`` (and pods and events when a scenario says the pods cannot start), as the real ones would.
With ``slow_rollout`` it behaves as Seldon v1 does during a rolling update: the status says
``Available`` for the new generation at once while the Deployments still run old pods, until the test
calls ``finish_rollouts``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kmock
from kmock._internal import enums

SELDON_RESOURCE = "machinelearning.seldon.io/v1/seldondeployments"
SELDON_ID = "seldon-deployment-id"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class SeldonApiEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the two API-server behaviours the deploy target relies on.

    * ``metadata.generation`` starts at 1 and grows with every spec change, as the real API server
      does for custom resources, so a status written for an older spec can be told apart;
    * every request is kept as (verb, resource) so a test can compare it with the RBAC Role.
    """

    calls: list[tuple[str, str]]

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None:
            self.calls.append((_verb(request), _resource_name(request)))
            data = request.data if isinstance(request.data, dict) else None
            if request.action == enums.action.CREATE and data is not None:
                data.setdefault("metadata", {})["generation"] = 1
            elif request.action == enums.action.UPDATE and data and "spec" in data and not request.subresource:
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    generation = self.objects[key].get("metadata", {}).get("generation", 0)
                    data.setdefault("metadata", {})["generation"] = generation + 1
        return await super()._handle(request)


def _verb(request: Any) -> str:
    return {
        enums.action.LIST: "list",
        enums.action.WATCH: "watch",
        enums.action.FETCH: "get",
        enums.action.CREATE: "create",
        enums.action.UPDATE: "patch",
        enums.action.DELETE: "delete",
    }.get(request.action, str(request.method).lower())


def _resource_name(request: Any) -> str:
    resource = request.resource
    name = f"{resource.plural}" if resource.plural else "discovery"
    return f"{name}/{request.subresource}" if request.subresource else name


@dataclass
class Cluster:
    api: SeldonApiEmulator
    url: str


@asynccontextmanager
async def seldon_cluster(*, crd_installed: bool = True) -> AsyncIterator[Cluster]:
    """An API server on a free port, with (or without) the SeldonDeployment CRD."""
    async with SeldonApiEmulator() as api, kmock.Server(api) as server:
        api.calls = []
        if crd_installed:
            api.resources[SELDON_RESOURCE] = kmock.ResourceInfo(kind="SeldonDeployment", namespaced=True)
        api.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
        api.resources["apps/v1/deployments"] = kmock.ResourceInfo(kind="Deployment", namespaced=True)
        api.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
        yield Cluster(api, str(server.url).rstrip("/"))


def _leaves(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children") or []
    return [leaf for child in children for leaf in _leaves(child)] if children else [node]


Outcome = Callable[[dict[str, Any]], bool]
"""Given a SeldonDeployment, whether its pods can start (True → Available)."""


@dataclass
class SeldonOperatorStandIn:
    """Reacts to each new spec generation like Seldon's operator: Available, or stuck Creating."""

    url: str
    namespace: str
    healthy: Outcome
    slow_rollout: bool = False
    handled: dict[str, int] = field(default_factory=dict)
    rolling: list[str] = field(default_factory=list)
    """Deployments whose rolling update ``finish_rollouts`` completes (``slow_rollout`` only)."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SeldonOperatorStandIn]:
        async with aiohttp.ClientSession(self.url) as session:
            task = asyncio.create_task(self._watch(session))
            try:
                yield self
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        path = f"/apis/machinelearning.seldon.io/v1/namespaces/{self.namespace}/seldondeployments"
        async with session.get(path, params={"watch": "true"}) as response:
            async for line in response.content:
                event = json.loads(line)
                if event["type"] in ("ADDED", "MODIFIED"):
                    await self._reconcile(session, event["object"])
                elif event["type"] == "DELETED":  # a new object of the same name starts at generation 1
                    self.handled.pop(event["object"]["metadata"]["name"], None)

    async def _reconcile(self, session: aiohttp.ClientSession, sdep: dict[str, Any]) -> None:
        name = sdep["metadata"]["name"]
        generation = sdep["metadata"].get("generation", 0)
        if self.handled.get(name) == generation:
            return  # our own status write, or nothing new
        self.handled[name] = generation
        predictor = sdep["spec"]["predictors"][0]["name"]
        deployment = f"{name}-{predictor}-0-classifier-1"
        await self._write_deployments(session, sdep, rolled_out=self.healthy(sdep) and not self.slow_rollout)
        if self.healthy(sdep):
            status = {
                "state": "Available",
                "replicas": 1,
                "address": {"url": f"http://{name}-{predictor}.{self.namespace}:8000/api/v1.0/predictions"},
                "deploymentStatus": {deployment: {"replicas": 1, "availableReplicas": 1}},
            }
        else:
            status = {
                "state": "Creating",
                "description": "",
                "replicas": 1,
                "deploymentStatus": {deployment: {"replicas": 1, "availableReplicas": 0}},
            }
            await self._failing_pod(session, name, generation)
        status["observedGeneration"] = generation
        path = f"/apis/machinelearning.seldon.io/v1/namespaces/{self.namespace}/seldondeployments/{name}/status"
        async with session.patch(path, data=json.dumps({"status": status}), headers=MERGE_PATCH) as response:
            response.raise_for_status()

    async def _write_deployments(self, session: aiohttp.ClientSession, sdep: dict[str, Any], rolled_out: bool) -> None:
        """One Deployment per componentSpec, as Seldon's operator names and labels them; the status is
        what the Deployment controller reports: rolled out, or one new pod beside the old one."""
        name = sdep["metadata"]["name"]
        predictor = sdep["spec"]["predictors"][0]
        uris = [n["modelUri"] for n in _leaves(predictor["graph"]) if n.get("modelUri")]
        for index, component in enumerate(predictor.get("componentSpecs") or [{"spec": {"containers": []}}]):
            pod_spec = {
                **component["spec"],
                # Where the real operator hands a prepackaged server its model: the storage initializer.
                "initContainers": [{"name": "model-initializer", "args": uris}] if uris else [],
            }
            container = (component["spec"]["containers"] or [{"name": "classifier"}])[0]["name"]
            deployment_name = f"{name}-{predictor['name']}-{index}-{container}"
            body = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": deployment_name, "namespace": self.namespace, "labels": {SELDON_ID: name}},
                "spec": {"replicas": 1, "template": {"spec": pod_spec}},
            }
            path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
            async with session.get(f"{path}/{deployment_name}") as found:
                exists = found.status == 200
            method, url = (session.patch, f"{path}/{deployment_name}") if exists else (session.post, path)
            async with method(url, data=json.dumps(body), headers=MERGE_PATCH) as response:
                response.raise_for_status()
                generation = (await response.json())["metadata"].get("generation", 1)
            if rolled_out:
                status = {"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
            else:
                status = {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 0 if exists else 1,
                          "availableReplicas": 1 if exists else 0}  # fmt: skip
                self.rolling.append(deployment_name)
            await self._deployment_status(session, deployment_name, status)

    async def _deployment_status(self, session: aiohttp.ClientSession, name: str, status: dict[str, Any]) -> None:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/status"
        async with session.patch(path, data=json.dumps({"status": status}), headers=MERGE_PATCH) as response:
            response.raise_for_status()

    async def finish_rollouts(self) -> None:
        """The old pods are gone and the new ones ready: what the Deployment controller reports last."""
        async with aiohttp.ClientSession(self.url) as session:
            while self.rolling:
                name = self.rolling.pop()
                async with session.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}") as found:
                    generation = (await found.json())["metadata"].get("generation", 1)
                done = {"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
                await self._deployment_status(session, name, done)

    async def _failing_pod(self, session: aiohttp.ClientSession, name: str, generation: int) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-classifier-1-gen{generation}",
                "namespace": self.namespace,
                "labels": {"seldon-deployment-id": name},
            },
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "classifier-1",
                        "ready": False,
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": 'Back-off pulling image "registry.example.com/missing:tag"',
                            }
                        },
                    }
                ],
            },
        }
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.gen{generation}", "namespace": self.namespace},
            "involvedObject": {"kind": "SeldonDeployment", "name": name, "namespace": self.namespace},
            "type": "Warning",
            "reason": "InternalError",
            "message": "Deployment is not yet available",
        }
        for kind, body in (("pods", pod), ("events", event)):
            async with session.post(f"/api/v1/namespaces/{self.namespace}/{kind}", json=body) as response:
                response.raise_for_status()
