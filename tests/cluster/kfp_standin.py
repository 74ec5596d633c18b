"""A stand-in for the Kubeflow Pipelines API server (v2beta1 REST), on 127.0.0.1, for ``kfp.Client``.

No KFP backend can run here (it needs a cluster: Argo, MySQL, object storage). This server answers
the calls ``kfp.Client`` makes for abflow the way the real ``ml-pipeline`` API server does — the paths
of kfp's generated ``kfp_server_api`` client, its query parameters, multipart uploads, list filters
and run states — and records every request so tests can assert on the exact payloads.

It is stricter than the real server in one way, on purpose: every JSON body is checked against the
``kfp_server_api`` model it must be (``V2beta1Run``, ``V2beta1RecurringRun``, ``V2beta1Experiment``),
field names and types, and an unknown field is a 400. The real server drops unknown fields silently
(kubeflow/pipelines#11662), which is how a misspelt field would go unnoticed there. It runs nothing:
a run's state follows the script a test gives it.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kfp_server_api
import yaml

API = "/apis/v2beta1"
UPLOAD_QUERY = {"name", "display_name", "description", "namespace", "tags"}
UPLOAD_VERSION_QUERY = {"name", "display_name", "pipelineid", "description", "tags"}
LIST_QUERY = {"page_token", "page_size", "sort_by", "filter", "namespace", "resource_reference_key.type"}


class BadRequest(Exception):
    """A request the real API would refuse, or a body that does not fit its model."""


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or the uploaded YAML documents for multipart uploads
    filename: str = ""


@dataclass
class KfpState:
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_script: list[str] = field(default_factory=lambda: ["RUNNING", "SUCCEEDED"])
    refusals: dict[str, tuple[int, str]] = field(default_factory=dict)
    """``"METHOD /path"`` → (HTTP status, message) the server answers instead, as a real one may."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def writes(self) -> list[Recorded]:
        return [r for r in self.requests if r.method != "GET"]


def check_model(value: Any, type_name: str, where: str) -> None:
    """Check ``value`` against a ``kfp_server_api`` type as its generated client declares it."""
    if type_name == "object":
        return
    if match := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            raise BadRequest(f"{where}: expected a list, got {value!r}")
        for i, item in enumerate(value):
            check_model(item, match.group(1), f"{where}[{i}]")
        return
    if match := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            raise BadRequest(f"{where}: expected an object, got {value!r}")
        for key, item in value.items():
            check_model(item, match.group(1), f"{where}.{key}")
        return
    primitive = {"str": (str, int), "int": (int,), "bool": (bool,), "float": (float, int), "datetime": (str,)}
    if type_name in primitive:
        # proto3 JSON carries int64 fields (declared 'str' by the generator) as numbers or strings.
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, primitive[type_name]):
            raise BadRequest(f"{where}: expected {type_name}, got {value!r}")
        return
    model = getattr(kfp_server_api.models, type_name)
    allowed = getattr(model, "allowable_values", None)
    if allowed is not None:
        if value not in allowed:
            raise BadRequest(f"{where}: {value!r} is not one of {allowed}")
        return
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected a {type_name} object, got {value!r}")
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            raise BadRequest(f"{where}: unknown field {key!r} of {type_name}")
        check_model(item, model.openapi_types[by_json_name[key]], f"{where}.{key}")


