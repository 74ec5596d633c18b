"""The ``seldon`` deploy target: apply a SeldonDeployment, wait until it serves, roll it back.

``deploy_seldon`` creates the object or patches it to the new spec (keeping the spec it replaced),
waits until Seldon's operator reports ``status.state == "Available"`` for *this* spec, and returns a
record holding the endpoint and the previous spec. ``rollback_seldon`` re-applies that previous spec,
or deletes the object when the deploy created it. A deploy that never becomes available is rolled
back before the error is raised, so the previous model keeps serving.

Errors say what to do: a 403 names the verb and resource the pipeline's service account lacks and
the Role that grants it; a missing CRD says to install Seldon Core; a timeout shows the last status,
the pods' waiting/terminated reasons and the operator's warnings.

``DeploymentRecord`` crosses KFP step boundaries as JSON, from the deploy step to the smoke test that
may roll it back; ``abflow.components.deploy_targets`` dispatches between this target and ``local``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from abflow.components.seldon_manifests import ROLE_NAME, SELDON_GROUP, SELDON_PLURAL, render_seldon_deployment
from abflow.serving.graph import ab_graph

SELDON_VERSION = "v1"
AVAILABLE = "Available"
FAILED = "Failed"
SELDON_ID_LABEL = "seldon-deployment-id"
REQUEST_TIMEOUT_S = 30.0
INSTALL_SELDON = (
    "install Seldon Core v1 (Apache-2.0 up to 1.17): helm install seldon-core seldon-core-operator "
    "--repo https://storage.googleapis.com/seldon-charts --version 1.17.1 "
    "--namespace seldon-system --create-namespace"
)


class SeldonDeployError(RuntimeError):
    """The SeldonDeployment could not be applied, or never served; the message says what to do."""


class SeldonForbiddenError(SeldonDeployError):
    """The API server refused a verb: the pipeline's service account lacks an RBAC rule."""


class SeldonCrdMissingError(SeldonDeployError):
    """The cluster does not serve ``seldondeployments.machinelearning.seldon.io/v1``."""


class SeldonTimeoutError(SeldonDeployError):
    """The deployment did not become available in time (or failed); ``record`` describes the attempt."""

    def __init__(self, message: str, record: DeploymentRecord) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class DeploymentRecord:
    """What a deploy did, enough to reach the endpoint and to undo the deploy later.

    ``previous`` is target-specific and opaque to callers (for ``seldon``: the labels, annotations and
    spec the deploy replaced; ``None`` when the deploy created the deployment, so rollback deletes).
    """

    target: str
    name: str
    endpoint: str
    namespace: str = ""
    previous: Mapping[str, Any] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeploymentRecord:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not {"target", "name", "endpoint"} <= raw.keys():
            raise ValueError(f"not a deployment record (needs target, name, endpoint): {text[:200]!r}")
        return cls(**raw)


def deploy_seldon(
    manifest: Mapping[str, Any],
    *,
    namespace: str,
    timeout: float = 600,
    poll_interval: float = 2,
    api_client: Any = None,
    ingress_url: str | None = None,
    rollback_on_failure: bool = True,
) -> DeploymentRecord:
    """Create or patch the SeldonDeployment in ``namespace`` and wait until it is Available.

    ``api_client`` is a ``kubernetes.client.ApiClient``; by default the in-cluster configuration is
    used (a pipeline step) or else the local kubeconfig. ``ingress_url`` (e.g. Istio's or Ambassador's
    gateway) makes the endpoint ``<ingress>/seldon/<ns>/<name>/api/v1.0/predictions``; without it the
    endpoint is the in-cluster service URL.
    """
    api = _Api(api_client or _default_api_client(), namespace)
    api.require_crd()
    name = _name_of(manifest)
    desired = {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}
    current = api.get(name)
    if current is None:
        applied = api.create(desired)
        previous: dict[str, Any] | None = None
    else:
        previous = _restorable(current)
        applied = api.patch(name, _apply_patch(current, desired))
    record = DeploymentRecord(
        target="seldon",
        name=name,
        namespace=namespace,
        endpoint=_endpoint(name, namespace, manifest, ingress_url),
        previous=previous,
        details={"generation": applied.get("metadata", {}).get("generation")},
    )
    try:
        status = _wait_available(api, name, timeout=timeout, poll_interval=poll_interval)
    except SeldonTimeoutError as exc:
        message = str(exc)
        if rollback_on_failure:
            rollback_seldon(record, api_client=api.client, wait=False)
            message += (
                "\nrolled back: the previous spec was re-applied"
                if previous is not None
                else "\nrolled back: the new SeldonDeployment was deleted"
            )
        raise SeldonTimeoutError(message, record) from None
    address = status.get("address", {}).get("url") if ingress_url is None else None
    if address:
        record = DeploymentRecord(**{**asdict(record), "endpoint": address})
    return record


