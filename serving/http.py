"""The one module that knows aiohttp: turns HTTP requests into ``Call``s and ``Reply``s back.

aiohttp's low-level ``web.Server`` is used without an ``Application``/router/middleware stack:
dispatch is a dict lookup in ``abflow.serving.service.Routes``, so the framework only parses HTTP.
aiohttp sets TCP_NODELAY on every accepted connection (``BaseProtocol.connection_made``), which keeps
keep-alive latency off Nagle's 40 ms timer.
"""

from __future__ import annotations

import asyncio
import gc
import socket

from aiohttp import web

from abflow.serving.service import Call, Service, status_reply

DRAIN_SECONDS = 30.0
HANDOVER_SECONDS = 2.0
HANDOVER_POLL = 0.02


class HttpEndpoint:
    """A ``Service`` served over HTTP, stopped gracefully for in-flight and keep-alive clients alike."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.port = 0
        self.draining = False
        self.server = web.Server(self._respond)
        self.runner = web.ServerRunner(self.server, shutdown_timeout=DRAIN_SECONDS, access_log=None)
        self._site: web.SockSite | None = None

    async def start(self, sock: socket.socket) -> None:
        await self.runner.setup()
        self._site = web.SockSite(self.runner, sock)
        await self._site.start()
        self.port = int(sock.getsockname()[1])

    async def stop(self, handover: bool = False) -> None:
        """Stop accepting, let in-flight requests finish (up to ``DRAIN_SECONDS``), then close.

        From here on every response closes its connection. With ``handover`` (another server took
        over this port), keep-alive connections also get up to ``HANDOVER_SECONDS`` to send their next
        request before being closed: a client that is sending gets its answer plus ``Connection:
        close`` and reconnects to the successor, instead of racing a close it cannot see coming (a
        POST on a keep-alive connection closed under it fails, and clients do not retry POSTs).
        """
        self.draining = True
        if self._site is not None:
            await self._site.stop()
        if handover:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HANDOVER_SECONDS
            while self.server.connections and loop.time() < deadline:
                await asyncio.sleep(HANDOVER_POLL)
        await self.runner.cleanup()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        service = self.service
        limit = service.max_body_bytes
        body: bytes | None = b""
        if request.body_exists:
            length = request.content_length
            body = await _read_limited(request, limit) if length is None or length <= limit else None
        if body is None:
            reply = status_reply(413, f"request body is over the limit of {limit} bytes: send smaller batches")
        else:
            headers = request.headers
            reply = await service.handle(Call(request.method, request.path, headers.get("Content-Type"),
                                              headers.get("Authorization"), body))
        response = web.Response(status=reply.status, body=reply.body,
                                headers={"Content-Type": reply.content_type, **dict(reply.headers)})
        if body is None or self.draining:
            response.force_close()
        return response


async def _read_limited(request: web.BaseRequest, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` (chunked uploads carry no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def start_http(service: Service, host: str, port: int, *, sock: socket.socket | None = None) -> HttpEndpoint:
    """Serve ``service``; what the process holds by now (modules, the model, the graph) lives as long
    as it does, so it is frozen out of the collector's reach first.

    Without that, every full collection walks the whole heap of numpy, aiohttp and the rest: 30–40 ms
    on the request that happens to trigger it, once every few hundred 1000-row requests.
    """
    gc.freeze()
    endpoint = HttpEndpoint(service)
    await endpoint.start(sock if sock is not None else socket.create_server((host, port), backlog=1024))
    return endpoint
