"""The ``local`` deploy target: run the A/B graph as processes on this machine, one release at a time.

A pipeline run must never leave users worse off than before it, and the port is the URL users and the
smoke test hold, so a release replaces another blue/green on that same port: the new release starts
beside the running one (both listen with SO_REUSEPORT; the newcomer draws every new connection once
it listens, see ``abflow.serving.takeover.take_over``), and only when it has written its own ready file
(arms up, listening) is the old one stopped, which finishes its in-flight requests and sends its
keep-alive clients over. A client sees no failed request. If the new release does not start (a
corrupt or version-skewed artifact makes its arm refuse to load, so it exits), the running one was
never touched and the error says why. That start is the artifact check: it loads the models exactly
as serving will, in the serving processes, so no separate pre-flight load is needed. The last two
releases are kept as pointers so the smoke step can roll back, the same way.

Layout under ``state_root``::

    releases/<n>/graph.json     the SeldonDeployment this release runs (parses back to the graph)
    releases/<n>/release.json   its LocalRelease
    releases/<n>/serving/       that release's endpoint state (pid, URL, log) while it runs
    serving -> releases/<n>/serving
                                the live endpoint's state, swapped atomically once a new release is
                                ready: where `abflow status` / `abflow down --state-dir <root>/serving` look
    current.json, previous.json LocalRelease records, each replaced atomically
    .lock                       serialises deploys and rollbacks into this state root
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from abflow.serving.daemon import DetachError, endpoint_status, start_detached, stop_detached
from abflow.serving.graph import (
    AB_MODE,
    DEFAULT_ARM_NAMES,
    DEFAULT_ROUTER_NAME,
    SHADOW_MODE,
    GraphError,
    ab_graph,
    check_ratio,
    shadow_graph,
    to_seldon_deployment,
)
from abflow.serving.local_files import exclusive_lock, write_atomically

TARGET = "local"
RELEASES = "releases"
GRAPH_FILE = "graph.json"
RELEASE_FILE = "release.json"
SERVING_DIR = "serving"
CURRENT = "current.json"
PREVIOUS = "previous.json"
LOCK = ".lock"


class DeployError(RuntimeError):
    """A deployment or rollback could not complete; the message says what still serves and what to do."""


@dataclass(frozen=True)
class LocalRelease:
    """What a deploy put in place, enough to smoke-test it and to start it again on rollback.

    ``previous_release`` is the release this one replaced (``None`` for the first), i.e. where a
    rollback goes. ``mode`` is ``ab`` (arm B gets ``1 - ratio_a`` of the traffic) or ``shadow`` (arm A
    serves everything, arm B gets a copy of ``shadow_fraction`` of it).
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
    experiment_id: str = ""
    mode: str = AB_MODE
    shadow_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["arm_names"] = list(self.arm_names)
        return body

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LocalRelease:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("target") != TARGET:
            raise DeployError(f"not a local deployment record: {str(text)[:200]!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - raw.keys())
        if missing:
            raise DeployError(f"deployment record lacks {missing}: it was written by another abflow version; "
                              "redeploy to write a fresh one")
        arm_a, arm_b = raw["arm_names"]
        return cls(**{**{k: raw[k] for k in fields if k in raw}, "arm_names": (arm_a, arm_b)})

    def models(self) -> dict[str, str]:
        """The ``--model NODE=URI`` mapping the serving runtime takes."""
        return {self.arm_names[0]: self.model_a_uri, self.arm_names[1]: self.model_b_uri}


def deploy_local(*, model_a_uri: str, model_b_uri: str, ratio_a: float, state_root: Path, port: int = 8000,
                 name: str = "iris-ab", host: str = "127.0.0.1", ready_timeout: float = 30.0,
                 experiment_id: str = "", shadow_fraction: float = 0.0) -> LocalRelease:
    """Replace the running A/B graph under ``state_root`` with one serving ``model_a_uri`` (arm A,
    ``ratio_a`` of traffic) and ``model_b_uri``; see the module docstring for the order of steps.
    ``experiment_id`` names the experiment the release serves (empty: none), whose outcomes its
    endpoint records in its serving state directory. A ``shadow_fraction`` above 0 deploys
    ``model_b_uri`` as a shadow of ``model_a_uri`` instead (``ratio_a`` is then 1: arm A serves all).

    Raises ``ValueError`` for a bad ``ratio_a``/``port`` and ``DeployError`` when the new release did
    not start (a model that cannot be served, a port held by something else): the running release
    was not touched, and the new release's folder is removed again.
    """
    check_ratio(ratio_a, "ratio_a")
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    model_a_uri, model_b_uri = _absolute_uri(model_a_uri), _absolute_uri(model_b_uri)
    try:
        graph = (shadow_graph(name, model_a_uri, model_b_uri, shadow_fraction, arm_names=DEFAULT_ARM_NAMES)
                 if shadow_fraction else ab_graph(name, model_a_uri, model_b_uri, ratio_a,
                                                  router_name=DEFAULT_ROUTER_NAME, arm_names=DEFAULT_ARM_NAMES))
    except GraphError as exc:
        raise ValueError(f"cannot build the A/B graph: {exc}") from exc

    state_root = state_root.resolve()
    with _locked(state_root):
        current = current_deployment(state_root)
        release = _next_release(state_root)
        held = port_in_use(state_root, port, host)
        if held:
            raise DeployError(f"deploy: release {release} did not start, so nothing changed: "
                              f"{_still_serving(current)}. Cause: {held}; pick another port (abflow run "
                              "--local-port, the pipeline's local_port)")
        folder = state_root / RELEASES / str(release)
        folder.mkdir(parents=True)
        graph_path = folder / GRAPH_FILE
        _write_atomic(graph_path, json.dumps(to_seldon_deployment(graph), indent=2))
        planned = LocalRelease(
            target=TARGET, name=name, release=release, endpoint=f"http://{host}:{port}",
            graph_path=str(graph_path), model_a_uri=model_a_uri, model_b_uri=model_b_uri,
            ratio_a=1.0 if shadow_fraction else float(ratio_a), previous_release=current.release if current else None,
            router_name=DEFAULT_ROUTER_NAME, arm_names=DEFAULT_ARM_NAMES, host=host, port=port,
            state_root=str(state_root), serving_state_dir=str(_serving_dir(state_root, release)),
            deployed_at=datetime.now(UTC).isoformat(timespec="seconds"), experiment_id=experiment_id,
            mode=SHADOW_MODE if shadow_fraction else AB_MODE, shadow_fraction=float(shadow_fraction),
        )
        try:
            started = _switch(state_root, planned, current, ready_timeout)
        except DeployError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise DeployError(f"deploy: release {release} did not start, so nothing changed: "
                              f"{_still_serving(current)}. Cause: {exc}") from exc
        _write_atomic(folder / RELEASE_FILE, started.to_json())
        if current is not None:
            _write_atomic(state_root / PREVIOUS, current.to_json())
        _write_atomic(state_root / CURRENT, started.to_json())
        return started


def rollback_local(state_root: Path, *, expected_release: int | None = None,
                   ready_timeout: float = 30.0) -> LocalRelease | None:
    """Put the previous release back on the same port, blue/green like a deploy, and swap the pointers
    (so a second rollback undoes the first). With no previous release the endpoint is stopped and
    ``None`` returned.

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
        if previous is None:
            stop_detached(_serving_dir(state_root, current.release))
            _write_atomic(state_root / PREVIOUS, current.to_json())
            (state_root / CURRENT).unlink()
            return None
        target = dataclasses.replace(previous, previous_release=current.release, host=current.host,
                                     port=current.port,
                                     serving_state_dir=str(_serving_dir(state_root, previous.release)))
        try:
            restored = _switch(state_root, target, current, ready_timeout)
        except DeployError as exc:
            raise DeployError(f"rollback: release {previous.release} did not start, so nothing changed: "
                              f"{_still_serving(current)}. Cause: {exc}") from exc
        _write_atomic(state_root / PREVIOUS, current.to_json())
        _write_atomic(state_root / CURRENT, restored.to_json())
        return restored


def current_deployment(state_root: Path) -> LocalRelease | None:
    """The release the endpoint should be serving (whether or not its processes are up right now)."""
    return _read_record(state_root / CURRENT)


def deployed_model_uris(state_root: Path) -> list[str]:
    """The model URIs the current release serves and the previous one (what a rollback restarts) would."""
    records = [_read_record(state_root / name) for name in (CURRENT, PREVIOUS)]
    return [uri for record in records if record is not None for uri in (record.model_a_uri, record.model_b_uri)]


def port_in_use(state_root: Path, port: int, host: str = "127.0.0.1") -> str | None:
    """Why a new release under ``state_root`` could not listen on ``host:port``, or ``None`` when it
    could: the port is free, or the endpoint serving from ``state_root`` holds it (a deploy replaces
    that one on the same port). For checking a run before it trains anything."""
    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        reason = exc.strerror or str(exc)
    current = current_deployment(state_root.resolve())
    if current is not None and current.port == port and _is_running(current):
        return None
    return f"port {port} on {host} is in use by another program ({reason})"


def stop_local(state_root: Path, timeout: float = 10.0) -> bool:
    """Stop the endpoint under ``state_root`` (and any release left running beside it) if it runs; the
    pointers stay, so a later deploy or rollback knows the history. Returns whether something was
    stopped."""
    stopped = stop_detached(state_root / SERVING_DIR, timeout=timeout)
    for serving in sorted((state_root / RELEASES).glob(f"*/{SERVING_DIR}")):
        stopped = stop_detached(serving, timeout=timeout) or stopped
    return stopped


def _absolute_uri(uri: str) -> str:
    """Make plain local paths absolute: the record outlives the working directory it was made in."""
    if len(urlparse(uri).scheme) > 1:
        return uri
    return str(Path(uri).expanduser().resolve())


def _switch(state_root: Path, target: LocalRelease, current: LocalRelease | None,
            ready_timeout: float) -> LocalRelease:
    """Start ``target`` beside ``current`` on the same port, point ``serving`` at it, stop ``current``.

    Raises ``DeployError`` before anything running is touched if ``target`` does not get ready.
    """
    started = _start(target, ready_timeout)
    _point_serving_at(state_root, target.release)
    if current is not None:
        stop_detached(_serving_dir(state_root, current.release))
    return started


def _start(record: LocalRelease, ready_timeout: float) -> LocalRelease:
    try:
        info = start_detached(Path(record.graph_path), record.models(), host=record.host, port=record.port,
                              state_dir=Path(record.serving_state_dir), ready_timeout=ready_timeout,
                              reuse_port=True, experiment=record.experiment_id or None)
    except (DetachError, GraphError, OSError) as exc:
        raise DeployError(str(exc)) from exc
    return dataclasses.replace(record, endpoint=info.url.rstrip("/"))


def _still_serving(record: LocalRelease | None) -> str:
    if record is None:
        return "nothing was deployed before, so no endpoint is running; fix the cause and deploy again"
    if not _is_running(record):
        return f"release {record.release}, deployed before, is not running either; fix the cause and deploy again"
    return f"release {record.release} keeps serving at {record.endpoint}; fix the cause and deploy again"


def _is_running(record: LocalRelease) -> bool:
    status = endpoint_status(Path(record.serving_state_dir))
    return bool(status and status.get("running"))


def _serving_dir(state_root: Path, release: int) -> Path:
    return state_root / RELEASES / str(release) / SERVING_DIR


def _point_serving_at(state_root: Path, release: int) -> None:
    """Swap the ``serving`` symlink to ``release``'s state in one rename, so readers see one or the other."""
    link = state_root / SERVING_DIR
    tmp = state_root / f".{SERVING_DIR}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path(RELEASES) / str(release) / SERVING_DIR, tmp)
    os.replace(tmp, link)


def _next_release(state_root: Path) -> int:
    existing = [int(p.name) for p in (state_root / RELEASES).glob("*") if p.name.isdigit()]
    return max(existing, default=0) + 1


def _read_record(path: Path) -> LocalRelease | None:
    try:
        return LocalRelease.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    """A record, replaced in one rename (``write_atomically``), so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode("utf-8"))


@contextmanager
def _locked(state_root: Path) -> Iterator[None]:
    """One deploy or rollback at a time per state root: two scheduled runs must not interleave."""
    state_root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(state_root / LOCK):
        yield
