"""Runs a graph as processes: one model server per MODEL node, the executor in front, and the
lifecycle around them (parallel start, restart with backoff, graceful stop). Detached mode is
``abflow.serving.daemon``; listening on the port, alone or beside a release being replaced, is
``abflow.serving.takeover``.

The executor runs inside the supervising process: it is the process users talk to, so if it dies the
graph is down anyway, and sharing it saves a whole interpreter of memory. Each arm is its own process,
forked by the zygote (``abflow.serving.zygote``) that imported the model runtime once, in a session apart
(a terminal's Ctrl-C reaches only the supervisor, which drains before it stops the arms); the zygote
dies with the supervisor and the arms with the zygote, even on SIGKILL (see ``die_with_parent``).

The arms listen on unix sockets only, in a runtime folder of the supervisor's own (0700, named for its
pid, so a folder left by a SIGKILLed supervisor is recognised and removed at the next start), and on no
TCP port: the executor is the graph's one door. Each arm's liveness is probed over its socket
(``abflow.serving.armlink``); a hung arm is killed and forked again like a crashed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from abflow.serving.armlink import PROBE_TIMEOUT, ArmInfo
from abflow.serving.artifact import ALLOW_UNVERIFIED_FLAG
from abflow.serving.daemon import REUSE_PORT_ENV, private_dir, serving_pid_alive, write_json
from abflow.serving.graph import UNIT_ENV, Graph, ModelNode, load_graph, resolve_model_uris, with_unit
from abflow.serving.ledger import LEDGER_FILE, OutcomeLedger
from abflow.serving.takeover import bind, take_over
from abflow.serving.zygote import ForkedArm, Zygote, ZygoteGone

ARM_READY_TIMEOUT = 60.0
ARM_STOP_TIMEOUT = 5.0
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
RUNTIME_PREFIX = "abflow-serve-"
_RUNTIME_NAME = re.compile(rf"{RUNTIME_PREFIX}(\d+)-")


def log(message: str) -> None:
    print(f"abflow serve: {message}", file=sys.stderr, flush=True)


class ArmStartError(RuntimeError):
    """A model server exited or stayed silent before it was ready."""


class ArmProcess:
    """One MODEL node's server process, restarted with exponential backoff when it dies."""

    def __init__(self, index: int, node: ModelNode, uri: str, socket_path: str, zygote: Zygote, *,
                 allow_unverified: bool = False, graph: Graph | None = None, experiment: str | None = None) -> None:
        self.index = index
        self.node = node
        # The local defaults of the arm's Seldon metric labels (deployment_name, predictor_name/version).
        self.labels = ["--deployment-name", graph.name, "--predictor-name", graph.predictor] if graph else []
        if experiment:
            self.labels += ["--predictor-version", experiment]
        self.uri = uri
        self.socket_path = socket_path
        self.zygote = zygote
        self.allow_unverified = allow_unverified
        self.proc: ForkedArm | None = None
        self.stopping = False

    async def spawn(self) -> dict[str, Any]:
        image = ["--image", self.node.image] if self.node.image else []
        unverified = [ALLOW_UNVERIFIED_FLAG] if self.allow_unverified else []
        started = time.monotonic()
        try:
            # No --port: the arm answers only the executor's frames on its unix socket.
            self.proc = proc = await self.zygote.spawn([
                "--model", self.uri, "--name", self.node.name, "--socket", self.socket_path, *image, *unverified,
                *self.labels])
        except ZygoteGone as exc:
            raise ArmStartError(f"cannot start the model server for node {self.node.name!r}: {exc}") from None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), ARM_READY_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ArmStartError(f"model server for node {self.node.name!r} was not ready within "
                                f"{ARM_READY_TIMEOUT:g}s") from None
        if not line:
            code = await proc.wait()
            raise ArmStartError(f"model server for node {self.node.name!r} ({self.uri}) exited with code "
                                f"{code} before it was ready; its message is above")
        ready: dict[str, Any] = json.loads(line)
        log(f"arm {self.index} {self.node.name!r} serving {self.uri} "
            f"(pid {proc.pid}, ready in {time.monotonic() - started:.2f}s)")
        return ready

    def replace_hung(self, info: ArmInfo | None) -> None:
        """The arm link found this arm alive but unresponsive: kill it, and ``supervise`` forks a new one.

        Only if the hung process is still the current one (``info`` is its hello): a replacement that
        is already running is left alone."""
        proc = self.proc
        if self.stopping or proc is None or not proc.running or (info is not None and info.pid != proc.pid):
            return
        log(f"arm {self.node.name!r} (pid {proc.pid}) did not answer a liveness probe within "
            f"{PROBE_TIMEOUT:g}s: killing it")
        proc.kill()

    async def supervise(self) -> None:
        """Restart the arm whenever it exits, until ``stop``; the executor reconnects on its own."""
        backoff = BACKOFF_FIRST
        while not self.stopping:
            assert self.proc is not None
            alive_since = time.monotonic()
            code = await self.proc.wait()
            if self.stopping:
                return
            if time.monotonic() - alive_since > STABLE_AFTER:
                backoff = BACKOFF_FIRST
            how = f"exited with code {code}" if code is not None else "went down with its zygote"
            log(f"arm {self.node.name!r} (pid {self.proc.pid}) {how}; restarting in {backoff:g}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            with contextlib.suppress(ArmStartError):
                await self.spawn()

    async def stop(self) -> None:
        self.stopping = True
        proc = self.proc
        if proc is None or not proc.running:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), ARM_STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def serve_foreground(graph_path: Path, models: Mapping[str, str], *, host: str = "127.0.0.1",
                     port: int = 8000, ready_file: Path | None = None, reuse_port: bool | None = None,
                     allow_unverified: bool = False, experiment: str | None = None,
                     state_dir: Path | None = None) -> int:
    """``abflow serve`` in the foreground: returns the exit code once stopped by SIGTERM/SIGINT.

    ``reuse_port`` (default: the ``ABFLOW_REUSE_PORT`` environment variable is ``1``) is for a release
    replacing another on the same port; see ``take_over``. ``allow_unverified`` lets the arms unpickle
    models that no metadata.json vouches for (``abflow.serving.model``), with a warning on every start.
    With ``experiment``, every outcome is recorded in the ledger ``<state_dir>/outcomes.sqlite``
    (``abflow.serving.ledger``); a restart, or a successor serving the same experiment from the same
    state dir, adds to it.
    """
    if reuse_port is None:
        reuse_port = os.environ.get(REUSE_PORT_ENV) == "1"
    graph = load_graph(graph_path)
    if os.environ.get(UNIT_ENV):
        graph = with_unit(graph, os.environ[UNIT_ENV])
    uris = resolve_model_uris(graph, models)
    # A taken port fails at once rather than after model loading; a successor binds only once its
    # arms are up, because from then on the kernel sends it every new connection.
    sock = None if reuse_port else bind(host, port)
    if allow_unverified:
        log(f"WARNING: {ALLOW_UNVERIFIED_FLAG}: the arms will unpickle models that no metadata.json vouches "
            "for, and a pickle runs code: serve only files you trust")
    zygote = Zygote.start()  # before the event loop, so its imports overlap the executor's
    try:
        ledger = _open_ledger(experiment, state_dir)
        try:
            return asyncio.run(_run(graph, graph_path, uris, sock, host, port, ready_file, zygote, allow_unverified,
                                    experiment, ledger))
        finally:
            if ledger is not None:
                ledger.close()
    finally:
        zygote.close()


