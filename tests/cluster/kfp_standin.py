"""A stand-in for the Kubeflow Pipelines API server (v2beta1 REST), on 127.0.0.1.

No KFP backend can run here. This server answers the calls abflow makes the way the real
``ml-pipeline`` API server does (same paths, field names, list filters, multipart uploads, run
states) and records every request, so tests can assert on the exact payloads. It keeps its objects
in memory and runs nothing: a run's state follows the script a test gives it.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

API = "/apis/v2beta1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, or the uploaded YAML documents for multipart uploads


@dataclass
class KfpState:
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_script: list[str] = field(default_factory=lambda: ["RUNNING", "SUCCEEDED"])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]


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
        body = self._body(raw)
        with self.state.lock:
            self.state.requests.append(Recorded(method, parsed.path, query, body))
            try:
                status, answer = self._route(method, parsed.path, query, body)
            except KeyError as missing:
                status, answer = 404, {"code": 5, "message": f"{missing} not found"}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self, raw: bytes) -> Any:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw
            )
            files = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
            upload = files["uploadfile"].get_payload(decode=True)
            return list(yaml.safe_load_all(upload))
        return json.loads(raw) if raw else None

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        s = self.state
        parts = path.removeprefix(API).strip("/").split("/")
        match method, parts:
            case "GET", ["experiments"]:
                return 200, {"experiments": _filtered(s.experiments.values(), query)}
            case "POST", ["experiments"]:
                experiment = {**body, "experiment_id": _new_id(), "storage_state": "AVAILABLE"}
                s.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            case "GET", ["pipelines"]:
                return 200, {"pipelines": _filtered(s.pipelines.values(), query)}
            case "POST", ["pipelines", "upload"]:
                if any(p["display_name"] == query["display_name"] for p in s.pipelines.values()):
                    return 409, {"code": 6, "message": "pipeline with this name already exists"}
                pipeline = {"pipeline_id": _new_id(), "display_name": query["display_name"], "name": query["name"]}
                s.pipelines[pipeline["pipeline_id"]] = pipeline
                self._add_version(pipeline["pipeline_id"], query["name"], body)  # KFP's default version
                return 200, pipeline
            case "POST", ["pipelines", "upload_version"]:
                pipeline_id = s.pipelines[query["pipelineid"]]["pipeline_id"]
                return 200, self._add_version(pipeline_id, query["name"], body)
            case "GET", ["pipelines", pipeline_id, "versions"]:
                versions = [
                    v for v in s.versions.values() if v["pipeline_id"] == s.pipelines[pipeline_id]["pipeline_id"]
                ]
                return 200, {"pipeline_versions": _filtered(versions, query), "total_size": len(versions)}
            case "POST", ["runs"]:
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


def _new_id() -> str:
    return str(uuid.uuid4())


def _filtered(items: Any, query: dict[str, str]) -> list[dict[str, Any]]:
    """The v2beta1 list ``filter``: the EQUALS predicate on display_name that abflow sends."""
    items = list(items)
    if "filter" not in query:
        return items
    for predicate in json.loads(query["filter"])["predicates"]:
        assert predicate["operation"] == "EQUALS", predicate
        value = predicate.get("string_value", predicate.get("stringValue"))
        items = [item for item in items if item.get(predicate["key"]) == value]
    return items


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
