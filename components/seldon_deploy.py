"""The ``seldon`` deploy target: apply a SeldonDeployment, wait until it serves, roll it back.

``deploy_seldon`` creates the object, or server-side applies the new spec over it (field manager
``abflow``, guarded by the ``resourceVersion`` it read, so the spec it keeps for rollback is exactly
the one it replaced), then waits until the new pods serve: the operator reports ``Available`` for
*this* generation **and** every Deployment it made for the SeldonDeployment has rolled out (all
replicas updated, available, none of the old left) with a pod template holding the new model URIs.
Seldon v1 keeps ``Available`` during a rolling update, so the status alone would let a smoke test
pass against the old pods. ``rollback_seldon`` re-applies the previous spec, or deletes the object
when the deploy created it, but only while the object is still this deploy's (same uid and
generation): a later run's deploy is never undone. A deploy that never becomes available is rolled
back before the error is raised, so the previous model keeps serving.

Errors say what to do: a 403 names the verb and resource the service account lacks, how to check it
(``kubectl auth can-i … --as``) and how to grant the Role alone (``abflow render --rbac-only``, never
a SeldonDeployment that would replace the one serving); a missing CRD says to install Seldon Core; a
timeout shows the last status, the Deployments' rollout, the pods' waiting/terminated reasons and the
operator's warnings.

``SeldonRelease`` crosses KFP step boundaries as JSON, from the deploy step to the smoke test that
may roll it back; ``abflow.components.deploy_targets`` dispatches between this target and ``local``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from abflow.components.seldon_manifests import (
    DEFAULT_SERVICE_ACCOUNT,
    ROLE_NAME,
    SELDON_GROUP,
    SELDON_PLURAL,
    render_seldon_deployment,
)
from abflow.serving.graph import RANDOM_ABTEST, RATIO_PARAMETER, ab_graph, check_ratio, shadow_graph

SELDON_VERSION = "v1"
AVAILABLE = "Available"
FAILED = "Failed"
SELDON_ID_LABEL = "seldon-deployment-id"
REQUEST_TIMEOUT_S = 30.0
FIELD_MANAGER = "abflow"
APPLY_ATTEMPTS = 3  # a resourceVersion conflict (the operator wrote status meanwhile) is read and tried again
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


class _Conflict(Exception):
    """HTTP 409: the object's resourceVersion is no longer the one a write was guarded by."""


class SeldonRollbackConflict(SeldonDeployError):
    """Not rolled back: the SeldonDeployment changed after this deploy (another run deployed since)."""


class SplitNotMoved(SeldonDeployError):
    """The SeldonDeployment whose split was to move is gone or serves another experiment: nothing changed."""


class SeldonTimeoutError(SeldonDeployError):
    """The deployment did not become available in time (or failed); ``record`` describes the attempt."""

    def __init__(self, message: str, record: SeldonRelease) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class SeldonRelease:
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
    def from_json(cls, text: str) -> SeldonRelease:
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
) -> SeldonRelease:
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
    previous, applied = _apply_guarded(api, name, desired)
    metadata = applied.get("metadata", {})
    record = SeldonRelease(
        target="seldon",
        name=name,
        namespace=namespace,
        endpoint=_endpoint(name, namespace, manifest, ingress_url),
        previous=previous,
        details={
            "generation": metadata.get("generation"),
            "uid": metadata.get("uid"),
            "model_uris": model_uris(manifest),
        },
    )
    try:
        status = _wait_serving(api, name, record.details["model_uris"], timeout=timeout, poll_interval=poll_interval)
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
        record = SeldonRelease(**{**asdict(record), "endpoint": address})
    return record