def deploy_ab_seldon(
    *,
    name: str,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    image: str | None,
    namespace: str,
    ingress_url: str | None = None,
    timeout: float = 600,
    api_client: Any = None,
) -> DeploymentRecord:
    """What the pipeline's deploy-ab step does for target ``seldon``: render the A/B graph (arm A =
    champion) and deploy it. An empty ``image`` serves the arms with Seldon's SKLEARN_SERVER."""
    graph = ab_graph(name, model_a_uri, model_b_uri, ratio_a)
    manifest = render_seldon_deployment(graph, image=image or None, namespace=namespace)
    return deploy_seldon(manifest, namespace=namespace, timeout=timeout, ingress_url=ingress_url, api_client=api_client)


def rollback_seldon(
    record: DeploymentRecord,
    *,
    timeout: float = 600,
    poll_interval: float = 2,
    api_client: Any = None,
    wait: bool = True,
) -> None:
    """Undo ``record``'s deploy: re-apply the spec it replaced, or delete what it created.

    With ``wait``, returns once the restored spec is Available again.
    """
    if record.target != "seldon":
        raise ValueError(f"record of target {record.target!r} cannot be rolled back by the seldon target")
    api = _Api(api_client or _default_api_client(), record.namespace)
    if record.previous is None:
        api.delete(record.name)
        return
    current = api.get(record.name)
    if current is None:
        restored = {
            "apiVersion": f"{SELDON_GROUP}/{SELDON_VERSION}",
            "kind": "SeldonDeployment",
            "metadata": {"name": record.name, "namespace": record.namespace, **record.previous["metadata"]},
            "spec": record.previous["spec"],
        }
        api.create(restored)
    else:
        api.patch(record.name, _apply_patch(current, record.previous))
    if wait:
        _wait_available(api, record.name, timeout=timeout, poll_interval=poll_interval)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: removed keys become null."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch


