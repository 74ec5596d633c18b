"""Arms forked from one process that imported the model runtime once: ``python -m abflow.serving.zygote``.

Importing numpy, scipy and scikit-learn costs a Python process ~1.5 s of CPU and ~60 MiB. When every
arm of a graph started its own interpreter, an A/B graph paid that twice, at the same moment, on a
two-core laptop, before its first answer. The zygote pays it once: it imports the model server and its
runtime, freezes that heap (``gc.freeze``: the arms' collector never writes to those pages) and forks
one arm per request. Arms start in milliseconds and share the runtime's pages copy-on-write.

Isolation stays per arm: each arm is its own process, so a crash takes down only that arm, and the
supervisor asks for a fresh fork. The tree is supervisor → zygote → arms, and each level dies with the
one above it, even on SIGKILL: the zygote through ``die_with_parent`` (and when its control socket
closes), each arm through ``die_with_parent`` on the zygote. The zygote runs one thread (BLAS thread
pools are kept at one thread), so a fork copies nothing half-locked.

Control: a SOCK_SEQPACKET socket, one JSON message per packet.

* supervisor → zygote: ``{"spawn": [model server args]}`` carrying, as SCM_RIGHTS, the pipe the arm
  writes its readiness line to (its stdout); ``{"kill": pid, "signal": n}``
* zygote → supervisor: ``{"spawned": pid}`` per spawn, in order (``pid`` null and ``error`` when the
  fork failed); ``{"exited": pid, "code": n}`` (negative: killed by signal -n) when an arm is reaped
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import traceback
from typing import Any

# The model server and everything it imports up to the first request, plus the estimator modules of
# the model abflow's trainer writes (a StandardScaler + LogisticRegression pipeline), so arms
# serving it unpickle without importing anything of their own. Not its HTTP adapter (aiohttp): under
# abflow serve an arm speaks only frames over its unix socket.
PRELOAD = ("abflow.serving.modelserver", "joblib", "sklearn.exceptions", "sklearn.pipeline",
           "sklearn.preprocessing", "sklearn.linear_model")
MESSAGE_BYTES = 64 * 1024
STOP_TIMEOUT = 5.0


# --- zygote side ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m abflow.serving.zygote",
                                     description="Fork abflow model servers on request (started by abflow serve).")
    parser.add_argument("--control", type=int, required=True, metavar="FD", help="the supervisor's control socket")
    parser.add_argument("--parent", type=int, required=True, metavar="PID", help="the supervisor's pid")
    args = parser.parse_args(argv)
    from abflow.serving.modelserver import PARENT_PID_ENV, die_with_parent

    os.environ[PARENT_PID_ENV] = str(args.parent)
    die_with_parent()
    gc.disable()  # imports allocate a great deal and free little: collecting meanwhile is wasted time
    for module in PRELOAD:
        importlib.import_module(module)
    gc.freeze()
    gc.enable()
    control = socket.socket(fileno=args.control)
    control.setblocking(True)
    return _serve(control)


def _serve(control: socket.socket) -> int:
    """Answer spawn and kill requests and report exits, until the supervisor closes the socket."""
    children: set[int] = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a Python handler, so the wakeup fd is written
    signal.set_wakeup_fd(wake_w)
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            while _drain(wake_r):
                pass
            _reap(control, children)
        if control.fileno() in readable:
            message, fds, _, _ = socket.recv_fds(control, MESSAGE_BYTES, 1)
            if not message:
                break
            _handle(json.loads(message), fds, control, children, (wake_r, wake_w))
    for pid in children:  # the supervisor is gone: so are the arms (PR_SET_PDEATHSIG says so too, on Linux)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return 0


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _reap(control: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(control, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _handle(message: dict[str, Any], fds: list[int], control: socket.socket, children: set[int],
            wake: tuple[int, int]) -> None:
    if "spawn" in message:
        if len(fds) != 1:
            _send(control, {"spawned": None, "error": "spawn request without the arm's stdout pipe"})
            return
        zygote = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fds[0])
            _send(control, {"spawned": None, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            _become_arm([str(arg) for arg in message["spawn"]], fds[0], control, wake, zygote)
        os.close(fds[0])
        children.add(pid)
        _send(control, {"spawned": pid})
    elif "kill" in message:
        for fd in fds:
            os.close(fd)
        pid = int(message["kill"])
        if pid in children:  # not reaped yet, so the pid cannot belong to anything else
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, int(message["signal"]))


def _become_arm(args: list[str], stdout: int, control: socket.socket, wake: tuple[int, int], zygote: int) -> None:
    """Run the model server in the forked child; never returns into the zygote's loop."""
    code: int = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in wake:
            os.close(fd)
        os.dup2(stdout, 1)
        os.close(stdout)
        from abflow.serving.modelserver import PARENT_PID_ENV
        from abflow.serving.modelserver import main as serve_model

        os.environ[PARENT_PID_ENV] = str(zygote)
        code = serve_model(args)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception, then the arm exits
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone; the loop sees EOF next
        control.send(json.dumps(message).encode())


