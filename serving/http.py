"""The one module that knows aiohttp: turns HTTP requests into ``Call``s and ``Reply``s back.

aiohttp's low-level ``web.Server`` is used without an ``Application``/router/middleware stack:
dispatch is a dict lookup in ``serving.service.Routes``, so the framework only parses HTTP.
aiohttp sets TCP_NODELAY on every accepted connection (``BaseProtocol.connection_made``), which keeps
keep-alive latency off Nagle's 40 ms timer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

from serving.service import Call, Service, status_reply

DRAIN_SECONDS = 30.0


@dataclass
class HttpEndpoint:
    runner: web.ServerRunner
    port: int

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to ``DRAIN_SECONDS``), then close."""
        await self.runner.cleanup()


def make_handler(service: Service) -> web.Server:
    limit = service.max_body_bytes

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
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
        if body is None:
            response.force_close()
        return response

    return web.Server(respond)


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
    runner = web.ServerRunner(make_handler(service), shutdown_timeout=DRAIN_SECONDS, access_log=None)
    await runner.setup()
    if sock is None:
        sock = socket.create_server((host, port), backlog=1024)
    site = web.SockSite(runner, sock)
    await site.start()
    return HttpEndpoint(runner, int(sock.getsockname()[1]))
