"""Start and schedule the compiled pipeline on a Kubeflow Pipelines cluster (v2beta1 REST API).

Plain HTTP calls rather than ``kfp.Client``, so the exact payloads are ours and testable, and three
traps of KFP's own tooling are closed:

* **Typed parameters.** ``kfp run create``/``kfp recurring-run create`` send ``--param`` values as
  raw strings, and a ``float`` parameter then fails at run time. Here values are typed by the
  parameter types the pipeline spec declares (``ratio_a=0.5`` → 0.5, ``smoke_requests=200`` → 200,
  ``true`` → True), and an unknown name or an unparseable value fails before anything is sent.
* **Caching off.** A nightly retrain with unchanged inputs would otherwise replay yesterday's
  cached steps. Caching is switched off in the spec itself, on every task of every DAG (KFP's
  client only touches the root DAG, and ignores the flag for stored pipelines).
* **Pipeline and version ids.** A recurring run needs both; ``schedule`` uploads the pipeline (or a
  version named by the spec's content hash, reused when unchanged) and fills them in.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import yaml

API = "/apis/v2beta1"
TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_EXAMPLE = "'0 0 2 * * *' = 02:00 daily"
EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")
REQUEST_TIMEOUT_S = 30.0


class RemoteError(RuntimeError):
    """Talking to KFP failed, or the request would be wrong; the message says what to change."""


class ParameterError(RemoteError):
    """A ``--param`` names no pipeline parameter, or its value does not parse as the declared type."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    url: str
    state: str


@dataclass(frozen=True)
class ScheduleInfo:
    recurring_run_id: str
    url: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    trigger: dict[str, Any]


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its spec, and the platform spec KFP puts in a second YAML document."""

    pipeline_spec: dict[str, Any]
    platform_spec: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.pipeline_spec.get("pipelineInfo", {}).get("name") or "pipeline")

    def as_run_spec(self) -> dict[str, Any]:
        """The ``pipeline_spec`` field of a run: the spec alone, or both specs when there are two."""
        if self.platform_spec:
            return {"pipeline_spec": self.pipeline_spec, "platform_spec": self.platform_spec}
        return self.pipeline_spec

    def to_yaml(self) -> bytes:
        documents = [self.pipeline_spec, *([self.platform_spec] if self.platform_spec else [])]
        text: str = yaml.safe_dump_all(documents, sort_keys=True)
        return text.encode()

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.as_run_spec(), sort_keys=True).encode()).hexdigest()


def load_package(path: str | Path) -> PipelinePackage:
    """Read a pipeline YAML compiled by ``kfp.compiler`` (``abflow compile``)."""
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise RemoteError(f"cannot read pipeline YAML {str(path)!r}: {exc}; compile it with abflow compile") from exc
    if not documents or not isinstance(documents[0], dict) or "root" not in documents[0]:
        raise RemoteError(
            f"{str(path)!r} is not a compiled KFP v2 pipeline (no 'root'): compile it with abflow compile"
        )
    platform: dict[str, Any] = {}
    for document in documents[1:]:
        platform.update(document)
    return PipelinePackage(documents[0], platform or None)


def without_caching(package: PipelinePackage) -> PipelinePackage:
    """The same package with ``enableCache: false`` on every task, nested DAGs included."""
    spec = copy.deepcopy(package.pipeline_spec)
    dags = [spec.get("root", {}).get("dag", {})]
    dags += [component.get("dag", {}) for component in spec.get("components", {}).values()]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {**task.get("cachingOptions", {}), "enableCache": False}
    return PipelinePackage(spec, package.platform_spec)


def declared_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameter name → its declaration (``parameterType``, ``defaultValue``, ``isOptional``)."""
    root = spec.get("pipeline_spec", spec).get("root", {})
    parameters: dict[str, dict[str, Any]] = root.get("inputDefinitions", {}).get("parameters", {})
    return parameters