# --- supervisor side ------------------------------------------------------------------------------


class ZygoteGone(RuntimeError):
    """The zygote exited (or could not fork), so no arm could be started."""


class ForkedArm:
    """An arm the zygote forked: the part of ``asyncio.subprocess.Process`` the supervisor uses."""

    def __init__(self, zygote: Zygote, pid: int, stdout: asyncio.StreamReader, transport: asyncio.BaseTransport,
                 exited: asyncio.Future[int | None]) -> None:
        self.pid = pid
        self.stdout = stdout
        self._zygote = zygote
        self._exited = exited
        exited.add_done_callback(lambda _: transport.close())

    @property
    def returncode(self) -> int | None:
        """The exit code once reaped (None while running, and when the zygote died taking it along)."""
        return self._exited.result() if self._exited.done() else None

    @property
    def running(self) -> bool:
        return not self._exited.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exited)

    def send_signal(self, signum: int) -> None:
        if self.running:
            self._zygote.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The supervisor's handle on its zygote process; starts a new one if the last one died.

    ``start`` runs before the supervisor's event loop (so the zygote's imports overlap the
    supervisor's own); the rest is used from the loop.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._reading = False
        self._closed = False
        self._spawning: collections.deque[asyncio.Future[tuple[int, asyncio.Future[int | None]]]] = (
            collections.deque())
        self._exits: dict[int, asyncio.Future[int | None]] = {}

    @classmethod
    def start(cls) -> Zygote:
        # One BLAS thread: the zygote must be single-threaded to fork safely, and an arm's matrices
        # are a few thousand numbers, far below where BLAS threads pay for themselves.
        zygote = cls({"OPENBLAS_NUM_THREADS": "1", **os.environ})
        zygote._launch()
        return zygote

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _launch(self) -> None:
        if self._proc is not None:
            self._proc.poll()  # reap the previous zygote
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            # Its own session: a terminal's Ctrl-C must reach only the supervisor, which drains
            # in-flight requests before it stops the arms.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "abflow.serving.zygote", "--control", str(theirs.fileno()),
                 "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                start_new_session=True, env=self._env)
        ours.setblocking(False)
        self._control = ours
        self._reading = False

    async def spawn(self, args: list[str]) -> ForkedArm:
        """Fork a model server with ``args``; its stdout is the returned arm's ``stdout``."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ZygoteGone("the graph is stopping")
        if self._control is None:
            self._launch()
        control = self._control
        assert control is not None
        if not self._reading:
            loop.add_reader(control.fileno(), self._readable)
            self._reading = True
        read_end, write_end = os.pipe()
        try:
            spawned: asyncio.Future[tuple[int, asyncio.Future[int | None]]] = loop.create_future()
            self._spawning.append(spawned)
            try:
                socket.send_fds(control, [json.dumps({"spawn": args}).encode()], [write_end])
            except OSError as exc:
                self._spawning.remove(spawned)
                self._lost()
                raise ZygoteGone(f"the zygote (pid {self.pid}) is gone: {exc}") from None
        finally:
            os.close(write_end)
        try:
            pid, exited = await spawned
        except BaseException:
            os.close(read_end)
            raise
        stdout = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout),
                                                    os.fdopen(read_end, "rb", 0))
        return ForkedArm(self, pid, stdout, transport, exited)

    def kill(self, pid: int, signum: int) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send(json.dumps({"kill": pid, "signal": int(signum)}).encode())

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Close the control socket (the zygote exits on EOF) and reap it."""
        self._closed = True
        self._lost()
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _readable(self) -> None:
        control = self._control
        assert control is not None
        while True:
            try:
                data = control.recv(MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            message = json.loads(data)
            if "spawned" in message:
                future = self._spawning.popleft()
                pid = message["spawned"]
                if pid is None:
                    if not future.done():
                        future.set_exception(ZygoteGone(str(message.get("error"))))
                else:
                    exit_future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
                    self._exits[pid] = exit_future
                    if not future.done():
                        future.set_result((pid, exit_future))
            elif "exited" in message:
                exited = self._exits.pop(message["exited"], None)
                if exited is not None and not exited.done():
                    exited.set_result(int(message["code"]))

    def _lost(self) -> None:
        """The zygote is gone or being closed: what waited on it learns so, the next spawn starts another."""
        control, self._control = self._control, None
        if control is None:
            return
        if self._reading:
            asyncio.get_running_loop().remove_reader(control.fileno())
            self._reading = False
        control.close()
        gone = ZygoteGone(f"the zygote (pid {self.pid}) exited")
        while self._spawning:
            future = self._spawning.popleft()
            if not future.done():
                future.set_exception(gone)
        for exited in self._exits.values():  # its arms die with it (PR_SET_PDEATHSIG)
            if not exited.done():
                exited.set_result(None)
        self._exits.clear()


if __name__ == "__main__":
    sys.exit(main())
