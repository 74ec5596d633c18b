"""The executor's link to its arm processes: float64 rows over a unix socket, multiplexed.

Each arm stays its own process (a crashing model must not take its sibling down), but the hop from
the executor to an arm is on every request, so it is kept cheap: no HTTP parsing and no JSON on
either side, just a 16-byte header and the rows' raw float64 bytes. One connection per arm carries
all in-flight requests, tagged by id. The arm answers frames in arrival order and, when several are
waiting in one read, predicts them in one ``predict_proba`` call: under load the sklearn per-call
overhead is paid once per batch of requests instead of once per request.

Frames (little-endian):

* arm → executor on connect: ``<I`` length + JSON hello (node name, URI, class names, features, pid)
* request: ``<QII`` id, rows, columns, then rows × columns float64; 0 rows × 0 columns is a
  liveness probe (no request decodes to it), answered with an empty reply without touching the model
* reply: ``<QiI`` id, rows, columns, then rows × columns float64; rows = -1 means an error whose
  UTF-8 message of ``columns`` bytes follows
* control request: ``<QII`` id, 0 rows, n > 0 "columns", then n bytes of JSON: ``{"op": "metrics"}``
  is answered with rows = -2 and the arm's Prometheus exposition of ``columns`` bytes;
  ``{"op": "feedback", "reward": r}`` (Seldon's ``/send-feedback``, so the arm's own feedback
  counters count it) is not answered, so it costs the executor no wait

Liveness: an arm that is alive but stuck (stopped, deadlocked, in an endless loop) keeps its socket
open, so a lost connection alone never notices it. With ``start_probing`` the executor sends a probe
every ``PROBE_INTERVAL`` seconds on the same connection as the requests, so the answer comes from the
same event loop that predicts; an arm that leaves one unanswered for ``PROBE_TIMEOUT`` seconds is
marked down at once (``up`` False, its in-flight requests fail with ``ArmUnavailable``, new ones fail
fast without waiting) and reported to the supervisor, which kills and replaces it. So a hung arm is
down within ``PROBE_INTERVAL + PROBE_TIMEOUT`` (3 s) of hanging. The probe loop also reconnects to a
restarted arm by itself (every ``RECONNECT_INTERVAL`` while it is down), so ``up`` turns True again
without waiting for a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

REQUEST = struct.Struct("<QII")
ERROR_ROWS = -1
CONTROL_ROWS = -2
MAX_CONTROL_BYTES = 64 * 1024
REPLY = struct.Struct("<QiI")
HELLO = struct.Struct("<I")
MAX_FRAME_VALUES = 16 * 1024 * 1024
CONNECT_TIMEOUT = 1.0
PROBE_INTERVAL = 1.0
"""Seconds between liveness probes (each waits for the previous one's answer first)."""
PROBE_TIMEOUT = 2.0
"""Seconds an arm may take to answer a probe before it counts as hung: far above the few
milliseconds a probe waits behind the requests already queued before it, even under load."""
RECONNECT_INTERVAL = 0.1
"""Seconds between the probe loop's attempts to reach an arm that is down: a refused connect costs
microseconds, and the sooner a restarted arm is back, the sooner it takes its share again."""
LOST = "connection lost (the arm process exited?)"

Rows = np.ndarray[Any, np.dtype[np.float64]]
Predict = Callable[[Rows], Rows]
Control = Callable[[dict[str, Any]], bytes | None]
"""The arm's answer to a control request, or ``None`` for one that is not answered."""
Observe = Callable[[int, float], None]
"""Called per request frame with the status it got (200 or 500) and the seconds its prediction took."""
OnHung = Callable[["ArmInfo | None"], None]


@dataclass(frozen=True)
class ArmInfo:
    """What an arm says about itself when the executor connects."""

    name: str
    uri: str
    class_names: tuple[str, ...]
    n_features: int | None
    pid: int
    port: int | None
    version: str = ""
    """The model version from its metadata.json (empty for an unverified model), for metric labels."""
    image: str = ""

    def hello(self) -> bytes:
        body = orjson.dumps({"name": self.name, "uri": self.uri, "class_names": list(self.class_names),
                             "n_features": self.n_features, "pid": self.pid, "port": self.port,
                             "version": self.version, "image": self.image})
        return HELLO.pack(len(body)) + body

    @classmethod
    def from_json(cls, body: bytes) -> ArmInfo:
        raw = orjson.loads(body)
        return cls(name=raw["name"], uri=raw["uri"], class_names=tuple(raw["class_names"]),
                   n_features=raw["n_features"], pid=raw["pid"], port=raw["port"],
                   version=raw.get("version", ""), image=raw.get("image", ""))


class ArmUnavailable(Exception):
    """The arm cannot answer now (not listening, connection lost, timed out); the caller sends 503."""

    def __init__(self, arm: str, reason: str) -> None:
        super().__init__(f"model arm {arm!r} is unavailable: {reason}")
        self.arm = arm
        self.reason = reason


class _NoAnswer(ArmUnavailable):
    """The arm kept a request (or probe) unanswered past its deadline."""


class ArmFailed(Exception):
    """The arm answered with an error (its model raised)."""


# --- arm side -------------------------------------------------------------------------------------


class _ArmServerProtocol(asyncio.Protocol):
    def __init__(self, predict: Predict, hello: bytes, control: Control | None, observe: Observe | None) -> None:
        self._predict = predict
        self._hello = hello
        self._control = control
        self._observe = observe
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._hello)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, Rows]] = []
        pongs: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= REQUEST.size:
            request_id, rows, columns = REQUEST.unpack_from(buffer, offset)
            control = rows == 0 and columns > 0
            if rows * columns > MAX_FRAME_VALUES or (control and columns > MAX_CONTROL_BYTES):
                assert self._transport is not None
                self._transport.close()
                return
            end = offset + REQUEST.size + (columns if control else rows * columns * 8)
            if len(buffer) < end:
                break
            if rows == columns == 0:
                pongs.append(REPLY.pack(request_id, 0, 0))
            elif control:
                answer = self._answer_control(request_id, bytes(buffer[offset + REQUEST.size:end]))
                if answer is not None:
                    pongs.append(answer)
            else:
                frames.append((request_id, _rows(buffer, offset + REQUEST.size, rows, columns)))
            offset = end
        del buffer[:offset]
        if frames or pongs:
            assert self._transport is not None
            self._transport.write(b"".join([*self._answer(frames), *pongs]))

    def _answer(self, frames: list[tuple[int, Rows]]) -> list[bytes]:
        """Predict all complete frames; frames of one width go through the model in one call."""
        out: list[bytes] = []
        start = 0
        while start < len(frames):
            width = frames[start][1].shape[1]
            stop = start + 1
            while stop < len(frames) and frames[stop][1].shape[1] == width:
                stop += 1
            group = frames[start:stop]
            started = time.perf_counter()
            try:
                result = self._predict(np.vstack([rows for _, rows in group]) if len(group) > 1 else group[0][1])
            except Exception:  # noqa: BLE001 - retried one by one so only the bad frame fails
                out.extend(self._answer_one(request_id, rows) for request_id, rows in group)
            else:
                first = 0
                for request_id, rows in group:
                    out.append(_reply(request_id, result[first:first + rows.shape[0]]))
                    first += rows.shape[0]
                if self._observe is not None:
                    seconds = time.perf_counter() - started
                    for _ in group:
                        self._observe(200, seconds)
            start = stop
        return out

    def _answer_one(self, request_id: int, rows: Rows) -> bytes:
        started = time.perf_counter()
        try:
            reply = _reply(request_id, self._predict(rows))
            status = 200
        except Exception as exc:  # noqa: BLE001 - the executor turns it into a 500 naming the arm
            message = f"{type(exc).__name__}: {exc}".encode()[:4096]
            reply = REPLY.pack(request_id, ERROR_ROWS, len(message)) + message
            status = 500
        if self._observe is not None:
            self._observe(status, time.perf_counter() - started)
        return reply

    def _answer_control(self, request_id: int, body: bytes) -> bytes | None:
        try:
            message = orjson.loads(body)
            if not isinstance(message, dict):
                raise ValueError(f"a control request is a JSON object, got {body[:80]!r}")
            answer = self._control(message) if self._control is not None else None
        except Exception as exc:  # noqa: BLE001 - a bad control request must not end the connection
            text = f"{type(exc).__name__}: {exc}".encode()[:4096]
            return REPLY.pack(request_id, ERROR_ROWS, len(text)) + text
        return None if answer is None else REPLY.pack(request_id, CONTROL_ROWS, len(answer)) + answer


