"""The A/B executor's logic: decode → route → forward to the chosen arm → encode, plus feedback,
health, metrics and the OAuth gate, with no web framework in sight.

The executor never predicts itself; each MODEL node is an ``Arm`` (in production an ``ArmLink`` to
its own process, in unit tests anything with the same shape). Keeping HTTP out of here means the
whole request life is testable by calling ``Executor.handle`` with a ``Call``.

Faults, as the executor answers them (``EndpointLimits`` holds the numbers):

* every prediction is answered within ``request_deadline``. When its arm is down, or gives no answer
  within its share of the deadline (half of what is left while another arm could still take over),
  ``on_arm_down="failover"`` sends it to the other arm, and ``meta.routing`` names the arm that
  answered; ``"fail"`` answers 503 (504 past the deadline) naming the routed arm. Failovers are
  counted per arm (``abflow_failovers_total``). An arm that hangs is found by its link's liveness
  probe, which fails its requests at once, so they fail over in ~3 s, well within the deadline.
* the unauthenticated surface (``/health/*``, ``/ready``, ``/live``, ``/metrics``) tells states and
  counts: arm names, up/down and why, never a pid, port, file path or URI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import orjson

from abflow.serving.armlink import ArmFailed, ArmInfo, ArmUnavailable, Rows
from abflow.serving.graph import HEADER_UNIT, Graph
from abflow.serving.limits import FAILOVER, EndpointLimits
from abflow.serving.metrics import NO_ARM, ServingMetrics
from abflow.serving.oauth import MAX_TOKEN_BODY_BYTES, UNAUTHORIZED, OAuthError, TokenIssuer
from abflow.serving.protocol import (
    INTERNAL_ERROR,
    MAX_BODY_BYTES,
    PredictionRequest,
    SeldonError,
    decode_feedback,
    decode_prediction_request,
    encode_prediction_response,
    new_puid,
)
from abflow.serving.routers import Router, make_router, pinned_arm
from abflow.serving.service import Call, Reply, Routes, status_reply

T = TypeVar("T")
UNAVAILABLE = "MICROSERVICE_UNAVAILABLE"
TIMEOUT = "MICROSERVICE_TIMEOUT"
_PATH_OR_URI = re.compile(r"[a-zA-Z][\w+.-]*://\S*|(?<![\w.])/[^\s'\"]+")
PREDICTION_PATHS = ("/api/v1.0/predictions", "/api/v0.1/predictions")
FEEDBACK_PATHS = ("/api/v1.0/feedback", "/api/v0.1/feedback")
ROUTE_HEADER = "x-seldon-route"
"""Names the arm that served (``:classifier-1:``, Seldon v2's form); a client that sends it back is
pinned to that arm."""


class Arm(Protocol):
    """One MODEL node as the executor sees it."""

    name: str
    info: ArmInfo | None
    last_error: str | None

    @property
    def up(self) -> bool: ...

    async def connect(self) -> ArmInfo: ...

    async def predict(self, rows: Rows) -> Rows: ...


class Executor:
    """Serves one graph: a single MODEL node, or a RANDOM_ABTEST router over two.

    ``arms`` are in child order (arm 0 is the router's first child). ``model_uris`` maps node name →
    URI and is what ``meta.requestPath`` reports for nodes without an image. ``limits`` defaults to
    ``EndpointLimits.from_env()``. ``experiment`` (the experiment id; the graph name when there is
    none) salts a sticky router's hash, so each experiment reshuffles who sees which arm.
    """

    def __init__(self, graph: Graph, model_uris: dict[str, str], arms: Sequence[Arm], *,
                 router: Router | None = None, metrics: ServingMetrics | None = None, experiment: str | None = None,
                 limits: EndpointLimits | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        nodes = graph.model_nodes()
        if [arm.name for arm in arms] != [node.name for node in nodes]:
            raise ValueError(f"arms {[a.name for a in arms]} do not match the graph's MODEL nodes "
                             f"{[n.name for n in nodes]}")
        self.graph = graph
        self.arms = tuple(arms)
        self.metrics = metrics or ServingMetrics()
        self.limits = limits or EndpointLimits.from_env()
        self.max_body_bytes = max_body_bytes
        node = graph.router
        self._router_name = node.name if node is not None else None
        self._unit = node.unit_source if node is not None else None
        salt = (experiment or graph.name) if self._unit is not None else None
        self.router = router if router is not None or node is None else make_router(node, salt=salt)
        self._arm_names = tuple(n.name for n in nodes)
        self._route_headers = tuple(((ROUTE_HEADER, f":{n.name}:"),) if node is not None else () for n in nodes)
        self._request_paths = tuple({n.name: n.image or model_uris[n.name]} for n in nodes)
        self._routings = tuple({self._router_name: i} if self._router_name else {} for i in range(len(nodes)))
        self._failover = self.limits.on_arm_down == FAILOVER and len(self.arms) > 1
        self._features: int | None = None
        self._features_known = False
        self._decoder: ThreadPoolExecutor | None = None
        self._oauth = (TokenIssuer(graph.oauth_key, graph.oauth_secret)
                       if graph.oauth_key is not None and graph.oauth_secret is not None else None)
        bearer = self._check_bearer if self._oauth is not None else None
        self.routes = Routes(max_body_bytes)
        for path in PREDICTION_PATHS:
            self.routes.add("POST", path, self.predict, guard=bearer)
        for path in FEEDBACK_PATHS:
            self.routes.add("POST", path, self.feedback, guard=bearer)
        if self._oauth is not None:
            self.routes.add("POST", "/oauth/token", self.token, guard=self._admit_token_request,
                            max_body=MAX_TOKEN_BODY_BYTES)
        self.routes.add("GET", "/health/ping", self.ping)
        self.routes.add("GET", "/live", self.ping)
        self.routes.add("GET", "/ready", self.ready)
        self.routes.add("GET", "/health/status", self.health_status)
        self.routes.add("GET", "/metrics", self.prometheus)

    async def handle(self, call: Call) -> Reply:
        return await self.routes.dispatch(call)

    async def predict(self, call: Call) -> Reply:
        started = time.perf_counter()
        arm_name = NO_ARM
        metrics = self.metrics
        metrics.inflight += 1
        status = 500
        large = len(call.body) > self.limits.large_body_bytes
        try:
            try:
                request = await self._off_loop(large, decode_prediction_request, call.body, call.content_type,
                                               n_features=self._n_features())
                routed = self._route(call, request)
                index, probabilities = await self._serve(request.features, routed)
                arm_name = self.arms[index].name
                body = await self._off_loop(large, self._encode, request, probabilities, index)
                reply = Reply(200, body, headers=self._route_headers[index])
            except SeldonError as exc:
                reply = Reply(exc.code, exc.body())
            except _ArmError as exc:
                arm_name = exc.arm
                reply = Reply(exc.error.code, exc.error.body())
            status = reply.status
            return reply
        finally:
            metrics.inflight -= 1
            metrics.observe(arm_name, status, time.perf_counter() - started, None if status == 200 else str(status))

    async def feedback(self, call: Call) -> Reply:
        """Count a reward for the arm named in ``response.meta.routing`` (a reward of 0 counts too)."""
        try:
            feedback = decode_feedback(call.body, call.content_type, max_abs_reward=self.limits.max_abs_reward)
            index = self._feedback_arm(feedback.routing)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        if self.router is not None:
            self.router.feedback(index, feedback.reward)
        self.metrics.feedback(self.arms[index].name, feedback.reward)
        return Reply(200, orjson.dumps({"meta": {"puid": new_puid(), "tags": {}, "routing": self._routings[index],
                                                 "requestPath": self._request_paths[index]}}))

    async def token(self, call: Call) -> Reply:
        assert self._oauth is not None
        try:
            return Reply(200, self._oauth.issue(call.authorization, call.body, call.remote),
                         headers=(("Cache-Control", "no-store"),))
        except OAuthError as exc:
            return Reply(exc.code, exc.body(), headers=exc.headers())

    async def ping(self, call: Call) -> Reply:
        return Reply(200, b"pong", "text/plain")

    async def ready(self, call: Call) -> Reply:
        down = [arm for arm in await self._probe() if not arm["up"]]
        if down:
            names = ", ".join(f"{a['name']!r} ({a['reason']})" for a in down)
            return status_reply(503, f"not ready: model arm {names} is down", UNAVAILABLE)
        return Reply(200, b'{"status":"ready"}')

    async def health_status(self, call: Call) -> Reply:
        """Per-arm health; "degraded" while some arm is down (the other still serves), "down" if all are."""
        arms = await self._probe()
        if self.router is not None:
            # The A/B report's raw numbers: traffic and feedback (a reward of 0 counts) per arm.
            for arm, stats in zip(arms, self.router.stats, strict=True):
                arm.update(routed=stats.routed, feedback=stats.feedback, mean_reward=stats.mean_reward)
        up = sum(arm["up"] for arm in arms)
        status = "ok" if up == len(arms) else "degraded" if up else "down"
        body = {"status": status, "graph": self.graph.name, "router": self._router_name,
                "ratioA": self.graph.router.ratio_a if self.graph.router else None,
                "unit": self.graph.router.unit if self.graph.router else None, "arms": arms}
        return Reply(200 if up else 503, orjson.dumps(body))

    async def prometheus(self, call: Call) -> Reply:
        return Reply(200, self.metrics.exposition(), self.metrics.content_type)

    def _route(self, call: Call, request: PredictionRequest) -> int:
        """The arm a request goes to: the one its route header pins, else the router's choice, by the
        request's unit when the graph is sticky (a request without one is split at random, and counted)."""
        if self.router is None:
            return 0
        pinned = pinned_arm(call.headers.get(ROUTE_HEADER), self._arm_names)
        if pinned is not None:
            return pinned
        if self._unit is None:
            return self.router.route(request)
        kind, key = self._unit
        raw = call.headers.get(key) if kind == HEADER_UNIT else request.tags.get(key)
        unit = str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) and raw != "" else None
        if unit is None:
            self.metrics.sticky_fallback(self._router_name or "")
        return self.router.route(request, unit)

    async def _serve(self, rows: Rows, routed: int) -> tuple[int, Rows]:
        """Predict on the routed arm or, when it is down or too slow and failover is on, on another one:
        the index of the arm that answered and its probabilities. Failures raise ``_ArmError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_deadline
        order = [routed]
        if self._failover:
            others = [i for i in range(len(self.arms)) if i != routed]
            if not self.arms[routed].up and any(self.arms[i].up for i in others):
                order = others  # known to be down: straight to a healthy arm, no connect attempt
                self.metrics.failover(self.arms[routed].name, self.arms[others[0]].name)
            else:
                order += others
        failure: SeldonError | None = None
        for attempt, index in enumerate(order):
            arm = self.arms[index]
            last = attempt == len(order) - 1
            share = deadline - loop.time() if last else (deadline - loop.time()) / 2
            try:
                async with asyncio.timeout(share):
                    return index, await arm.predict(rows)
            except TimeoutError:
                failure = failure or SeldonError(
                    504, f"model arm {arm.name!r} gave no answer within {share:.3g}s (the request deadline is "
                         f"{self.limits.request_deadline:g}s)", TIMEOUT)
            except ArmUnavailable as exc:
                failure = failure or SeldonError(503, f"{_public(str(exc))}; retry shortly, the supervisor "
                                                      "restarts it", UNAVAILABLE)
            except ArmFailed as exc:
                raise _ArmError(arm.name, SeldonError(500, f"model arm {arm.name!r} failed: {exc}",
                                                      INTERNAL_ERROR)) from None
            if not last:
                self.metrics.failover(arm.name, self.arms[order[attempt + 1]].name)
        assert failure is not None
        raise _ArmError(self.arms[routed].name, failure)

    def _encode(self, request: PredictionRequest, probabilities: Rows, index: int) -> bytes:
        info = self.arms[index].info
        assert info is not None
        return encode_prediction_response(request, probabilities, info.class_names,
                                          puid=request.puid or new_puid(), routing=self._routings[index],
                                          request_path=self._request_paths[index])

    async def _off_loop(self, large: bool, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)``, for a large request in the decoder thread.

        A large body's decode holds the interpreter for ~25 ms per MiB on the loop; in the thread,
        the loop gets the interpreter back between the decoder's steps (each C call: orjson's parse,
        numpy's conversion), so other clients wait for one step, ~10 ms per MiB, not the whole decode.
        One thread: large decodes take turns, so their transient memory is that of one at a time."""
        if not large:
            return function(*args, **kwargs)
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="abflow-decode")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, lambda: function(*args, **kwargs))

    def _n_features(self) -> int | None:
        """The feature count every arm agrees on, so the decoder can say "expected 4, got 3".

        Worked out once, when every arm has said hello (an arm restarts with the same model, so the
        answer never changes); until then each request asks again.
        """
        if self._features_known:
            return self._features
        infos = [arm.info for arm in self.arms]
        if any(info is None for info in infos):
            return None
        counts = {info.n_features for info in infos if info is not None}
        self._features = counts.pop() if len(counts) == 1 else None
        self._features_known = True
        return self._features

    def _feedback_arm(self, routing: dict[str, int]) -> int:
        if self._router_name is None:
            return 0
        index = routing.get(self._router_name)
        if index is None or index >= len(self.arms):
            raise SeldonError(400, f"response.meta.routing must name router {self._router_name!r} with "
                                   f"child 0 or 1 (send back the prediction response), got {routing!r}")
        return index

    def _check_bearer(self, call: Call) -> Reply | None:
        """The guard of predictions and feedback: a live bearer token, checked before the body is read."""
        assert self._oauth is not None
        try:
            self._oauth.check(call.authorization)
        except OAuthError as exc:
            return status_reply(401, exc.description, UNAUTHORIZED,
                                headers=(("WWW-Authenticate", 'Bearer realm="abflow"'),))
        return None

    def _admit_token_request(self, call: Call) -> Reply | None:
        assert self._oauth is not None
        try:
            self._oauth.admit(call.authorization, call.remote)
        except OAuthError as exc:
            return Reply(exc.code, exc.body(), headers=exc.headers())
        return None

    async def _probe(self) -> list[dict[str, Any]]:
        report: list[dict[str, Any]] = []
        for index, arm in enumerate(self.arms):
            if not arm.up:
                with contextlib.suppress(ArmUnavailable):
                    await arm.connect()
            reason = arm.last_error
            report.append({"name": arm.name, "index": index, "up": arm.up, "status": "up" if arm.up else "down",
                           "reason": _public(reason) if reason is not None else None})
        return report


def _public(text: str) -> str:
    """``text`` without file paths or URIs: arm reasons reach unauthenticated callers."""
    return _PATH_OR_URI.sub("<path>", text)


class _ArmError(Exception):
    """A prediction that no arm answered: the arm to count it against and the error to send."""

    def __init__(self, arm: str, error: SeldonError) -> None:
        super().__init__(error.info)
        self.arm = arm
        self.error = error
