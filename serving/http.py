"""The one module that knows aiohttp: turns HTTP requests into ``Call``s and ``Reply``s back.

aiohttp's low-level ``web.Server`` is used without an ``Application``/router/middleware stack:
dispatch is a dict lookup in ``abflow.serving.service.UrlDispatch``, so the framework only parses HTTP.
aiohttp sets TCP_NODELAY on every accepted connection (``BaseProtocol.connection_made``), which keeps
keep-alive latency off Nagle's 40 ms timer.

What a client may cost before it is known, and after (the numbers are ``EndpointLimits``):

* a request's head is admitted by the service (``UrlDispatch.admit``: route, method, token) before a
  byte of its body is read; a refused request gets its answer and its connection is closed, so its
  body is never read. ``Expect: 100-continue`` is answered only once the head is admitted.
* headers must be complete within ``header_timeout`` of the request's first byte, and a body may not
  pause for more than ``body_idle_timeout``: a slow client gets a 408 and its connection is closed.
* past ``max_connections`` open connections, a connection's request gets a 503 at once; a large body
  (over ``large_body_bytes``) is admitted only while all large bodies together stay within
  ``max_buffered_bytes``, counted from the declared length before reading (a chunked body is counted
  as it arrives), else a 503 at once.
* every response is a Seldon status body and is counted (``abflow_http_responses_total``), including
  these refusals, aiohttp's own answers to malformed HTTP, and the 500 of the catch-all that keeps any
  exception away from aiohttp's plain-text one. Logged failures carry no header, token or body.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from abflow.serving.heap import HeapTrimmer
from abflow.serving.limits import EndpointLimits
from abflow.serving.protocol import INTERNAL_ERROR, status_body
from abflow.serving.service import JSON, OTHER_PATH, Call, Reply, Route, Service, body_too_large, status_reply

DRAIN_SECONDS = 30.0
GRACE_SECONDS = 2.0
GRACE_POLL = 0.02
MAX_HEADERS = 64
UNAVAILABLE = "MICROSERVICE_UNAVAILABLE"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

logger = logging.getLogger("abflow.serving.http")


class HttpEndpoint:
    """A ``Service`` served over HTTP, stopped gracefully for in-flight and keep-alive clients alike."""

    def __init__(self, service: Service, limits: EndpointLimits | None = None) -> None:
        self.service = service
        self.limits = limits = limits or EndpointLimits.from_env()
        self.metrics = service.metrics
        self.port = 0
        self.draining = False
        # lingering_time=0: aiohttp would otherwise read and discard a refused request's body for up to
        # 10 s before closing, which is exactly the spending a refusal is for avoiding.
        self.server = _Server(self, self._respond, keepalive_timeout=limits.keepalive_timeout, access_log=None,
                              max_headers=MAX_HEADERS, auto_decompress=False, lingering_time=0)
        self.runner = web.ServerRunner(self.server, shutdown_timeout=DRAIN_SECONDS, access_log=None)
        self._site: web.SockSite | None = None
        self.heap = HeapTrimmer(lambda: self.metrics.buffered_bytes == 0)

    async def start(self, sock: socket.socket) -> None:
        await self.runner.setup()
        self._site = web.SockSite(self.runner, sock)
        await self._site.start()
        self.port = int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, answer what keep-alive clients send within ``GRACE_SECONDS`` with
        ``Connection: close``, let in-flight requests finish (up to ``DRAIN_SECONDS``), then close.

        The grace is for a client that is sending as the stop begins, whether a successor took over
        the port (blue/green) or the process got SIGTERM: it gets its answer and a close it can see,
        instead of racing a close it cannot see coming (a POST on a keep-alive connection closed under
        it fails, and clients do not retry POSTs).
        """
        self.draining = True
        if self._site is not None:
            await self._site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE_SECONDS
        while self.server.connections and loop.time() < deadline:
            await asyncio.sleep(GRACE_POLL)
        await self.runner.cleanup()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        assert isinstance(connection, _Connection)
        connection.request_started()
        label = self.service.routes.label(request.path)
        try:
            reply, close = await self._answer(request, connection)
        except Exception as exc:  # noqa: BLE001 - any bug still gets a Seldon 500, counted, and the server serves on
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            # Where, not what: an exception's message may quote a header, a token or the body.
            logger.error("internal error answering %s %s: %s at %s:%s in %s", request.method, label,
                         type(exc).__name__, Path(frame.filename).name, frame.lineno, frame.name)
            reply = status_reply(500, f"internal error ({type(exc).__name__}); the server keeps serving: "
                                      "please report it", INTERNAL_ERROR)
            close = True
        self.metrics.response(label, reply.status)
        response = web.Response(status=reply.status, body=reply.body,
                                headers={"Content-Type": reply.content_type, **dict(reply.headers)})
        if close or self.draining:
            response.force_close()
        connection.request_done()
        return response

    async def _answer(self, request: web.BaseRequest, connection: _Connection) -> tuple[Reply, bool]:
        """The reply, and whether to close the connection after it (when a body is left unread)."""
        headers = request.headers
        has_body = request.body_exists
        if connection.over_limit:
            return status_reply(503, f"over {self.limits.max_connections} open connections: retry shortly",
                                UNAVAILABLE), True
        head = Call(request.method, request.path, headers.get("Content-Type"), headers.get("Authorization"), b"",
                    request.remote, headers)
        service = self.service
        admitted = service.routes.admit(head)
        if isinstance(admitted, Reply):
            return admitted, has_body
        route = admitted
        if not has_body:
            return await route.handler(head), False
        length = request.content_length
        if length is not None and length > route.max_body:
            return body_too_large(route), True
        encoding = headers.get("Content-Encoding", "identity")
        if encoding.lower() != "identity":
            return status_reply(415, f"Content-Encoding {encoding[:50]!r} is not supported: send the body "
                                     "uncompressed"), True
        expect = headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            return status_reply(417, f"Expect: {expect[:100]!r} is not supported; send 'Expect: 100-continue' "
                                     "or none"), True
        budget = _Reservation(self)
        try:
            if not budget.take(length or 0):
                return self._busy(), True
            if expect is not None:
                await request.writer.write(CONTINUE)
                request.writer.output_size = 0  # as aiohttp's own expect handler: the response has not begun
            body = await self._read_body(request, route, budget)
            if isinstance(body, Reply):
                return body, True
            return await route.handler(Call(head.method, head.path, head.content_type, head.authorization, body,
                                            head.remote, headers)), False
        finally:
            budget.release()

    async def _read_body(self, request: web.BaseRequest, route: Route, budget: _Reservation) -> bytes | Reply:
        """The body, or the reply refusing it: over the route's limit (413), over the buffer budget
        (503), or paused for longer than ``body_idle_timeout`` (408)."""
        content = request.content
        idle = self.limits.body_idle_timeout
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(idle) as timer:
                while chunk := await content.readany():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > route.max_body:
                        return body_too_large(route)
                    if not budget.take(size):
                        return self._busy()
                    timer.reschedule(loop.time() + idle)
        except TimeoutError:
            return status_reply(408, f"the request body paused for over {idle:g}s: send it without stalling")
        except RequestPayloadError as exc:
            return status_reply(400, f"malformed request body: {exc}")
        except ConnectionError:
            return status_reply(400, "the client closed the connection before its body was complete")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _busy(self) -> Reply:
        return status_reply(503, f"the server is holding {self.limits.max_buffered_bytes} bytes of large request "
                                 "bodies already: retry shortly, or send smaller batches", UNAVAILABLE)