def _rows(buffer: bytearray, offset: int, rows: int, columns: int) -> Rows:
    """A copy of the rows, so no numpy view pins ``buffer`` (a pinned bytearray cannot shrink)."""
    view = np.frombuffer(buffer, dtype="<f8", count=rows * columns, offset=offset)
    return view.reshape(rows, columns).astype(np.float64, copy=True)


def _reply(request_id: int, result: Rows) -> bytes:
    result = np.ascontiguousarray(result, dtype="<f8")
    return REPLY.pack(request_id, result.shape[0], result.shape[1]) + result.tobytes()


async def serve_frames(path: str, predict: Predict, info: ArmInfo, *, control: Control | None = None,
                       observe: Observe | None = None) -> asyncio.AbstractServer:
    """Listen on unix socket ``path`` (replacing a stale one from a crashed predecessor)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    hello = info.hello()
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _ArmServerProtocol(predict, hello, control, observe), path)


# --- executor side --------------------------------------------------------------------------------


class _ArmClientProtocol(asyncio.Protocol):
    def __init__(self, link: ArmLink) -> None:
        self._link = link
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future[ArmInfo] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.reason = LOST
        """Why the connection ended, for the requests it fails: set before closing it on purpose."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        if not self.hello.done():
            if len(buffer) < HELLO.size:
                return
            (length,) = HELLO.unpack_from(buffer)
            if len(buffer) < HELLO.size + length:
                return
            self.hello.set_result(ArmInfo.from_json(bytes(buffer[HELLO.size:HELLO.size + length])))
            offset = HELLO.size + length
        pending = self.pending
        while len(buffer) - offset >= REPLY.size:
            request_id, rows, columns = REPLY.unpack_from(buffer, offset)
            size = columns if rows < 0 else rows * columns * 8
            end = offset + REPLY.size + size
            if len(buffer) < end:
                break
            future = pending.pop(request_id, None)
            if future is not None and not future.done():
                if rows == CONTROL_ROWS:
                    future.set_result(bytes(buffer[offset + REPLY.size:end]))
                elif rows < 0:
                    message = bytes(buffer[offset + REPLY.size:end]).decode("utf-8", "replace")
                    future.set_exception(ArmFailed(message))
                else:
                    future.set_result(_rows(buffer, offset + REPLY.size, rows, columns))
            offset = end
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self)
        error = ArmUnavailable(self._link.name, self.reason)
        if not self.hello.done():
            self.hello.set_exception(error)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()