def parse_param(option: str, spec: Mapping[str, Any]) -> tuple[str, Any]:
    """Split ``key=value`` and type the value as the spec declares ``key``."""
    key, sep, value = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"--param expects key=value (e.g. ratio_a=0.3), got {option!r}")
    return key, typed_value(key, value, spec)


def typed_value(key: str, value: Any, spec: Mapping[str, Any]) -> Any:
    declared = declared_parameters(spec)
    if key not in declared:
        close = difflib.get_close_matches(key, declared, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(
            f"unknown pipeline parameter {key!r}{hint}; the pipeline declares: {', '.join(sorted(declared))}"
        )
    kind = declared[key].get("parameterType", "STRING")
    try:
        return _convert(value, kind)
    except (ValueError, TypeError) as exc:
        raise ParameterError(f"parameter {key!r} is {_TYPE_WORDS.get(kind, kind)}: {exc}") from None


def typed_params(params: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters typed by the spec; required ones (no default, not optional) must be given."""
    typed = {key: typed_value(key, value, spec) for key, value in params.items()}
    missing = [
        name
        for name, declaration in declared_parameters(spec).items()
        if name not in typed and "defaultValue" not in declaration and not declaration.get("isOptional")
    ]
    if missing:
        raise ParameterError(f"the pipeline needs parameter(s) {', '.join(missing)}: pass --param NAME=VALUE")
    return typed


_TYPE_WORDS = {
    "NUMBER_DOUBLE": "a number",
    "NUMBER_INTEGER": "an integer",
    "BOOLEAN": "a boolean",
    "STRING": "a string",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


def _convert(value: Any, kind: str) -> Any:
    if kind == "STRING":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"got {value!r}; use true or false")
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"got {value!r}; use a whole number such as 200")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except ValueError:
            raise ValueError(f"got {value!r}; use a whole number such as 200") from None
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise ValueError(f"got {value!r}; use a number such as 0.5")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"got {value!r}; use a number such as 0.5") from None
        if not math.isfinite(number):
            raise ValueError(f"got {value!r}; use a finite number")
        return number
    if kind in ("LIST", "STRUCT"):
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, list if kind == "LIST" else dict):
            example = "[1, 2]" if kind == "LIST" else '{"k": 1}'
            raise ValueError(f"got {value!r}; use JSON such as {example}")
        return parsed
    raise ValueError(f"abflow cannot type parameters of KFP type {kind!r}")


_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_NAMES = {
    4: ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    5: ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"),
}


def parse_cron(cron: str) -> str:
    """Check a KFP cron expression: six fields, seconds first (or a descriptor such as @daily)."""
    text = " ".join(cron.split())
    if text.startswith("@"):
        if text in CRON_DESCRIPTORS:
            return text
        hint = "; for an interval use --every (e.g. --every 24h)" if text.startswith("@every") else ""
        raise RemoteError(f"unknown cron descriptor {text!r}: use one of {', '.join(CRON_DESCRIPTORS)}{hint}")
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        hint = f"; did you mean '0 {text}'?" if len(fields) == 5 else ""
        raise RemoteError(f"cron needs 6 fields (seconds first): {CRON_EXAMPLE}; got {len(fields)} in {cron!r}{hint}")
    for index, field in enumerate(fields):
        _check_cron_field(field, index)
    return text


def _check_cron_field(field: str, index: int) -> None:
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES.get(index, ())
    where = f"cron {_CRON_FIELDS[index]} field {field!r}"
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise RemoteError(f"{where}: step {step!r} must be a positive whole number ({CRON_EXAMPLE})")
        if base in ("*", "?"):
            continue
        for bound in base.split("-", 1):
            value = names.index(bound.upper()) + (1 if index == 4 else 0) if bound.upper() in names else None
            if value is None and bound.isdigit():
                value = int(bound)
            if value is None or not low <= value <= high:
                raise RemoteError(f"{where}: {bound!r} is not in {low}-{high} ({CRON_EXAMPLE})")


def parse_every(every: str) -> int:
    """``24h``, ``30m``, ``1h30m``, ``2d``, ``90s`` → seconds, for KFP's periodic trigger."""
    text = every.strip().lower()
    parts = re.findall(r"(\d+)([smhd])", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise RemoteError(f"--every expects a duration such as 24h, 30m, 1h30m or 2d, got {every!r}")
    seconds = sum(int(number) * EVERY_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise RemoteError(f"--every must be longer than zero, got {every!r}")
    return seconds


class KfpApi:
    """The handful of v2beta1 calls abflow makes, over plain HTTP with JSON bodies."""

    def __init__(self, host: str, *, token: str | None = None, namespace: str | None = None) -> None:
        if not host:
            raise RemoteError(
                "no KFP host: pass --host (e.g. http://localhost:8080 after "
                "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80) or set KF_PIPELINES_ENDPOINT"
            )
        self.host = host.rstrip("/")
        self.token = token
        self.namespace = namespace

    def ui_url(self, fragment: str) -> str:
        return f"{self.host}/#/{fragment}"

    def ensure_experiment(self, name: str) -> str:
        found = self._find("experiments", name)
        if found is not None:
            return str(found["experiment_id"])
        body: dict[str, Any] = {"display_name": name}
        if self.namespace:
            body["namespace"] = self.namespace
        return str(self.call("POST", f"{API}/experiments", body)["experiment_id"])

    def ensure_pipeline_version(self, package: PipelinePackage, name: str) -> tuple[str, str]:
        """(pipeline_id, pipeline_version_id) of ``package`` stored as pipeline ``name``.

        Versions are named ``<name>-<sha256[:12]>`` of their spec, so scheduling an unchanged
        pipeline again reuses its version instead of piling up identical ones. (Creating a pipeline
        also stores KFP's default version, named like the pipeline; abflow always schedules a
        content-named one.)"""
        version_name = f"{name}-{package.content_hash()[:12]}"
        pipeline = self._find("pipelines", name)
        if pipeline is None:
            query = {"name": name, "display_name": name, **({"namespace": self.namespace} if self.namespace else {})}
            pipeline = self.upload("pipelines/upload", query, package)
        pipeline_id = str(pipeline["pipeline_id"])
        version = self._find(f"pipelines/{pipeline_id}/versions", version_name)
        if version is None:
            query = {"name": version_name, "display_name": version_name, "pipelineid": pipeline_id}
            version = self.upload("pipelines/upload_version", query, package)
        return pipeline_id, str(version["pipeline_version_id"])

    def upload(self, endpoint: str, query: Mapping[str, str], package: PipelinePackage) -> dict[str, Any]:
        files = {"uploadfile": (f"{query['name']}.yaml", package.to_yaml(), "application/x-yaml")}
        return self._send("POST", f"{API}/{endpoint}", params=query, files=files)

    def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        return self._send(method, path, params=params, json=body)

    def _find(self, collection: str, display_name: str) -> dict[str, Any] | None:
        predicate = {"key": "display_name", "operation": "EQUALS", "string_value": display_name}
        query = {"filter": json.dumps({"predicates": [predicate]})}
        if self.namespace and collection in ("experiments", "pipelines"):
            query["namespace"] = self.namespace
        listed = self.call("GET", f"{API}/{collection}", params=query)
        key = {"experiments": "experiments", "pipelines": "pipelines"}.get(collection, "pipeline_versions")
        matches = [item for item in listed.get(key) or [] if item.get("display_name") == display_name]
        return matches[0] if matches else None

    def _send(self, method: str, path: str, **request: Any) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = requests.request(method, self.host + path, headers=headers, timeout=REQUEST_TIMEOUT_S, **request)
        except requests.RequestException as exc:
            raise RemoteError(
                f"cannot reach KFP at {self.host}: {exc}; check --host "
                "(e.g. kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080)"
            ) from None
        if response.status_code >= 400:
            detail = response.text
            with contextlib.suppress(ValueError, AttributeError):
                detail = response.json().get("message") or detail
            hint = " (check --token / KFP_TOKEN)" if response.status_code in (401, 403) else ""
            raise RemoteError(f"KFP {method} {path} failed: HTTP {response.status_code}: {detail}{hint}")
        result: dict[str, Any] = response.json() if response.content.strip() else {}
        return result


def submit(
    package_path: str | Path,
    *,
    host: str,
    experiment: str,
    params: Mapping[str, Any],
    wait: bool,
    timeout: float = 3600,
    poll_interval: float = 5,
    service_account: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> RunInfo:
    """Start one run of the compiled pipeline, caching off; with ``wait``, until it finishes."""
    package = without_caching(load_package(package_path))
    typed = typed_params(params, package.pipeline_spec)
    api = KfpApi(host, token=token, namespace=namespace)
    experiment_id = api.ensure_experiment(experiment)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    body: dict[str, Any] = {
        "display_name": f"{package.name} {stamp}",
        "experiment_id": experiment_id,
        "pipeline_spec": package.as_run_spec(),
        "runtime_config": {"parameters": typed},
    }
    if service_account:
        body["service_account"] = service_account
    run = api.call("POST", f"{API}/runs", body)
    run_id = str(run["run_id"])
    url = api.ui_url(f"runs/details/{run_id}")
    state = str(run.get("state") or "PENDING")
    if wait:
        state = _wait_for_run(api, run_id, url, timeout=timeout, poll_interval=poll_interval)
    return RunInfo(run_id=run_id, url=url, state=state)


def _wait_for_run(api: KfpApi, run_id: str, url: str, *, timeout: float, poll_interval: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        run = api.call("GET", f"{API}/runs/{run_id}")
        state = str(run.get("state") or "RUNTIME_STATE_UNSPECIFIED")
        if state in TERMINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise RemoteError(f"run {run_id} still {state} after {timeout:g}s; follow it at {url}")
        time.sleep(poll_interval)


def schedule(
    package_path: str | Path,
    *,
    host: str,
    experiment: str,
    name: str,
    cron: str | None,
    every: str | None,
    params: Mapping[str, Any],
    max_concurrency: int = 1,
    catchup: bool = False,
    service_account: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> ScheduleInfo:
    """Create a recurring run of the pipeline (stored as pipeline ``name``), caching off.

    Exactly one of ``cron`` (KFP's 6 fields, seconds first) or ``every`` (``24h``) is required.
    ``max_concurrency`` 1 and no catch-up by default: a retrain that outlasts its interval, or a
    cluster that was down for a week, must not start a pile of overlapping retrains.
    """
    if (cron is None) == (every is None):
        raise RemoteError(f"give exactly one of --cron ({CRON_EXAMPLE}) or --every (e.g. 24h)")
    if max_concurrency < 1:
        raise RemoteError(f"max_concurrency must be at least 1, got {max_concurrency}")
    trigger = (
        {"cron_schedule": {"cron": parse_cron(cron)}}
        if cron is not None
        else {"periodic_schedule": {"interval_second": parse_every(every or "")}}
    )
    package = without_caching(load_package(package_path))
    typed = typed_params(params, package.pipeline_spec)
    api = KfpApi(host, token=token, namespace=namespace)
    experiment_id = api.ensure_experiment(experiment)
    pipeline_id, version_id = api.ensure_pipeline_version(package, name)
    body: dict[str, Any] = {
        "display_name": name,
        "description": f"abflow schedule of {package.name}",
        "experiment_id": experiment_id,
        "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version_id},
        "runtime_config": {"parameters": typed},
        "trigger": trigger,
        "max_concurrency": max_concurrency,
        "no_catchup": not catchup,
        "mode": "ENABLE",
    }
    if service_account:
        body["service_account"] = service_account
    created = api.call("POST", f"{API}/recurringruns", body)
    recurring_id = str(created["recurring_run_id"])
    return ScheduleInfo(
        recurring_run_id=recurring_id,
        url=api.ui_url(f"recurringrun/details/{recurring_id}"),
        pipeline_id=pipeline_id,
        pipeline_version_id=version_id,
        experiment_id=experiment_id,
        trigger=trigger,
    )
