"""The A/B executor's logic: decode → route → forward to the chosen arm → encode, plus feedback,
health, metrics and the OAuth gate, with no web framework in sight.

The executor never predicts itself; each MODEL node is an ``Arm`` (in production an ``ArmLink`` to
its own process, in unit tests anything with the same shape). Keeping HTTP out of here means the
whole request life is testable by calling ``Executor.handle`` with a ``Call``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from abflow.serving.armlink import ArmFailed, ArmInfo, ArmUnavailable, Rows
from abflow.serving.graph import Graph
from abflow.serving.metrics import NO_ARM, ServingMetrics
from abflow.serving.oauth import OAuthError, TokenIssuer
from abflow.serving.protocol import (
    INTERNAL_ERROR,
    MAX_BODY_BYTES,
    SeldonError,
    decode_feedback,
    decode_prediction_request,
    encode_prediction_response,
    new_puid,
)
from abflow.serving.routers import Router, make_router
from abflow.serving.service import Call, Reply, Routes, status_reply

UNAVAILABLE = "MICROSERVICE_UNAVAILABLE"
UNAUTHORIZED = "UNAUTHORIZED"
PREDICTION_PATHS = ("/api/v1.0/predictions", "/api/v0.1/predictions")
FEEDBACK_PATHS = ("/api/v1.0/feedback", "/api/v0.1/feedback")


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
    URI and is what ``meta.requestPath`` reports for nodes without an image.
    """

    def __init__(self, graph: Graph, model_uris: dict[str, str], arms: Sequence[Arm], *,
                 router: Router | None = None, metrics: ServingMetrics | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        nodes = graph.model_nodes()
        if [arm.name for arm in arms] != [node.name for node in nodes]:
            raise ValueError(f"arms {[a.name for a in arms]} do not match the graph's MODEL nodes "
                             f"{[n.name for n in nodes]}")
        self.graph = graph
        self.arms = tuple(arms)
        self.metrics = metrics or ServingMetrics()
        self.max_body_bytes = max_body_bytes
        node = graph.router
        self._router_name = node.name if node is not None else None
        self.router = router if router is not None or node is None else make_router(node)
        self._request_paths = tuple({n.name: n.image or model_uris[n.name]} for n in nodes)
        self._routings = tuple({self._router_name: i} if self._router_name else {} for i in range(len(nodes)))
        self._features: int | None = None
        self._features_known = False
        self._oauth = (TokenIssuer(graph.oauth_key, graph.oauth_secret)
                       if graph.oauth_key is not None and graph.oauth_secret is not None else None)
        self.routes = Routes()
        for path in PREDICTION_PATHS:
            self.routes.add("POST", path, self.predict)
        for path in FEEDBACK_PATHS:
            self.routes.add("POST", path, self.feedback)
        if self._oauth is not None:
            self.routes.add("POST", "/oauth/token", self.token)
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
        try:
            self._authorize(call)
            request = decode_prediction_request(call.body, call.content_type, n_features=self._n_features())
            index = self.router.route(request) if self.router is not None else 0
            arm = self.arms[index]
            arm_name = arm.name
            probabilities = await arm.predict(request.features)
            info = arm.info
            assert info is not None
            body = encode_prediction_response(request, probabilities, info.class_names,
                                              puid=request.puid or new_puid(), routing=self._routings[index],
                                              request_path=self._request_paths[index])
            reply = Reply(200, body)
        except SeldonError as exc:
            reply = Reply(exc.code, exc.body())
        except _Unauthorized as exc:
            reply = exc.reply
        except ArmUnavailable as exc:
            reply = status_reply(503, f"{exc}; retry shortly, the supervisor restarts it", UNAVAILABLE)
        except ArmFailed as exc:
            reply = status_reply(500, f"model arm {arm_name!r} failed: {exc}", INTERNAL_ERROR)
        finally:
            metrics.inflight -= 1
        metrics.observe(arm_name, reply.status, time.perf_counter() - started,
                        None if reply.status == 200 else str(reply.status))
        return reply

    async def feedback(self, call: Call) -> Reply:
        """Count a reward for the arm named in ``response.meta.routing`` (a reward of 0 counts too)."""
        try:
            self._authorize(call)
            feedback = decode_feedback(call.body, call.content_type)
            index = self._feedback_arm(feedback.routing)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        except _Unauthorized as exc:
            return exc.reply
        if self.router is not None:
            self.router.feedback(index, feedback.reward)
        self.metrics.feedback(self.arms[index].name, feedback.reward)
        return Reply(200, orjson.dumps({"meta": {"puid": new_puid(), "tags": {}, "routing": self._routings[index],
                                                 "requestPath": self._request_paths[index]}}))

    async def token(self, call: Call) -> Reply:
        assert self._oauth is not None
        try:
            return Reply(200, self._oauth.issue(call.authorization, call.body),
                         headers=(("Cache-Control", "no-store"),))
        except OAuthError as exc:
            return Reply(exc.code, exc.body(), headers=(("WWW-Authenticate", 'Basic realm="abflow"'),))

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
                "ratioA": self.graph.router.ratio_a if self.graph.router else None, "arms": arms}
        return Reply(200 if up else 503, orjson.dumps(body))

    async def prometheus(self, call: Call) -> Reply:
        return Reply(200, self.metrics.exposition(), self.metrics.content_type)

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

    def _authorize(self, call: Call) -> None:
        if self._oauth is None:
            return
        try:
            self._oauth.check(call.authorization)
        except OAuthError as exc:
            raise _Unauthorized(status_reply(401, exc.description, UNAUTHORIZED,
                                             headers=(("WWW-Authenticate", 'Bearer realm="abflow"'),))) from None

    async def _probe(self) -> list[dict[str, Any]]:
        report: list[dict[str, Any]] = []
        for index, arm in enumerate(self.arms):
            if not arm.up:
                with contextlib.suppress(ArmUnavailable):
                    await arm.connect()
            info = arm.info
            report.append({"name": arm.name, "index": index, "up": arm.up,
                           "status": "up" if arm.up else "down", "reason": arm.last_error,
                           "uri": info.uri if info else None, "pid": info.pid if info else None,
                           "port": info.port if info else None})
        return report


class _Unauthorized(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__("unauthorized")
        self.reply = reply