def _apply_guarded(api: _Api, name: str, desired: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Create ``desired``, or apply it over the current object only if that is still the object read:
    returns (what it replaced, or None when created; what the server stored)."""
    for _ in range(APPLY_ATTEMPTS):
        current = api.get(name)
        if current is None:
            return None, api.create(desired)
        try:
            return _restorable(current), api.apply(desired, resource_version=_rv(current))
        except _Conflict:
            continue
    raise SeldonDeployError(
        f"SeldonDeployment {api.namespace}/{name} kept changing while abflow applied it ({APPLY_ATTEMPTS} "
        "resourceVersion conflicts): another deploy is running; try again when it is done"
    )


def model_uris(manifest: Mapping[str, Any]) -> list[str]:
    """The model URIs a rendered SeldonDeployment serves (``--model`` args or ``modelUri``), in order."""
    uris: list[str] = []
    for predictor in manifest.get("spec", {}).get("predictors", []):
        for component in predictor.get("componentSpecs", []):
            for container in component.get("spec", {}).get("containers", []):
                args = list(container.get("args") or [])
                uris += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--model"]
        uris += [node["modelUri"] for node in _graph_nodes(predictor.get("graph") or {}) if node.get("modelUri")]
    return uris


def _graph_nodes(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [node, *(leaf for child in node.get("children") or [] for leaf in _graph_nodes(child))]


def deploy_ab_seldon(
    *,
    name: str,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    image: str | None,
    namespace: str,
    service_account: str = "",
    ingress_url: str | None = None,
    timeout: float = 600,
    api_client: Any = None,
    experiment_id: str = "",
    shadow_fraction: float = 0.0,
) -> SeldonRelease:
    """What the pipeline's deploy-ab step does for target ``seldon``: render the A/B graph (arm A =
    champion) and deploy it; with a ``shadow_fraction`` above 0, the champion alone serves and the
    challenger is a shadow predictor mirrored that fraction (Istio's mirror percentage; the record's
    ``details`` keep it). An empty ``image`` serves the arms with Seldon's SKLEARN_SERVER.
    ``service_account`` is the model pods' identity (e.g. bound to a Google service account by
    Workload Identity, to read ``gs://`` models); empty keeps the namespace's default account.
    ``experiment_id`` labels the predictor's metrics with the experiment it serves."""
    graph = (shadow_graph(name, model_a_uri, model_b_uri, shadow_fraction) if shadow_fraction
             else ab_graph(name, model_a_uri, model_b_uri, ratio_a))
    manifest = render_seldon_deployment(
        graph, image=image or None, namespace=namespace, service_account=service_account or None,
        experiment_id=experiment_id,
    )
    release = deploy_seldon(manifest, namespace=namespace, timeout=timeout, ingress_url=ingress_url,
                            api_client=api_client)
    if not shadow_fraction:
        return release
    return replace(release, details={**release.details, "shadow_fraction": shadow_fraction})


def move_split_seldon(
    *,
    name: str,
    namespace: str,
    ratio_a: float,
    experiment_id: str,
    timeout: float = 600,
    api_client: Any = None,
) -> SeldonRelease:
    """Set the ``ratioA`` of the RANDOM_ABTEST router of the SeldonDeployment serving experiment
    ``experiment_id`` (its predictors' ``version`` label) and wait until it serves, keeping the rest
    of the live spec as it is (images, model URIs, labels): a ``ratio_schedule`` step on a cluster,
    through the same guarded apply, wait and rollback-on-timeout as a deploy. ``SplitNotMoved`` when
    the object is gone or serves another experiment."""
    ratio = check_ratio(ratio_a)
    api = _Api(api_client or _default_api_client(), namespace)
    current = api.get(name)
    where = f"SeldonDeployment {namespace}/{name}"
    if current is None:
        raise SplitNotMoved(f"{where} does not exist any more, so the split of experiment {experiment_id} cannot move")
    spec = json.loads(json.dumps(current.get("spec") or {}))
    predictors = spec.get("predictors") or []
    serving = sorted({str((p.get("labels") or {}).get("version", "")) for p in predictors})
    if serving != [experiment_id]:
        raise SplitNotMoved(f"{where} serves experiment {', '.join(serving) or '(none)'}, not {experiment_id}: "
                            "its split is left alone")
    routers = [node for p in predictors for node in _mutable_nodes(p.get("graph") or {})
               if node.get("implementation") == RANDOM_ABTEST]
    if not routers:
        raise SplitNotMoved(f"{where} has no {RANDOM_ABTEST} router whose split could move")
    for router in routers:
        parameters = [dict(parameter) for parameter in router.get("parameters") or []
                      if parameter.get("name") != RATIO_PARAMETER]
        router["parameters"] = [{"name": RATIO_PARAMETER, "value": repr(ratio), "type": "FLOAT"}, *parameters]
    manifest = {
        "apiVersion": f"{SELDON_GROUP}/{SELDON_VERSION}",
        "kind": "SeldonDeployment",
        "metadata": {"name": name, **_restorable(current)["metadata"]},
        "spec": spec,
    }
    return deploy_seldon(manifest, namespace=namespace, timeout=timeout, api_client=api_client)


