"""A Kubernetes API with Seldon's CRD installed and a scripted Seldon operator, on 127.0.0.1.

No API server can run here, so kmock's ``KubernetesEmulator`` (an in-memory API over real HTTP)
stands in for it, and ``SeldonOperatorStandIn`` plays Seldon Core's operator: it watches
SeldonDeployments over HTTP and, for every new spec generation, writes ``status`` (and pods and
events when a scenario says the pods cannot start), as the real operator would.
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
        api.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
        yield Cluster(api, str(server.url).rstrip("/"))


Outcome = Callable[[dict[str, Any]], bool]
"""Given a SeldonDeployment, whether its pods can start (True → Available)."""


@dataclass
class SeldonOperatorStandIn:
    """Reacts to each new spec generation like Seldon's operator: Available, or stuck Creating."""

    url: str
    namespace: str
    healthy: Outcome
    handled: dict[str, int] = field(default_factory=dict)

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

    async def _reconcile(self, session: aiohttp.ClientSession, sdep: dict[str, Any]) -> None:
        name = sdep["metadata"]["name"]
        generation = sdep["metadata"].get("generation", 0)
        if self.handled.get(name) == generation:
            return  # our own status write, or nothing new
        self.handled[name] = generation
        predictor = sdep["spec"]["predictors"][0]["name"]
        deployment = f"{name}-{predictor}-0-classifier-1"
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
