"""The ``local`` deploy target: run the A/B graph as processes on this machine, one release at a time.

A pipeline run must never leave users worse off than before it, so a deploy is ordered to keep the
running endpoint as long as possible: both models are loaded here first (a corrupt or version-skewed
artifact fails before anything running is touched), the graph is written into a new numbered release,
and only then is the current release stopped and the new one started on the same port (the port is
the URL users and the smoke test hold). If the new release does not become ready, the previous one is
started again before the error is raised. The last two releases are kept as pointers so the smoke
step can roll back.

Layout under ``state_root``::

    releases/<n>/graph.json     the SeldonDeployment this release runs (parses back to the graph)
    releases/<n>/release.json   its DeploymentRecord
    serving/                    the running endpoint's state (pid, URL, log): one endpoint runs at a
                                time, and this is where `abflow status` / `abflow down` look
    current.json, previous.json DeploymentRecords, each replaced atomically
    .lock                       serialises deploys and rollbacks into this state root
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from serving.graph import GraphError, ab_graph, to_seldon_deployment
from serving.model import ModelLoadError, load_model
from serving.supervisor import DetachError, endpoint_status, start_detached, stop_detached

TARGET = "local"
DEFAULT_ROUTER_NAME = "random-ab-test"
DEFAULT_ARM_NAMES = ("classifier-1", "classifier-2")
RELEASES = "releases"
GRAPH_FILE = "graph.json"
RELEASE_FILE = "release.json"
SERVING_DIR = "serving"
CURRENT = "current.json"
PREVIOUS = "previous.json"
LOCK = ".lock"
# Restarting a release that served before gets a full wait whatever the caller allowed the new one:
# a short ready_timeout is a bet about the new release, not a reason to leave users with no endpoint.
RESTORE_READY_TIMEOUT = 30.0


class DeployError(RuntimeError):
    """A deployment or rollback could not complete; the message says what still serves and what to do."""


@dataclass(frozen=True)
class DeploymentRecord:
    """What a deploy put in place, enough to smoke-test it and to start it again on rollback.

    ``previous_release`` is the release this one replaced (``None`` for the first), i.e. where a
    rollback goes.
    """

    target: str
    name: str
    release: int
    endpoint: str
    graph_path: str
    model_a_uri: str
    model_b_uri: str
    ratio_a: float
    previous_release: int | None
    router_name: str
    arm_names: tuple[str, str]
    host: str
    port: int
    state_root: str
    serving_state_dir: str
    deployed_at: str

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["arm_names"] = list(self.arm_names)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeploymentRecord:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("target") != TARGET:
            raise DeployError(f"not a local deployment record: {str(text)[:200]!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - raw.keys())
        if missing:
            raise DeployError(f"deployment record lacks {missing}: it was written by another abflow version; "
                              "redeploy to write a fresh one")
        arm_a, arm_b = raw["arm_names"]
        return cls(**{**{k: raw[k] for k in fields}, "arm_names": (arm_a, arm_b)})

    def models(self) -> dict[str, str]:
        """The ``--model NODE=URI`` mapping the serving runtime takes."""
        return {self.arm_names[0]: self.model_a_uri, self.arm_names[1]: self.model_b_uri}


def deploy_local(*, model_a_uri: str, model_b_uri: str, ratio_a: float, state_root: Path, port: int = 8000,
                 name: str = "iris-ab", host: str = "127.0.0.1", ready_timeout: float = 30.0) -> DeploymentRecord:
    """Replace the running A/B graph under ``state_root`` with one serving ``model_a_uri`` (arm A,
    ``ratio_a`` of traffic) and ``model_b_uri``; see the module docstring for the order of steps.

    Raises ``ValueError`` for a bad ``ratio_a``/``port``, ``ModelLoadError`` for an artifact that
    cannot be served (nothing running was touched), ``DeployError`` when the new release did not
    start (the previous one was restarted first).
    """
    _check_ratio(ratio_a)
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    model_a_uri, model_b_uri = _absolute_uri(model_a_uri), _absolute_uri(model_b_uri)
    _preflight({"arm A (classifier-1)": model_a_uri, "arm B (classifier-2)": model_b_uri}, state_root)
    try:
        graph = ab_graph(name, model_a_uri, model_b_uri, ratio_a,
                         router_name=DEFAULT_ROUTER_NAME, arm_names=DEFAULT_ARM_NAMES)
    except GraphError as exc:
        raise ValueError(f"cannot build the A/B graph: {exc}") from exc

    state_root = state_root.resolve()
    with _locked(state_root):
        current = current_deployment(state_root)
        release = _next_release(state_root)
        folder = state_root / RELEASES / str(release)
        folder.mkdir(parents=True)
        graph_path = folder / GRAPH_FILE
        _write_atomic(graph_path, json.dumps(to_seldon_deployment(graph), indent=2))
        planned = DeploymentRecord(
            target=TARGET, name=name, release=release, endpoint=f"http://{host}:{port}",
            graph_path=str(graph_path), model_a_uri=model_a_uri, model_b_uri=model_b_uri,
            ratio_a=float(ratio_a), previous_release=current.release if current else None,
            router_name=DEFAULT_ROUTER_NAME, arm_names=DEFAULT_ARM_NAMES, host=host, port=port,
            state_root=str(state_root), serving_state_dir=str(state_root / SERVING_DIR),
            deployed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if current is not None:
            stop_detached(Path(current.serving_state_dir))
        try:
            started = _start(planned, ready_timeout)
        except DeployError as exc:
            raise DeployError(f"deploy: release {release} did not start; {_restore(current, ready_timeout)}. "
                              f"Cause: {exc}") from exc
        _write_atomic(folder / RELEASE_FILE, started.to_json())
        if current is not None:
            _write_atomic(state_root / PREVIOUS, current.to_json())
        _write_atomic(state_root / CURRENT, started.to_json())
        return started


def rollback_local(state_root: Path, *, expected_release: int | None = None,
                   ready_timeout: float = 30.0) -> DeploymentRecord | None:
    """Put the previous release back on the same port and swap the pointers (so a second rollback
    undoes the first). With no previous release the endpoint is stopped and ``None`` returned.

    ``expected_release`` guards the pipeline's smoke step: if another run deployed in the meantime,
    rolling back would discard *its* release, so this refuses instead.
    """
    state_root = state_root.resolve()
    with _locked(state_root):
        current = current_deployment(state_root)
        if current is None:
            raise DeployError(f"rollback: nothing is deployed under {state_root}; deploy first")
        if expected_release is not None and current.release != expected_release:
            raise DeployError(
                f"rollback: release {expected_release} is no longer current under {state_root} "
                f"(release {current.release} is, deployed {current.deployed_at}); not rolling back "
                "another run's deployment: check `abflow status` and roll back by hand if intended")
        previous = _read_record(state_root / PREVIOUS)
        stop_detached(Path(current.serving_state_dir))
        if previous is None:
            _write_atomic(state_root / PREVIOUS, current.to_json())
            (state_root / CURRENT).unlink()
            return None
        target = dataclasses.replace(previous, previous_release=current.release, host=current.host,
                                     port=current.port)
        try:
            restored = _start(target, ready_timeout)
        except DeployError as exc:
            raise DeployError(f"rollback: release {previous.release} did not start; "
                              f"{_restore(current, ready_timeout)}. Cause: {exc}") from exc
        _write_atomic(state_root / PREVIOUS, current.to_json())
        _write_atomic(state_root / CURRENT, restored.to_json())
        return restored


def current_deployment(state_root: Path) -> DeploymentRecord | None:
    """The release the endpoint should be serving (whether or not its processes are up right now)."""
    return _read_record(state_root / CURRENT)


def stop_local(state_root: Path, timeout: float = 10.0) -> bool:
    """Stop the endpoint under ``state_root`` if it runs; the pointers stay, so a later deploy or
    rollback knows the history. Returns whether something was stopped."""
    return stop_detached(state_root / SERVING_DIR, timeout=timeout)


def local_endpoint_status(state_root: Path) -> dict[str, Any] | None:
    """The serving runtime's status of the current release, for ``abflow status``-style reporting."""
    current = current_deployment(state_root)
    return endpoint_status(Path(current.serving_state_dir)) if current else None