def _open_ledger(experiment: str | None, state_dir: Path | None) -> OutcomeLedger | None:
    if not experiment:
        return None
    if state_dir is None:
        raise ValueError("serving an experiment needs a state dir for its outcome ledger")
    ledger = OutcomeLedger(private_dir(Path(state_dir)) / LEDGER_FILE)
    log(f"experiment {experiment!r}: recording outcomes in {ledger.path}")
    return ledger


async def _run(graph: Graph, graph_path: Path, uris: dict[str, str], sock: socket.socket | None, host: str,
               port: int, ready_file: Path | None, zygote: Zygote, allow_unverified: bool,
               experiment: str | None = None, ledger: OutcomeLedger | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runtime = runtime_dir()
    arms = [ArmProcess(i, node, uris[node.name], str(runtime / f"arm{i}.sock"), zygote,
                       allow_unverified=allow_unverified, graph=graph, experiment=experiment)
            for i, node in enumerate(graph.served_nodes())]
    try:
        log(f"starting graph {graph.name!r}: {len(arms)} model server(s) in parallel")
        if not await _start_arms(arms, stop):
            return 1 if not stop.is_set() else 0
        from abflow.serving.armlink import ArmLink
        from abflow.serving.executor import Executor
        from abflow.serving.http import start_http

        links = [ArmLink(arm.node.name, arm.socket_path) for arm in arms]
        await asyncio.gather(*(link.connect() for link in links))
        for arm, link in zip(arms, links, strict=True):
            link.start_probing(arm.replace_hung)
        if sock is None:
            sock = take_over(host, port)
        served = len(graph.model_nodes())  # then the shadow's, if there is one
        executor = Executor(graph, uris, links[:served], experiment=experiment, ledger=ledger,
                            shadow=links[served] if graph.shadow is not None else None)
        endpoint = await start_http(executor, host, 0, sock=sock)
        supervisors = [asyncio.ensure_future(arm.supervise()) for arm in arms]
        url = _url(host, endpoint.port)
        _announce(graph, graph_path, url)
        if ready_file is not None:
            write_json(ready_file, {"url": url, "port": endpoint.port, "pid": os.getpid()})
        await stop.wait()
        log("stopping: draining in-flight requests")
        await endpoint.stop()
        for arm in arms:
            arm.stopping = True
        for task in supervisors:
            task.cancel()
        for link in links:
            link.close()
        return 0
    finally:
        await asyncio.gather(*(arm.stop() for arm in arms))
        zygote.close()
        shutil.rmtree(runtime, ignore_errors=True)
        log("stopped")


async def _start_arms(arms: list[ArmProcess], stop: asyncio.Event) -> bool:
    """Start all arms at once; the executor's own imports then overlap with the arms' model loading."""
    starting: asyncio.Future[list[dict[str, Any]]] = asyncio.gather(*(arm.spawn() for arm in arms))
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.sleep(0)
    import abflow.serving.executor
    import abflow.serving.http  # noqa: F401 - imported while the arms load their models
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, ArmStartError):
            await starting
        return False
    try:
        starting.result()
    except ArmStartError as exc:
        log(f"cannot start: {exc}")
        return False
    return True


