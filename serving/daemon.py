"""``abflow serve --detach``: an endpoint in the background, recorded in its state dir, found and
stopped again by ``abflow status`` / ``abflow down`` and by the local deploy target.

The background process is a plain ``python -m abflow.serving serve`` (``abflow.serving.supervisor``
runs it); this module only starts it in a session of its own, waits for the ready file it writes,
records ``endpoint.json`` (0600, in a 0700 folder: it says which models serve where) and signals it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abflow.serving.artifact import ALLOW_UNVERIFIED_FLAG
from abflow.serving.cli import EXPERIMENT_ENV
from abflow.serving.graph import UNIT_ENV, load_graph, resolve_model_uris, with_unit
from abflow.serving.local_files import write_atomically

ENDPOINT_FILE = "endpoint.json"
READY_FILE = "ready.json"
LOG_FILE = "serve.log"
# Set by start_detached(reuse_port=True) for a release that must share its port with the one it replaces.
REUSE_PORT_ENV = "ABFLOW_REUSE_PORT"


class DetachError(RuntimeError):
    """A detached endpoint did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class EndpointInfo:
    url: str
    pid: int
    port: int
    state_dir: Path
    log_path: Path


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically (a reader polling for the file never sees half of it) and owner-only."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True).encode())


def private_dir(folder: Path) -> Path:
    """``folder``, created 0700, or tightened to 0700 when it is ours and not a shared folder like /tmp:
    its log and records say which models serve where."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid == os.getuid() and not info.st_mode & stat.S_ISVTX and stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def start_detached(graph_path: Path, models: Mapping[str, str], *, host: str = "127.0.0.1", port: int = 8000,
                   state_dir: Path, ready_timeout: float = 30.0, reuse_port: bool = False,
                   allow_unverified: bool = False, experiment: str | None = None) -> EndpointInfo:
    """Start ``abflow serve`` in the background, wait until it is ready, record it in ``state_dir``.

    Ready means the process itself wrote its ready file (arms up, listening): with ``reuse_port`` the
    port is shared with the release being replaced, so an answer on it proves nothing about this one.
    Graph problems raise ``GraphError`` here, before anything starts; a server that dies while
    starting (a port in use, a model refused) raises ``DetachError`` with the tail of its log.
    ``experiment`` (and only it: an inherited ``$ABFLOW_EXPERIMENT`` is not passed on) names the
    experiment whose outcomes the endpoint records in ``state_dir``'s ledger.
    """
    graph_path = Path(graph_path).resolve()
    graph = load_graph(graph_path)
    if os.environ.get(UNIT_ENV):
        with_unit(graph, os.environ[UNIT_ENV])  # a bad --unit fails here, not in the background
    resolve_model_uris(graph, models)
    state_dir = private_dir(Path(state_dir))
    current = endpoint_status(state_dir)
    if current is not None and current.get("running"):
        raise DetachError(f"an endpoint is already running at {current['url']} (pid {current['pid']}): "
                          f"stop it first with: abflow down --state-dir {state_dir}")
    log_path, ready_path = state_dir / LOG_FILE, state_dir / READY_FILE
    ready_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "abflow.serving", "serve", str(graph_path), "--host", host, "--port", str(port),
               "--ready-file", str(ready_path), "--state-dir", str(state_dir)]
    if experiment:
        command += ["--experiment", experiment]
    for node, uri in models.items():
        command += ["--model", f"{node}={uri}"]
    if allow_unverified:
        command.append(ALLOW_UNVERIFIED_FLAG)
    env = {**os.environ, REUSE_PORT_ENV: "1" if reuse_port else "0"}
    env.pop(EXPERIMENT_ENV, None)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(log_fd, 0o600)  # a log from before logs were private
    with os.fdopen(log_fd, "ab") as log_file:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    deadline = time.monotonic() + ready_timeout
    ready: dict[str, Any] | None = None
    while ready is None:
        code = proc.poll()
        if code is not None:
            raise DetachError(f"abflow serve exited with code {code} before it was ready; "
                              f"its log ({log_path}) ends with:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise DetachError(f"abflow serve was not ready within {ready_timeout:g}s; "
                              f"its log ({log_path}) ends with:\n{_tail(log_path)}")
        if ready_path.exists():
            ready = json.loads(ready_path.read_text())
        else:
            time.sleep(0.02)
    url = str(ready["url"])
    info = EndpointInfo(url=url, pid=proc.pid, port=int(ready["port"]), state_dir=state_dir, log_path=log_path)
    write_json(state_dir / ENDPOINT_FILE, {
        "pid": proc.pid, "url": url, "host": host, "port": info.port, "graph": str(graph_path),
        "models": dict(models), "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "log_path": str(log_path), "state_dir": str(state_dir),
    })
    return info


def endpoint_status(state_dir: Path) -> dict[str, Any] | None:
    """What ``endpoint.json`` records, plus ``running`` and, when reachable, the ``health`` report."""
    record = _read_endpoint(Path(state_dir))
    if record is None:
        return None
    record["running"] = serving_pid_alive(int(record["pid"]))
    if record["running"]:
        record["health"] = _get(f"{record['url']}/health/status", timeout=2.0)
    return record


def stop_detached(state_dir: Path, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded endpoint (SIGKILL after ``timeout``), wait until it exits; True if it ran.

    Once its process is gone so is its listener (the zygote and arms never hold it), so the port is
    free again, or, after a replace, served by the successor alone.
    """
    state_dir = Path(state_dir)
    record = _read_endpoint(state_dir)
    if record is None:
        return False
    pid = int(record["pid"])
    running = serving_pid_alive(pid)
    if running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: not serving_pid_alive(pid), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: not serving_pid_alive(pid), 5.0)
    (state_dir / ENDPOINT_FILE).unlink(missing_ok=True)
    (state_dir / READY_FILE).unlink(missing_ok=True)
    return running


def _read_endpoint(state_dir: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((state_dir / ENDPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record


def serving_pid_alive(pid: int) -> bool:
    """Alive, not a zombie (reaped here if it is our child), and still an abflow server (pid reuse)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"serving" in cmdline


def _wait(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _get(url: str, timeout: float) -> Any:
    """GET a JSON endpoint; the parsed body (also for 503 health reports), or None if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return json.loads(exc.read())
        return None
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