def _check_ratio(ratio_a: float) -> None:
    if isinstance(ratio_a, bool) or not isinstance(ratio_a, int | float) or not (
            math.isfinite(ratio_a) and 0.0 <= ratio_a <= 1.0):
        raise ValueError(
            f"ratio_a must be between 0 and 1 (arm A's share of traffic, e.g. 0.5), got {ratio_a!r}")


def _absolute_uri(uri: str) -> str:
    """Make plain local paths absolute: the record outlives the working directory it was made in."""
    if len(urlparse(uri).scheme) > 1:
        return uri
    return str(Path(uri).expanduser().resolve())


def _preflight(arms: dict[str, str], state_root: Path) -> None:
    """Load each distinct model as the server will, so a bad artifact fails before anything stops."""
    checked: set[str] = set()
    for arm, uri in arms.items():
        if uri in checked:
            continue
        try:
            load_model(uri)
        except ModelLoadError as exc:
            current = current_deployment(state_root)
            kept = (f"release {current.release} keeps serving at {current.endpoint}" if current
                    else "nothing was deployed")
            raise ModelLoadError(f"deploy: {arm} model {uri} cannot be served: {exc} ({kept})") from exc
        checked.add(uri)


def _start(record: DeploymentRecord, ready_timeout: float) -> DeploymentRecord:
    try:
        info = start_detached(Path(record.graph_path), record.models(), host=record.host, port=record.port,
                              state_dir=Path(record.serving_state_dir), ready_timeout=ready_timeout)
    except (DetachError, GraphError, ModelLoadError, OSError) as exc:
        raise DeployError(str(exc)) from exc
    return dataclasses.replace(record, endpoint=info.url.rstrip("/"))


def _restore(record: DeploymentRecord | None, ready_timeout: float) -> str:
    """Start ``record`` again after a failed switch; the sentence says where that leaves the user."""
    if record is None:
        return "nothing was deployed before, so no endpoint is running: fix the cause and deploy again"
    try:
        _start(record, max(ready_timeout, RESTORE_READY_TIMEOUT))
    except DeployError as exc:
        return (f"restarting release {record.release} failed too, so no endpoint is running: inspect "
                f"{record.serving_state_dir} and deploy again (restart error: {exc})")
    return (f"release {record.release} was restarted and serves again at {record.endpoint}: "
            f"read the cause below, fix it and deploy again")


def _next_release(state_root: Path) -> int:
    existing = [int(p.name) for p in (state_root / RELEASES).glob("*") if p.name.isdigit()]
    return max(existing, default=0) + 1


def _read_record(path: Path) -> DeploymentRecord | None:
    try:
        return DeploymentRecord.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    """Write + rename in the same folder, so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(state_root: Path) -> Iterator[None]:
    """One deploy or rollback at a time per state root: two scheduled runs must not interleave."""
    state_root.mkdir(parents=True, exist_ok=True)
    with open(state_root / LOCK, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