def _mutable_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(leaf for child in node.get("children") or [] for leaf in _mutable_nodes(child))]


def rollback_seldon(
    record: SeldonRelease,
    *,
    timeout: float = 600,
    poll_interval: float = 2,
    api_client: Any = None,
    wait: bool = True,
) -> None:
    """Undo ``record``'s deploy: re-apply the spec it replaced, or delete what it created.

    Only while the SeldonDeployment is still the one this deploy left (same uid, same generation):
    if another run deployed since, ``SeldonRollbackConflict`` says so and nothing is touched. With
    ``wait``, returns once the restored spec serves again.
    """
    if record.target != "seldon":
        raise ValueError(f"record of target {record.target!r} cannot be rolled back by the seldon target")
    api = _Api(api_client or _default_api_client(), record.namespace)
    for _ in range(APPLY_ATTEMPTS):
        current = api.get(record.name)
        if current is None:
            if record.previous is not None:
                api.create(_restored(record))
            break
        _require_unchanged(record, current)
        try:
            if record.previous is None:
                api.delete(record.name, uid=current["metadata"].get("uid"), resource_version=_rv(current))
                return
            api.apply(_restored(record), resource_version=_rv(current))
            break
        except _Conflict:
            continue
    else:
        raise SeldonDeployError(
            f"SeldonDeployment {record.namespace}/{record.name} kept changing during the rollback "
            f"({APPLY_ATTEMPTS} resourceVersion conflicts); check it: kubectl -n {record.namespace} get sdep "
            f"{record.name} -o yaml"
        )
    if wait and record.previous is not None:
        _wait_serving(api, record.name, model_uris(_restored(record)), timeout=timeout, poll_interval=poll_interval)


def _require_unchanged(record: SeldonRelease, current: Mapping[str, Any]) -> None:
    metadata = current.get("metadata", {})
    ours = (record.details.get("uid"), record.details.get("generation"))
    now = (metadata.get("uid"), metadata.get("generation"))
    if ours[1] is not None and now != ours:
        raise SeldonRollbackConflict(
            f"not rolled back: SeldonDeployment {record.namespace}/{record.name} changed after this run deployed "
            f"it (generation {now[1]}, uid {now[0]}; this run left generation {ours[1]}, uid {ours[0]}): another "
            "deploy is serving now and rolling back would undo it. Its own smoke test decides about it; see "
            f"kubectl -n {record.namespace} get sdep {record.name} -o yaml"
        )


def _restored(record: SeldonRelease) -> dict[str, Any]:
    previous = record.previous or {}
    return {
        "apiVersion": f"{SELDON_GROUP}/{SELDON_VERSION}",
        "kind": "SeldonDeployment",
        "metadata": {"name": record.name, "namespace": record.namespace, **previous.get("metadata", {})},
        "spec": previous.get("spec", {}),
    }


def _rv(current: Mapping[str, Any]) -> str | None:
    version = current.get("metadata", {}).get("resourceVersion")
    return str(version) if version is not None else None


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