class _Reservation:
    """One request's share of the bytes all large bodies may hold together (``max_buffered_bytes``).

    Bodies up to ``large_body_bytes`` take no share: a few KiB per connection, bounded by
    ``max_connections``, and never turned away for room that large uploads hold."""

    def __init__(self, endpoint: HttpEndpoint) -> None:
        self._endpoint = endpoint
        self._held = 0

    def take(self, size: int) -> bool:
        """Hold ``size`` bytes in all (growing what is held); False when that would pass the budget."""
        limits = self._endpoint.limits
        if size <= self._held or size <= limits.large_body_bytes:
            return True
        metrics = self._endpoint.metrics
        if metrics.buffered_bytes - self._held + size > limits.max_buffered_bytes:
            return False
        metrics.buffered_bytes += size - self._held
        self._held = size
        return True

    def release(self) -> None:
        """Give the share back; the last large body of a burst to go asks for a heap trim."""
        if not self._held:
            return
        metrics = self._endpoint.metrics
        metrics.buffered_bytes -= self._held
        self._held = 0
        if metrics.buffered_bytes == 0:
            self._endpoint.heap.freed()


class _Connection(RequestHandler):
    """aiohttp's per-connection handler plus what it lacks: a deadline for a request's headers, the
    endpoint's count of open connections, and Seldon status bodies for malformed HTTP."""

    def __init__(self, endpoint: HttpEndpoint, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._endpoint = endpoint
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._counted = False
        self.over_limit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        metrics = self._endpoint.metrics
        metrics.connections += 1
        self._counted = True
        self.over_limit = metrics.connections > self._endpoint.limits.max_connections
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        if self._counted:
            self._endpoint.metrics.connections -= 1
            self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and not self._in_request:
            self._start_header_timer()  # the first bytes of the next request on a keep-alive connection
        super().data_received(data)

    def request_started(self) -> None:
        self._in_request = True
        self._stop_header_timer()

    def request_done(self) -> None:
        self._in_request = False

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400, 413, 431…), as a counted Seldon body."""
        self._endpoint.metrics.response(OTHER_PATH, status)
        info = f"malformed HTTP request: {message or (type(exc).__name__ if exc else 'unreadable')}"
        response = web.Response(status=status, body=status_body(status, info[:300], "MICROSERVICE_BAD_DATA"),
                                content_type=JSON)
        response.force_close()
        return response

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._endpoint.limits.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        """Answer a 408 straight onto the socket (there is no request to answer through) and close."""
        self._header_timer = None
        transport = self.transport
        if self._in_request or transport is None:
            return
        self._endpoint.metrics.response(OTHER_PATH, 408)
        transport.write(_raw_reply(408, "Request Timeout", status_body(
            408, f"the request headers took over {self._endpoint.limits.header_timeout:g}s: send them at once",
            "MICROSERVICE_BAD_DATA")))
        self.force_close()


class _Server(web.Server):
    """``web.Server`` whose connections are ``_Connection``s."""

    def __init__(self, endpoint: HttpEndpoint, handler: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._endpoint = endpoint
        self._connection_kwargs = kwargs

    def __call__(self) -> RequestHandler:
        return _Connection(self._endpoint, self, loop=asyncio.get_running_loop(), **self._connection_kwargs)


def _raw_reply(status: int, phrase: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


async def start_http(service: Service, host: str, port: int, *, sock: socket.socket | None = None,
                     limits: EndpointLimits | None = None) -> HttpEndpoint:
    """Serve ``service``; what the process holds by now (modules, the model, the graph) lives as long
    as it does, so it is frozen out of the collector's reach first.

    Without that, every full collection walks the whole heap of numpy, aiohttp and the rest: 30–40 ms
    on the request that happens to trigger it, once every few hundred 1000-row requests.
    """
    gc.freeze()
    endpoint = HttpEndpoint(service, limits)
    await endpoint.start(sock if sock is not None else socket.create_server((host, port), backlog=1024))
    return endpoint