def _apply_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Spec replaced exactly; labels and annotations only added or overwritten, because other tools
    (kubectl, GitOps controllers) keep their own keys there."""
    patch: dict[str, Any] = {}
    spec = merge_patch(current.get("spec") or {}, desired.get("spec") or {})
    if spec:
        patch["spec"] = spec
    metadata: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        wanted = desired.get("metadata", {}).get(key) or {}
        have = current.get("metadata", {}).get(key) or {}
        changed = {k: v for k, v in wanted.items() if have.get(k) != v}
        if changed:
            metadata[key] = changed
    if metadata:
        patch["metadata"] = metadata
    return patch


def _restorable(current: Mapping[str, Any]) -> dict[str, Any]:
    metadata = current.get("metadata", {})
    return {
        "metadata": {key: dict(metadata.get(key) or {}) for key in ("labels", "annotations")},
        "spec": current.get("spec") or {},
    }


def _name_of(manifest: Mapping[str, Any]) -> str:
    if manifest.get("kind") != "SeldonDeployment":
        raise SeldonDeployError(f"the seldon target applies a SeldonDeployment, got kind {manifest.get('kind')!r}")
    name = manifest.get("metadata", {}).get("name")
    if not isinstance(name, str) or not name:
        raise SeldonDeployError("the SeldonDeployment has no metadata.name")
    return name


def _endpoint(name: str, namespace: str, manifest: Mapping[str, Any], ingress_url: str | None) -> str:
    if ingress_url:
        return f"{ingress_url.rstrip('/')}/seldon/{namespace}/{name}/api/v1.0/predictions"
    predictor = manifest["spec"]["predictors"][0]["name"]
    # Seldon v1 names the predictor's service <deployment>-<predictor>, REST on port 8000.
    return f"http://{name}-{predictor}.{namespace}.svc.cluster.local:8000/api/v1.0/predictions"


def _wait_available(api: _Api, name: str, *, timeout: float, poll_interval: float) -> dict[str, Any]:
    """Poll until the operator reports Available for the current spec generation.

    Seldon's status may still say Available for the *previous* spec right after a patch; when the
    object carries ``metadata.generation`` and the status ``observedGeneration``, a status older than
    the spec is not trusted.
    """
    deadline = time.monotonic() + timeout
    while True:
        current = api.get(name)
        if current is None:
            raise SeldonDeployError(
                f"SeldonDeployment {api.namespace}/{name} disappeared while waiting for it: "
                "someone deleted it; deploy again"
            )
        status = current.get("status") or {}
        fresh = _is_fresh(current)
        if fresh and status.get("state") == AVAILABLE:
            return dict(status)
        if fresh and status.get("state") == FAILED:
            raise SeldonTimeoutError(_not_available(api, name, current, "failed"), _stub(api, name))
        if time.monotonic() >= deadline:
            raise SeldonTimeoutError(
                _not_available(api, name, current, f"not Available after {timeout:g}s"), _stub(api, name)
            )
        time.sleep(poll_interval)


def _is_fresh(current: Mapping[str, Any]) -> bool:
    generation = current.get("metadata", {}).get("generation")
    observed = (current.get("status") or {}).get("observedGeneration")
    return generation is None or observed is None or observed >= generation


def _stub(api: _Api, name: str) -> DeploymentRecord:
    return DeploymentRecord(target="seldon", name=name, endpoint="", namespace=api.namespace)


def _not_available(api: _Api, name: str, current: Mapping[str, Any], why: str) -> str:
    status = current.get("status") or {}
    lines = [
        f"SeldonDeployment {api.namespace}/{name} {why}: state={status.get('state', '<none>')!r}, "
        f"description={status.get('description', '')!r}, replicas={status.get('replicas', '<none>')}",
    ]
    for deployment, info in sorted((status.get("deploymentStatus") or {}).items()):
        lines.append(
            f"  deployment {deployment}: {info.get('availableReplicas', 0)}/{info.get('replicas', '?')} "
            f"available {info.get('description', '')}".rstrip()
        )
    lines.extend(api.pod_reasons(name))
    lines.extend(api.warnings(name))
    lines.append(
        f"check with: kubectl -n {api.namespace} describe sdep {name}; "
        f"kubectl -n {api.namespace} get pods -l {SELDON_ID_LABEL}={name}"
    )
    return "\n".join(lines)


def _default_api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        pass
    try:
        # KUBECONFIG as it is now: the client library reads it once, when it is first imported.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG", "~/.kube/config"))
    except (config.ConfigException, FileNotFoundError, TypeError) as exc:
        raise SeldonDeployError(
            f"no Kubernetes configuration: not running in a cluster and no usable kubeconfig ({exc}); "
            "run inside a pipeline step, or set KUBECONFIG / run kubectl config use-context"
        ) from exc


class _Api:
    """The few API calls the target makes, each translating errors into ones that say what to do."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.client = api_client
        self.namespace = namespace
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._exception: type[Exception] = client.ApiException

    def require_crd(self) -> None:
        try:
            found = self._custom.get_api_resources(SELDON_GROUP, SELDON_VERSION, _request_timeout=REQUEST_TIMEOUT_S)
        except self._exception as exc:
            if getattr(exc, "status", None) != 404:
                raise self._translate(exc, "get", "discovery") from None
            found = None
        names = {resource.name for resource in (found.resources if found else None) or []}
        if SELDON_PLURAL not in names:
            raise SeldonCrdMissingError(
                f"SeldonDeployment CRD not installed: the cluster serves no {SELDON_PLURAL}."
                f"{SELDON_GROUP}/{SELDON_VERSION}; {INSTALL_SELDON}"
            )

    def get(self, name: str) -> dict[str, Any] | None:
        method = self._custom.get_namespaced_custom_object
        found: dict[str, Any] | None = self._seldon("get", method, name, missing_ok=True)
        return found

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._seldon("create", self._custom.create_namespaced_custom_object, dict(body))
        return created

    def patch(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self._seldon("patch", self._custom.patch_namespaced_custom_object, name, dict(patch))
        return patched

    def delete(self, name: str) -> None:
        self._seldon("delete", self._custom.delete_namespaced_custom_object, name, missing_ok=True)

    def _seldon(self, verb: str, method: Any, *args: Any, missing_ok: bool = False) -> Any:
        """One call on the namespace's seldondeployments; a 404 is ``None`` where ``missing_ok``."""
        try:
            return method(
                SELDON_GROUP, SELDON_VERSION, self.namespace, SELDON_PLURAL, *args, _request_timeout=REQUEST_TIMEOUT_S
            )
        except self._exception as exc:
            if missing_ok and getattr(exc, "status", None) == 404:
                return None
            raise self._translate(exc, verb, SELDON_PLURAL) from None

    def pod_reasons(self, name: str) -> list[str]:
        """Why the deployment's pods are not ready, e.g. ImagePullBackOff or CrashLoopBackOff."""
        try:
            pods = self._list(self._core.list_namespaced_pod, label_selector=f"{SELDON_ID_LABEL}={name}")
        except SeldonDeployError as exc:
            return [f"  (pods not listed: {exc})"]
        lines = []
        for pod in pods:
            if (pod.get("metadata", {}).get("labels") or {}).get(SELDON_ID_LABEL) != name:
                continue
            pod_status = pod.get("status") or {}
            statuses = (pod_status.get("initContainerStatuses") or []) + (pod_status.get("containerStatuses") or [])
            reasons = [_container_reason(status) for status in statuses]
            shown = "; ".join(reason for reason in reasons if reason) or pod_status.get("phase", "unknown")
            lines.append(f"  pod {pod['metadata']['name']}: {shown}")
        return lines or [f"  no pods labelled {SELDON_ID_LABEL}={name} yet (is the Seldon operator running?)"]

    def warnings(self, name: str, limit: int = 5) -> list[str]:
        try:
            events = self._list(self._core.list_namespaced_event, field_selector=f"involvedObject.name={name}")
        except SeldonDeployError as exc:
            return [f"  (events not listed: {exc})"]
        mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name and e.get("type") == "Warning"]
        return [f"  event {e.get('reason', '')}: {e.get('message', '')}" for e in mine[-limit:]]

    def _list(self, method: Any, **selector: str) -> list[dict[str, Any]]:
        resource = "pods" if "pod" in method.__name__ else "events"
        try:
            response = method(self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S, **selector)
        except self._exception as exc:
            raise self._translate(exc, "list", resource) from None
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    def _translate(self, exc: Any, verb: str, resource: str) -> SeldonDeployError:
        status = getattr(exc, "status", None)
        message = _server_message(exc)
        if status == 403:
            group = SELDON_GROUP if resource == SELDON_PLURAL else ""
            qualified = f"{resource}.{group}" if group else resource
            return SeldonForbiddenError(
                f"forbidden: cannot {verb} {qualified} in namespace {self.namespace!r} "
                f"(the service account needs verb {verb!r} on {qualified!r}); apply the Role "
                f"{ROLE_NAME!r}: abflow render --target seldon --namespace {self.namespace} … | kubectl apply -f - "
                f"(or kubectl apply -k manifests/). Server said: {message}"
            )
        if status == 401:
            return SeldonDeployError(
                f"unauthorized: the cluster rejected the credentials; refresh your kubeconfig login. {message}"
            )
        return SeldonDeployError(f"{verb} {resource} in namespace {self.namespace!r} failed: HTTP {status}: {message}")


def _server_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return str(getattr(exc, "reason", exc))
    return str(body.get("message") or body.get("reason") or body) if isinstance(body, dict) else str(body)


def _container_reason(status: Mapping[str, Any]) -> str:
    state = status.get("state") or {}
    name = status.get("name", "?")
    if "waiting" in state:
        waiting = state["waiting"]
        return f"{name} waiting: {waiting.get('reason', '')} {waiting.get('message', '')}".rstrip()
    if "terminated" in state:
        done = state["terminated"]
        return f"{name} terminated: {done.get('reason', '')} (exit {done.get('exitCode', '?')})"
    last = (status.get("lastState") or {}).get("terminated")
    if last and not status.get("ready"):
        return f"{name} restarted after: {last.get('reason', '')} (exit {last.get('exitCode', '?')})"
    return ""