def _wait_serving(api: _Api, name: str, uris: list[str], *, timeout: float, poll_interval: float) -> dict[str, Any]:
    """Poll until the new pods serve: Available for the current generation, and rolled out.

    Seldon's status may still say Available for the *previous* spec right after an apply, and Seldon
    v1 keeps saying Available during the rolling update that follows: when the object carries
    ``metadata.generation`` and the status ``observedGeneration``, a status older than the spec is not
    trusted, and the operator's Deployments must have replaced every old pod (``_rollout_pending``).
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
        pending: list[str] = []
        if fresh and status.get("state") == AVAILABLE:
            pending = _rollout_pending(api.deployments(name), uris)
            if not pending:
                return dict(status)
        if fresh and status.get("state") == FAILED:
            raise SeldonTimeoutError(_not_available(api, name, current, "failed", pending), _stub(api, name))
        if time.monotonic() >= deadline:
            why = f"not serving the new spec after {timeout:g}s" if pending else f"not Available after {timeout:g}s"
            raise SeldonTimeoutError(_not_available(api, name, current, why, pending), _stub(api, name))
        time.sleep(poll_interval)


def _rollout_pending(deployments: list[dict[str, Any]], uris: list[str]) -> list[str]:
    """Why the operator's Deployments do not serve ``uris`` with new pods only yet ([] when they do).

    As ``kubectl rollout status`` judges a Deployment: its controller saw the latest template, every
    replica is updated and available, and no replica of an old template is left.
    """
    if not deployments:
        return ["no Deployments of this SeldonDeployment yet"]
    pending = []
    for deployment in deployments:
        name = deployment.get("metadata", {}).get("name", "?")
        generation = deployment.get("metadata", {}).get("generation")
        status = deployment.get("status") or {}
        wanted = (deployment.get("spec") or {}).get("replicas", 1)
        updated, total, available = (status.get(k, 0) for k in ("updatedReplicas", "replicas", "availableReplicas"))
        if generation is not None and status.get("observedGeneration", 0) < generation:
            pending.append(f"deployment {name}: its controller has not seen generation {generation} yet")
        elif updated < wanted or total > updated or available < wanted:
            pending.append(
                f"deployment {name}: {updated}/{wanted} updated, {available} available, "
                f"{max(total - updated, 0)} old replica(s) left"
            )
    templates = json.dumps([d.get("spec", {}).get("template", {}) for d in deployments])
    pending += [f"no Deployment serves {uri} yet (the operator has not applied the new spec)" for uri in uris
                if uri not in templates]  # fmt: skip
    return pending


def _is_fresh(current: Mapping[str, Any]) -> bool:
    generation = current.get("metadata", {}).get("generation")
    observed = (current.get("status") or {}).get("observedGeneration")
    return generation is None or observed is None or observed >= generation


def _stub(api: _Api, name: str) -> SeldonRelease:
    return SeldonRelease(target="seldon", name=name, endpoint="", namespace=api.namespace)


def _not_available(api: _Api, name: str, current: Mapping[str, Any], why: str, pending: list[str]) -> str:
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
    lines.extend(f"  {reason}" for reason in pending)
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
        self._apps = client.AppsV1Api(api_client)
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

    def apply(self, body: Mapping[str, Any], *, resource_version: str | None) -> dict[str, Any]:
        """Server-side apply ``body`` as field manager ``abflow`` (forcing fields other managers own:
        the deploy step decides the spec), only if the object is still at ``resource_version``.

        The kubernetes client sends merge patches only for custom objects, hence ``call_api``.
        """
        name = body["metadata"]["name"]
        guarded = {**body, "metadata": {**body["metadata"], "resourceVersion": resource_version}}
        if resource_version is None:
            del guarded["metadata"]["resourceVersion"]
        path = f"/apis/{SELDON_GROUP}/{SELDON_VERSION}/namespaces/{self.namespace}/{SELDON_PLURAL}/{name}"
        try:
            response = self.client.call_api(
                path,
                "PATCH",
                query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=guarded,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except self._exception as exc:
            if getattr(exc, "status", None) == 409:
                raise _Conflict() from None
            raise self._translate(exc, "patch", SELDON_PLURAL) from None
        applied: dict[str, Any] = json.loads(response.data)
        return applied

    def delete(self, name: str, *, uid: str | None = None, resource_version: str | None = None) -> None:
        """Delete ``name`` if it is still the object with ``uid`` at ``resource_version`` (when given)."""
        from kubernetes import client

        preconditions = client.V1Preconditions(uid=uid, resource_version=resource_version)
        options = client.V1DeleteOptions(preconditions=preconditions)
        self._seldon("delete", self._custom.delete_namespaced_custom_object, name, missing_ok=True, body=options)

    def deployments(self, name: str) -> list[dict[str, Any]]:
        """The Deployments Seldon's operator made for SeldonDeployment ``name`` (its id label)."""
        items = self._list(self._apps.list_namespaced_deployment, label_selector=f"{SELDON_ID_LABEL}={name}")
        return [d for d in items if (d.get("metadata", {}).get("labels") or {}).get(SELDON_ID_LABEL) == name]

    def _seldon(self, verb: str, method: Any, *args: Any, missing_ok: bool = False, **options: Any) -> Any:
        """One call on the namespace's seldondeployments; a 404 is ``None`` where ``missing_ok``."""
        try:
            return method(
                SELDON_GROUP,
                SELDON_VERSION,
                self.namespace,
                SELDON_PLURAL,
                *args,
                _request_timeout=REQUEST_TIMEOUT_S,
                **options,
            )
        except self._exception as exc:
            if missing_ok and getattr(exc, "status", None) == 404:
                return None
            if getattr(exc, "status", None) == 409:
                raise _Conflict() from None  # a uid/resourceVersion precondition: the caller reads again
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
        resource = next(r for r in ("pods", "events", "deployments") if r.rstrip("s") in method.__name__)
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
            return SeldonForbiddenError(_forbidden_advice(verb, resource, self.namespace, message))
        if status == 401:
            return SeldonDeployError(
                f"unauthorized: the cluster rejected the credentials; refresh your kubeconfig login. {message}"
            )
        return SeldonDeployError(f"{verb} {resource} in namespace {self.namespace!r} failed: HTTP {status}: {message}")