def runtime_dir() -> Path:
    """A fresh folder for this supervisor's arm sockets (0700: only its user may connect to an arm).

    Named ``abflow-serve-<pid>-…`` in the temporary folder (unix socket paths must stay short, so not
    under the state dir): a supervisor killed by SIGKILL cannot remove its own, so each start removes
    those whose supervisor is gone."""
    temp = Path(tempfile.gettempdir())
    for folder in temp.glob(f"{RUNTIME_PREFIX}*-*"):
        match = _RUNTIME_NAME.match(folder.name)
        with contextlib.suppress(OSError):
            if match and folder.stat().st_uid == os.getuid() and not serving_pid_alive(int(match[1])):
                shutil.rmtree(folder)
    return Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-", dir=temp))


def _announce(graph: Graph, graph_path: Path, url: str) -> None:
    """Say where to send requests, with a command to try; never with the graph's OAuth secret in it
    (this goes to serve.log): the command reads the credentials from environment variables."""
    router = graph.router
    split = f", {router.name!r} sends {router.ratio_a:g} of traffic to arm 0" if router else ""
    log(f"ready: {url}/api/v1.0/predictions (graph {graph.name!r}{split})")
    auth = ""
    if graph.oauth_key is not None:
        log(f"this graph requires OAuth: set OAUTH_KEY and OAUTH_SECRET to spec.oauth_key and spec.oauth_secret "
            f"of {graph_path}, then: TOKEN=$(curl -s -u \"$OAUTH_KEY:$OAUTH_SECRET\" "
            f"-d grant_type=client_credentials {url}/oauth/token | python3 -c "
            "'import json,sys;print(json.load(sys.stdin)[\"access_token\"])')")
        auth = '-H "Authorization: Bearer $TOKEN" '
    log(f"try: curl -s {auth}-H 'Content-Type: application/json' {url}/api/v1.0/predictions "
        "-d '{\"data\":{\"ndarray\":[[5.1,3.5,1.4,0.2]]}}'")


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    return f"http://{f'[{shown}]' if ':' in shown and not shown.startswith('[') else shown}:{port}"
