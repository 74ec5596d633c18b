"""The transport-free shape of an HTTP exchange, shared by the executor and the model server.

Both cores take a ``Call`` and return a ``Reply``; ``abflow.serving.http`` is the only module that knows
which web framework turns sockets into calls. Path dispatch lives here too, so unknown paths (404)
and wrong methods (405) get Seldon status bodies instead of a framework's HTML.

A request is answered in two steps, so that nothing proportional to its size is spent before its
caller is known: ``UrlDispatch.admit`` looks only at the head (method, path, headers) and either refuses
it (404, 405, or the route's ``guard``: a missing token is a 401) or names the ``Route`` with the
most body bytes that route accepts; only then does the transport read the body and call the route's
handler. ``UrlDispatch.dispatch`` does both steps for callers that already hold the body (tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from abflow.serving.metrics import ServingMetrics
from abflow.serving.protocol import BAD_DATA, MAX_BODY_BYTES, status_body

JSON = "application/json"
ROUTE_HEADER = "x-seldon-route"
"""Names the arm that served a prediction (``:classifier-1:``, Seldon v2's form); a client that sends
it back to the executor is pinned to that arm."""
OTHER_PATH = "other"
"""The metrics label of every path that is not a route (so clients cannot mint label values)."""


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    content_type: str | None
    authorization: str | None
    body: bytes
    remote: str | None = None
    """The client's address (for per-client limits), when the transport knows it."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Every request header (case-insensitive under HTTP), for handlers that need more than the above."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Call], Awaitable[Reply]]
Guard = Callable[[Call], "Reply | None"]
"""Looks at a call's head only (its body is not read yet): a refusal, or None to go on."""


@dataclass(frozen=True, slots=True)
class Route:
    path: str
    handler: Handler
    max_body: int
    guard: Guard | None = None


class Service(Protocol):
    """What ``abflow.serving.http`` serves: routes to admit and answer calls, the metrics that count
    every response, and the body limit of routes that do not set their own."""

    max_body_bytes: int
    routes: UrlDispatch

    @property
    def metrics(self) -> ServingMetrics: ...  # read-only here, so a service may hold a subclass


def status_reply(code: int, info: str, reason: str = BAD_DATA,
                 headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(code, status_body(code, info, reason), headers=headers)


class UrlDispatch:
    """A path → method → route table. Paths are exact (a trailing slash is forgiven): the Seldon API
    is a handful of fixed paths and a dict lookup is the cheapest dispatch there is."""

    def __init__(self, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._table: dict[str, dict[str, Route]] = {}
        self._max_body_bytes = max_body_bytes
        self._gateway: str | None = None

    def add_gateway(self, deployment: str) -> None:
        """Also answer every route under ``/seldon/[<namespace>/]<deployment>``, the paths Seldon's
        ingress (Ambassador, Istio) exposes and its Python client calls with ``gateway="ambassador"`` or
        ``"istio"``; the namespace is whatever the client names, the deployment must be this one."""
        self._gateway = deployment

    def add(self, method: str, path: str, handler: Handler, *, guard: Guard | None = None,
            max_body: int | None = None) -> None:
        """Route ``method path`` to ``handler``, behind ``guard``; a GET takes no body, other methods
        up to ``max_body`` bytes (default: the service's limit)."""
        if method == "GET":
            max_body = 0
        route = Route(path, handler, self._max_body_bytes if max_body is None else max_body, guard)
        self._table.setdefault(path, {})[method] = route
        if method == "GET":
            self._table[path].setdefault("HEAD", route)

    def label(self, path: str) -> str:
        """``path`` as the table knows it, or ``OTHER_PATH``: the metrics label of a request to it."""
        methods = self._methods(path)
        return next(iter(methods.values())).path if methods else OTHER_PATH

    def admit(self, call: Call) -> Route | Reply:
        """The route that will answer ``call``, or the reply refusing it, from the call's head alone."""
        path = call.path
        methods = self._methods(path)
        if methods is None:
            return status_reply(404, f"no endpoint at {path[:200]!r}; predictions go to POST /api/v1.0/predictions")
        route = methods.get(call.method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            return status_reply(405, f"{call.method} is not allowed on {path}; use {allowed}",
                                headers=(("Allow", allowed),))
        refusal = route.guard(call) if route.guard is not None else None
        return route if refusal is None else refusal

    def _methods(self, path: str) -> dict[str, Route] | None:
        if self._gateway is not None and path.startswith("/seldon/"):
            return next(filter(None, map(self._methods_at, self._behind_gateway(path))), None)
        return self._methods_at(path)

    def _methods_at(self, path: str) -> dict[str, Route] | None:
        methods = self._table.get(path)
        if methods is None and len(path) > 1 and path.endswith("/"):
            methods = self._table.get(path.rstrip("/"))
        return methods

    def _behind_gateway(self, path: str) -> list[str]:
        """What ``/seldon/<namespace>/<deployment>/api/...`` or ``/seldon/<deployment>/api/...`` may
        wrap, namespaced reading first (a namespace may share the deployment's name)."""
        parts = path.split("/")  # "", "seldon", namespace or deployment, deployment or the route...
        return ["/" + "/".join(parts[at + 1:]) for at in (3, 2) if len(parts) > at + 1 and parts[at] == self._gateway]

    async def dispatch(self, call: Call) -> Reply:
        admitted = self.admit(call)
        if isinstance(admitted, Reply):
            return admitted
        if len(call.body) > admitted.max_body:
            return body_too_large(admitted)
        return await admitted.handler(call)


def body_too_large(route: Route) -> Reply:
    if route.max_body == 0:
        return status_reply(413, f"{route.path} takes no request body: send none")
    return status_reply(413, f"request body is over the limit of {route.max_body} bytes for {route.path}: "
                             "send smaller batches")