class _Handler(BaseHTTPRequestHandler):
    state: KfpState

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the recorded requests are the log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.state.lock:
            try:
                body, filename = self._body(raw)
                self.state.requests.append(Recorded(method, parsed.path, query, body, filename))
                refusal = self.state.refusals.get(f"{method} {parsed.path}")
                if refusal is not None:
                    status, answer = refusal[0], {"code": 7, "message": refusal[1]}
                else:
                    status, answer = self._route(method, parsed.path, query, body, filename)
            except BadRequest as bad:
                status, answer = 400, {"code": 3, "message": str(bad)}
            except KeyError as missing:
                status, answer = 404, {"code": 5, "message": f"{missing} not found"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self, raw: bytes) -> tuple[Any, str]:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw
            )
            files = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
            if set(files) != {"uploadfile"}:
                raise BadRequest(f"the upload form has one field, uploadfile; got {sorted(files)}")
            upload = files["uploadfile"]
            return list(yaml.safe_load_all(upload.get_payload(decode=True))), upload.get_filename() or ""
        return (json.loads(raw) if raw else None), ""

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, filename: str) -> tuple[int, Any]:
        s = self.state
        parts = path.removeprefix(API).strip("/").split("/")
        match method, parts:
            case "GET", ["healthz"]:
                return 200, {"multi_user": False}
            case "GET", ["experiments"]:
                _check_query(query, LIST_QUERY)
                return 200, _listed("experiments", s.experiments.values(), query)
            case "POST", ["experiments"]:
                check_model(body, "V2beta1Experiment", "experiment")
                experiment = {**body, "experiment_id": _new_id(), "storage_state": "AVAILABLE"}
                s.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            case "GET", ["pipelines"]:
                _check_query(query, LIST_QUERY)
                return 200, _listed("pipelines", s.pipelines.values(), query)
            case "POST", ["pipelines", "upload"]:
                _check_upload(query, UPLOAD_QUERY, filename)
                display_name = query.get("display_name") or query["name"]
                if any(p["display_name"] == display_name for p in s.pipelines.values()):
                    return 409, {"code": 6, "message": "pipeline with this name already exists"}
                pipeline = {"pipeline_id": _new_id(), "display_name": display_name, "name": query["name"]}
                s.pipelines[pipeline["pipeline_id"]] = pipeline
                self._add_version(pipeline["pipeline_id"], query["name"], body)  # KFP's default version
                return 200, pipeline
            case "POST", ["pipelines", "upload_version"]:
                _check_upload(query, UPLOAD_VERSION_QUERY, filename)
                pipeline_id = s.pipelines[query["pipelineid"]]["pipeline_id"]
                return 200, self._add_version(pipeline_id, query.get("display_name") or query["name"], body)
            case "GET", ["pipelines", pipeline_id, "versions"]:
                _check_query(query, LIST_QUERY)
                versions = [
                    v for v in s.versions.values() if v["pipeline_id"] == s.pipelines[pipeline_id]["pipeline_id"]
                ]
                return 200, _listed("pipeline_versions", versions, query)
            case "POST", ["runs"]:
                check_model(body, "V2beta1Run", "run")
                if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
                    return 400, {"code": 3, "message": "a run needs pipeline_spec or pipeline_version_reference"}
                run = {**body, "run_id": _new_id(), "state": "PENDING", "script": list(s.run_script)}
                s.runs[run["run_id"]] = run
                return 200, {k: v for k, v in run.items() if k != "script"}
            case "GET", ["runs", run_id]:
                run = s.runs[run_id]
                if run["script"]:
                    run["state"] = run["script"].pop(0)
                return 200, {k: v for k, v in run.items() if k != "script"}
            case "POST", ["recurringruns"]:
                check_model(body, "V2beta1RecurringRun", "recurring_run")
                reference = body.get("pipeline_version_reference") or {}
                if not reference.get("pipeline_id") or reference.get("pipeline_version_id") not in s.versions:
                    return 400, {"code": 3, "message": "recurring run needs pipeline_id and pipeline_version_id"}
                recurring = {**body, "recurring_run_id": _new_id(), "status": "ENABLED"}
                s.recurring_runs[recurring["recurring_run_id"]] = recurring
                return 200, recurring
        return 404, {"code": 5, "message": f"no route {method} {path}"}

    def _add_version(self, pipeline_id: str, name: str, documents: list[Any]) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": _new_id(),
            "display_name": name,
            "name": name,
            "pipeline_spec": documents[0],
        }
        self.state.versions[version["pipeline_version_id"]] = version
        return version


def _check_query(query: dict[str, str], allowed: set[str]) -> None:
    unknown = set(query) - allowed
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {sorted(unknown)}")


def _check_upload(query: dict[str, str], allowed: set[str], filename: str) -> None:
    _check_query(query, allowed)
    if not query.get("name"):
        raise BadRequest("an upload needs ?name=")
    if not filename.endswith((".yaml", ".yml", ".zip", ".tar.gz", ".tgz")):
        raise BadRequest(f"unexpected file type: {filename!r} (the server reads .yaml, .zip, .tar.gz)")


def _new_id() -> str:
    return str(uuid.uuid4())


def _listed(key: str, items: Any, query: dict[str, str]) -> dict[str, Any]:
    """The v2beta1 list answer, after the ``filter`` predicates: EQUALS, by name or by its enum number 1
    (proto3 JSON takes either; ``kfp.Client`` sends the number)."""
    items = list(items)
    for predicate in json.loads(query["filter"])["predicates"] if query.get("filter") else []:
        if predicate["operation"] not in ("EQUALS", 1):
            raise BadRequest(f"the stand-in knows the EQUALS filter only, got {predicate}")
        value = predicate.get("stringValue", predicate.get("string_value"))
        items = [item for item in items if item.get(predicate["key"]) == value]
    return {key: items, "total_size": len(items)}


@contextmanager
def kfp_standin() -> Iterator[tuple[str, KfpState]]:
    """Serve the stand-in on a free port; yields (host URL, state)."""
    state = KfpState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