class ArmLink:
    """The executor's connection to one arm; reconnects lazily, so an arm restarted by the supervisor
    is used again on the next request without any coordination."""

    def __init__(self, name: str, socket_path: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 request_timeout: float = 30.0, probe_interval: float = PROBE_INTERVAL,
                 probe_timeout: float = PROBE_TIMEOUT, reconnect_interval: float = RECONNECT_INTERVAL) -> None:
        self.name = name
        self.socket_path = socket_path
        self.info: ArmInfo | None = None
        self.last_error: str | None = "not connected yet"
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._reconnect_interval = reconnect_interval
        self._protocol: _ArmClientProtocol | None = None
        self._connecting: asyncio.Future[_ArmClientProtocol] | None = None
        self._next_id = 0
        self._hung = False
        self._prober: asyncio.Future[None] | None = None

    @property
    def up(self) -> bool:
        return self._protocol is not None

    async def connect(self) -> ArmInfo:
        """Connect (sharing one attempt between concurrent callers) and return the arm's hello."""
        protocol = self._protocol or await self._connect_unless_hung()
        return await protocol.hello

    async def predict(self, rows: Rows) -> Rows:
        protocol = self._protocol or await self._connect_unless_hung()
        rows = np.ascontiguousarray(rows, dtype="<f8")
        result: Rows = await self._exchange(protocol, rows.shape[0], rows.shape[1], rows.tobytes(),
                                            self._request_timeout)
        return result

    async def exposition(self, timeout: float = 2.0) -> bytes:
        """The arm's own Prometheus exposition (what its ``/metrics`` would say)."""
        protocol = self._protocol or await self._connect_unless_hung()
        body = orjson.dumps({"op": "metrics"})
        answer: bytes = await self._exchange(protocol, 0, len(body), body, timeout)
        return answer

    def send_feedback(self, reward: float) -> bool:
        """Tell the arm about a reward for its feedback counters, without waiting; False if it is not
        connected (its counters then miss this one; the executor's ledger does not)."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return False
        body = orjson.dumps({"op": "feedback", "reward": reward})
        protocol.transport.write(REQUEST.pack(0, 0, len(body)) + body)
        return True

    def start_probing(self, on_hung: OnHung | None = None) -> None:
        """Probe the arm's liveness from now on (see the module docstring); ``on_hung`` is called with the
        hung arm's hello (its pid) when one is marked down, so its supervisor can replace it."""
        if self._prober is None:
            self._prober = asyncio.ensure_future(self._probe_forever(on_hung))

    def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    async def _send(self, protocol: _ArmClientProtocol, rows: Rows, timeout: float) -> Rows:
        result: Rows = await self._exchange(protocol, rows.shape[0], rows.shape[1], rows.tobytes(), timeout)
        return result

    async def _exchange(self, protocol: _ArmClientProtocol, rows: int, columns: int, payload: bytes,
                        timeout: float) -> Any:
        """Send one request frame and wait for its reply: rows, or a control request's bytes."""
        transport = protocol.transport
        assert transport is not None
        self._next_id = request_id = (self._next_id + 1) & 0xFFFF_FFFF_FFFF_FFFF
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.pending[request_id] = future
        transport.write(REQUEST.pack(request_id, rows, columns) + payload)
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, protocol, request_id, timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, protocol: _ArmClientProtocol, request_id: int, timeout: float) -> None:
        future = protocol.pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_exception(_NoAnswer(self.name, f"no answer within {timeout:g}s"))

    async def _probe_forever(self, on_hung: OnHung | None) -> None:
        probe = np.empty((0, 0), dtype="<f8")
        while True:
            protocol = self._protocol
            try:
                if protocol is None:
                    protocol = await self._connect_once()
                await self._send(protocol, probe, self._probe_timeout)
            except _NoAnswer:
                if protocol is not None and self._protocol is protocol:
                    info = self.info
                    self._mark_hung(protocol)
                    if on_hung is not None:
                        on_hung(info)
            except (ArmUnavailable, ArmFailed):
                pass  # not connected (the loop tries again), or it answered, with an error, so it is alive
            await asyncio.sleep(self._probe_interval if self.up else self._reconnect_interval)

    def _mark_hung(self, protocol: _ArmClientProtocol) -> None:
        """Down at once: new requests fail fast and those in flight fail now, not at their own timeout."""
        self._hung = True
        self._protocol = None
        self.last_error = protocol.reason = (
            f"no answer to a liveness probe within {self._probe_timeout:g}s (hung); it is being replaced")
        if protocol.transport is not None:
            protocol.transport.abort()  # not close(): that would wait to flush into a socket nobody reads

    async def _connect_unless_hung(self) -> _ArmClientProtocol:
        """Requests never wait on a hung arm's listener (it accepts but never says hello): only the probe
        loop reconnects, once the replacement is up."""
        if self._hung:
            raise ArmUnavailable(self.name, self.last_error or "hung")
        return await self._connect_once()

    async def _connect_once(self) -> _ArmClientProtocol:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _ArmClientProtocol:
        loop = asyncio.get_running_loop()
        protocol: _ArmClientProtocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_unix_connection(lambda: _ArmClientProtocol(self),
                                                                self.socket_path)
                info = await protocol.hello
        except ArmUnavailable as exc:
            self.last_error = exc.reason if not self._hung else self.last_error
            raise
        except (OSError, TimeoutError) as exc:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()
            reason = "not listening (starting or restarting)" if isinstance(
                exc, FileNotFoundError | ConnectionRefusedError) else f"cannot connect: {exc or 'timed out'}"
            if not self._hung:
                self.last_error = reason
            raise ArmUnavailable(self.name, reason) from None
        self.info = info
        self.last_error = None
        self._hung = False
        self._protocol = protocol
        return protocol

    def _lost(self, protocol: _ArmClientProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self.last_error = protocol.reason