_SUBJECT = re.compile(r'User "(system:serviceaccount:([^:"]+):[^"]+)"')
_GROUPS = {SELDON_PLURAL: SELDON_GROUP, "deployments": "apps"}


def _forbidden_advice(verb: str, resource: str, namespace: str, server_said: str) -> str:
    """What a 403 means and how to fix it without touching any SeldonDeployment: check the one verb
    with ``kubectl auth can-i``, then apply abflow's Role and RoleBinding alone."""
    group = _GROUPS.get(resource, "")
    qualified = f"{resource}.{group}" if group else resource
    found = _SUBJECT.search(server_said)
    runner_namespace = found.group(2) if found else "kubeflow"
    subject = found.group(1) if found else f"system:serviceaccount:{runner_namespace}:{DEFAULT_SERVICE_ACCOUNT}"
    return (
        f"forbidden: cannot {verb} {qualified} in namespace {namespace!r} (the service account needs verb "
        f"{verb!r} on {qualified!r}). Check: kubectl auth can-i {verb} {qualified} -n {namespace} --as {subject}. "
        f"Grant abflow's Role {ROLE_NAME!r} alone — RBAC only, it leaves every SeldonDeployment as it is: "
        f"abflow render --rbac-only --namespace {namespace} --runner-namespace {runner_namespace} | kubectl apply -f - "
        f"(or kubectl apply -f manifests/rbac/ for namespaces seldon and kubeflow). Server said: {server_said}"
    )


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
