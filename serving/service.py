"""The transport-free shape of an HTTP exchange, shared by the executor and the model server.

Both cores take a ``Call`` and return a ``Reply``; ``abflow.serving.http`` is the only module that knows
which web framework turns sockets into calls. Path dispatch lives here too, so unknown paths (404)
and wrong methods (405) get Seldon status bodies instead of a framework's HTML.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from abflow.serving.protocol import BAD_DATA, status_body

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    content_type: str | None
    authorization: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Call], Awaitable[Reply]]


class Service(Protocol):
    """What ``abflow.serving.http`` serves: a body limit it enforces before reading, and one entry point."""

    max_body_bytes: int

    async def handle(self, call: Call) -> Reply: ...


def status_reply(code: int, info: str, reason: str = BAD_DATA,
                 headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(code, status_body(code, info, reason), headers=headers)


class Routes:
    """A path → method → handler table. Paths are exact (a trailing slash is forgiven): the Seldon API
    is a handful of fixed paths and a dict lookup is the cheapest dispatch there is."""

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._table.setdefault(path, {})[method] = handler
        if method == "GET":
            self._table[path].setdefault("HEAD", handler)

    async def dispatch(self, call: Call) -> Reply:
        path = call.path
        methods = self._table.get(path)
        if methods is None and len(path) > 1 and path.endswith("/"):
            methods = self._table.get(path.rstrip("/"))
        if methods is None:
            return status_reply(404, f"no endpoint at {path!r}; predictions go to POST /api/v1.0/predictions")
        handler = methods.get(call.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return status_reply(405, f"{call.method} is not allowed on {path}; use {allowed}",
                                headers=(("Allow", allowed),))
        return await handler(call)
