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

Outcomes, with an ``experiment``: every prediction (status, latency, the arm that answered; one that
reached no arm, refused before routing, belongs to no arm and is not recorded) and every counted
feedback goes into ``ledger`` (``abflow.serving.ledger``), which flushes twice a second.

Feedback finds its arm by ``response.meta.routing`` or, without one, by the prediction's
``meta.puid`` (``abflow.serving.puids`` remembers the arm of each recent prediction; its window is
stated there). Each puid's feedback counts once: a repeat is answered 200 with a status saying it was
already counted (``FEEDBACK_ALREADY_COUNTED``) and is counted nowhere, so a client retrying after a
lost answer neither double-counts nor sees a failure. Routing that contradicts the arm remembered
for the puid is refused with 409: nobody can credit the wrong arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import orjson

from abflow.serving.armlink import ArmFailed, ArmInfo, ArmUnavailable, Rows
from abflow.serving.graph import HEADER_UNIT, Graph
from abflow.serving.ledger import OutcomeLedger, read_outcomes
from abflow.serving.limits import FAILOVER, EndpointLimits
from abflow.serving.metrics import NO_ARM, ExecutorMetrics, SeldonLabels, merge_expositions
from abflow.serving.oauth import MAX_TOKEN_BODY_BYTES, UNAUTHORIZED, OAuthError, TokenIssuer
from abflow.serving.oip import (
    BINARY_HEADER,
    InferRequest,
    OipError,
    decode_infer_request,
    encode_infer_response,
    error_body,
    model_metadata,
)
from abflow.serving.protocol import (
    BAD_DATA,
    INTERNAL_ERROR,
    MAX_BODY_BYTES,
    Feedback,
    PredictionRequest,
    SeldonError,
    decode_feedback,
    decode_prediction_request,
    encode_prediction_response,
    new_puid,
)
from abflow.serving.puids import PuidMemory
from abflow.serving.routers import Router, make_router, pinned_arm, stats_from_outcomes
from abflow.serving.service import ROUTE_HEADER, Call, Reply, UrlDispatch, status_reply

T = TypeVar("T")
UNAVAILABLE = "MICROSERVICE_UNAVAILABLE"
TIMEOUT = "MICROSERVICE_TIMEOUT"
_PATH_OR_URI = re.compile(r"[a-zA-Z][\w+.-]*://\S*|(?<![\w.])/[^\s'\"]+")
PREDICTION_PATHS = ("/api/v1.0/predictions", "/api/v0.1/predictions")
FEEDBACK_PATHS = ("/api/v1.0/feedback", "/api/v0.1/feedback")
ALREADY_COUNTED = "FEEDBACK_ALREADY_COUNTED"
CONFLICT = "FEEDBACK_CONFLICT"
METADATA_PATH = "/api/v1.0/metadata"
SHADOW_QUEUE = 1000
"""Predictions waiting for the shadow at most; past it a mirror is dropped (and counted), so a slow or
dead shadow costs the served traffic nothing, not even memory."""
SHADOW_WORKERS = 2
V2_MODELS = "/v2/models"
"""The Open Inference Protocol's models: the graph by its name (routed), and each arm by its node's."""
PUID_HEADER = "Seldon-Puid"
"""The prediction's ``meta.puid``, as Seldon's orchestrator sets it on every response."""


class Arm(Protocol):
    """One MODEL node as the executor sees it."""

    name: str
    info: ArmInfo | None
    last_error: str | None

    @property
    def up(self) -> bool: ...

    async def connect(self) -> ArmInfo: ...

    async def predict(self, rows: Rows) -> Rows: ...

    async def exposition(self) -> bytes: ...

    def send_feedback(self, reward: float) -> bool: ...


class Executor:
    """Serves one graph: a single MODEL node, or a RANDOM_ABTEST router over two.

    ``arms`` are in child order (arm 0 is the router's first child). ``model_uris`` maps node name →
    URI and is what ``meta.requestPath`` reports for nodes without an image. ``limits`` defaults to
    ``EndpointLimits.from_env()``. ``experiment`` (the experiment id; the graph name when there is
    none) salts a sticky router's hash, so each experiment reshuffles who sees which arm, and names the
    experiment whose outcomes go into ``ledger`` (kept reachable as ``self.ledger``).
    """

    def __init__(self, graph: Graph, model_uris: dict[str, str], arms: Sequence[Arm], *,
                 router: Router | None = None, metrics: ExecutorMetrics | None = None, experiment: str | None = None,
                 limits: EndpointLimits | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 ledger: OutcomeLedger | None = None, shadow: Arm | None = None) -> None:
        nodes = graph.model_nodes()
        if [arm.name for arm in arms] != [node.name for node in nodes]:
            raise ValueError(f"arms {[a.name for a in arms]} do not match the graph's MODEL nodes "
                             f"{[n.name for n in nodes]}")
        self.graph = graph
        self.arms = tuple(arms)
        if ledger is not None and not experiment:
            raise ValueError("an outcome ledger needs the experiment id its outcomes belong to")
        self.metrics = metrics or ExecutorMetrics(SeldonLabels.from_env(
            deployment=graph.name, predictor=graph.predictor, predictor_version=experiment or ""))
        self.experiment = experiment
        self.ledger = ledger
        self._puids = PuidMemory()
        self._nodes = nodes
        self._arm_labels: list[tuple[ArmInfo | None, SeldonLabels] | None] = [None] * len(nodes)
        self.limits = limits or EndpointLimits.from_env()
        self.max_body_bytes = max_body_bytes
        node = graph.router
        self._router_name = node.name if node is not None else None
        self._unit = node.unit_source if node is not None else None
        salt = (experiment or graph.name) if self._unit is not None else None
        self.router = router if router is not None or node is None else make_router(node, salt=salt)
        self._arm_names = tuple(n.name for n in nodes)
        self.shadow = shadow
        self._shadow_queue: asyncio.Queue[tuple[Rows, Any]] | None = None
        self._shadow_workers: list[asyncio.Task[None]] = []
        self.shadow_counts = {"answered": 0, "error": 0, "dropped": 0, "not_mirrored": 0, "agree": 0,
                              "disagree": 0}
        self._mirror_draw = random.Random().random
        if router is None and self.router is not None and ledger is not None and experiment:
            self.router.restore(stats_from_outcomes(read_outcomes(ledger.path, experiment), self._arm_names))
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
        self.routes = UrlDispatch(max_body_bytes)
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
        self.routes.add("GET", METADATA_PATH, self.metadata, guard=bearer)
        for n in nodes:
            self.routes.add("GET", f"{METADATA_PATH}/{n.name}", self.model_metadata, guard=bearer)
        self.routes.add("GET", "/v2", self.v2_server)
        self.routes.add("GET", "/v2/health/live", self.v2_live)
        self.routes.add("GET", "/v2/health/ready", self.v2_ready)
        for model in (graph.name, *self._arm_names):
            self.routes.add("GET", f"{V2_MODELS}/{model}", self.v2_model, guard=bearer)
            self.routes.add("GET", f"{V2_MODELS}/{model}/ready", self.v2_model)
            self.routes.add("POST", f"{V2_MODELS}/{model}/infer", self.infer, guard=bearer)
        self.routes.add_gateway(graph.name)

    async def handle(self, call: Call) -> Reply:
        return await self.routes.dispatch(call)

    async def predict(self, call: Call) -> Reply:
        return await self._answer(call, decode_prediction_request, self._encode, PREDICTION_PATHS[0])

    async def infer(self, call: Call) -> Reply:
        """``POST /v2/models/<graph>/infer`` (routed like a Seldon prediction) or ``/v2/models/<arm>/infer``
        (that arm); the response's ``parameters`` name the arm, ``x-seldon-route`` too."""
        name = call.path.rstrip("/").split("/")[-2]
        pinned = None if name == self.graph.name else self._arm_names.index(name)
        decode = functools.partial(decode_infer_request, binary_header=call.headers.get(BINARY_HEADER))
        return await self._answer(call, decode, functools.partial(self._encode_oip, name),
                                  f"{V2_MODELS}/{name}/infer", pinned=pinned, oip=True)

    async def v2_live(self, call: Call) -> Reply:
        return Reply(200, b'{"live":true}')

    async def v2_ready(self, call: Call) -> Reply:
        ready = all(arm["up"] for arm in await self._probe())
        return Reply(200 if ready else 503, orjson.dumps({"ready": ready}))

    async def v2_server(self, call: Call) -> Reply:
        return Reply(200, orjson.dumps({"name": "abflow", "version": importlib.metadata.version("abflow"),
                                        "extensions": []}))

    async def v2_model(self, call: Call) -> Reply:
        """``GET /v2/models/<name>`` (the graph, or one arm) and ``…/ready`` (its arms are up)."""
        parts = call.path.rstrip("/").split("/")
        ask_ready = parts[-1] == "ready"
        name = parts[-2] if ask_ready else parts[-1]
        indices = range(len(self.arms)) if name == self.graph.name else [self._arm_names.index(name)]
        if ask_ready:
            await self._probe()
            ready = all(self.arms[i].up for i in indices)
            return Reply(200 if ready else 503, orjson.dumps({"name": name, "ready": ready}))
        infos = [self.arms[i].info for i in indices]
        known = [info for info in infos if info is not None]
        return Reply(200, model_metadata(
            name, versions=sorted({info.version for info in known if info.version}),
            n_features=self._n_features() if name == self.graph.name else (known[0].n_features if known else None),
            class_names=known[0].class_names if known else None))

    async def _answer(self, call: Call, decode: Callable[..., Any], encode: Callable[..., bytes], path: str, *,
                      pinned: int | None = None, oip: bool = False) -> Reply:
        """decode → route → predict on an arm → encode, in Seldon's wire format or (``oip``) the Open
        Inference Protocol's, counted in the metrics and the ledger alike."""
        started = time.perf_counter()
        arm_name = NO_ARM
        metrics = self.metrics
        metrics.inflight += 1
        status = 500
        large = len(call.body) > self.limits.large_body_bytes
        try:
            try:
                request = await self._off_loop(large, decode, call.body, call.content_type,
                                               n_features=self._n_features())
                routed = self._route(call, request) if pinned is None else pinned
                index, probabilities = await self._serve(request.features, routed)
                arm_name = self.arms[index].name
                puid = (None if oip else request.puid) or new_puid()
                body = await self._off_loop(large, encode, request, probabilities, index, puid)
                self._puids.remember(puid, index)
                if self.shadow is not None:
                    self._mirror(request.features, probabilities)
                reply = Reply(200, body, headers=(*self._route_headers[index], (PUID_HEADER, puid)))
            except SeldonError as exc:
                reply = Reply(exc.code, error_body(exc.info) if oip else exc.body())
            except OipError as exc:
                reply = Reply(exc.code, exc.body())
            except _ArmError as exc:
                arm_name = exc.arm
                reply = Reply(exc.error.code, error_body(exc.error.info) if oip else exc.error.body())
            status = reply.status
            return reply
        finally:
            metrics.inflight -= 1
            seconds = time.perf_counter() - started
            metrics.observe(arm_name, status, seconds, None if status == 200 else str(status))
            metrics.server_request(path, status, seconds)
            if self.ledger is not None and arm_name != NO_ARM:
                assert self.experiment is not None
                self.ledger.record_request(self.experiment, arm_name, status, seconds)

    async def feedback(self, call: Call) -> Reply:
        """Count a reward (a missing one is 0, and counts) for the arm that served; see the module
        docstring for how the arm is found and repeats are told apart."""
        started = time.perf_counter()
        reply = self._count_feedback(call)
        self.metrics.server_request(FEEDBACK_PATHS[0], reply.status, time.perf_counter() - started)
        return reply

    def _count_feedback(self, call: Call) -> Reply:
        try:
            feedback = decode_feedback(call.body, call.content_type, max_abs_reward=self.limits.max_abs_reward)
            index = self._feedback_arm(feedback)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        if self.router is not None:
            try:
                self.router.check_feedback(index, feedback.reward)
            except ValueError as exc:
                return status_reply(400, f"{exc} (router {self._router_name!r}); nothing was counted")
        arm = self.arms[index]
        meta = {"puid": new_puid(), "tags": {}, "routing": self._routings[index],
                "requestPath": self._request_paths[index]}
        if feedback.puid is not None:
            if self._puids.counted(feedback.puid):
                self.metrics.feedback_repeat(arm.name)
                info = f"feedback for puid {feedback.puid!r} was already counted; this repeat was not"
                return Reply(200, orjson.dumps({"status": {"code": 200, "info": info, "reason": ALREADY_COUNTED,
                                                           "status": "SUCCESS"}, "meta": meta}))
            self._puids.mark_counted(feedback.puid, index)
        if self.router is not None:
            self.router.feedback(index, feedback.reward)
        self.metrics.feedback(arm.name, feedback.reward)
        if self.ledger is not None:
            assert self.experiment is not None
            self.ledger.record_feedback(self.experiment, arm.name, feedback.reward)
        sent = time.perf_counter()
        told = arm.send_feedback(feedback.reward)
        self.metrics.client_request(self._model_labels(index), "/send-feedback", 200 if told else 503,
                                    time.perf_counter() - sent)
        return Reply(200, orjson.dumps({"meta": meta}))

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
        body: dict[str, Any] = {"status": status, "graph": self.graph.name, "router": self._router_name,
                                "ratioA": self.graph.router.ratio_a if self.graph.router else None,
                                "unit": self.graph.router.unit if self.graph.router else None, "arms": arms}
        if self.shadow is not None:
            counts = self.shadow_counts
            compared = counts["agree"] + counts["disagree"]
            body["shadow"] = {"name": self.shadow.name, "up": self.shadow.up,
                              "fraction": self.graph.shadow_fraction, **counts,
                              "agreement": counts["agree"] / compared if compared else None}
        return Reply(200 if up else 503, orjson.dumps(body))

    async def metadata(self, call: Call) -> Reply:
        """The graph's metadata as Seldon's orchestrator serves it: every model's, and the graph's
        inputs and outputs (the first arm's; the arms of an A/B test serve the same schema)."""
        models = {arm.name: self._metadata_of(index) for index, arm in enumerate(self.arms)}
        first = models[self.arms[0].name]
        return Reply(200, orjson.dumps({"name": self.graph.name, "models": models,
                                        "graphinputs": first["inputs"], "graphoutputs": first["outputs"]}))

    async def model_metadata(self, call: Call) -> Reply:
        name = call.path.rstrip("/").rsplit("/", 1)[1]
        return Reply(200, orjson.dumps(self._metadata_of(self._arm_names.index(name))))

    def _metadata_of(self, index: int) -> dict[str, Any]:
        """One model's metadata in Seldon's form: tensor inputs of the model's feature count, tensor
        outputs named by its classes (empty until its arm has said hello)."""
        info = self.arms[index].info
        inputs, outputs = [], []
        if info is not None and info.n_features is not None:
            inputs.append({"messagetype": "tensor", "schema": {"shape": [info.n_features]}})
        if info is not None:
            outputs.append({"messagetype": "tensor", "schema": {"names": list(info.class_names),
                                                                "shape": [len(info.class_names)]}})
        versions = [info.version] if info is not None and info.version else []
        return {"name": self.arms[index].name, "platform": "sklearn", "versions": versions, "inputs": inputs,
                "outputs": outputs}

    async def prometheus(self, call: Call) -> Reply:
        """This process's series followed by every arm's own (fetched over its socket), so one scrape
        target has them all; an arm that is down is missing from this scrape. This process's own are
        taken first: an arm busy predicting answers later, and they must say what was true when asked."""
        own = self.metrics.exposition()
        arms = await asyncio.gather(*(self._arm_exposition(arm) for arm in self.arms))
        return Reply(200, merge_expositions(own, arms), self.metrics.content_type)

    async def _arm_exposition(self, arm: Arm) -> bytes:
        if not arm.up:
            return b""
        try:
            return await arm.exposition()
        except (ArmUnavailable, ArmFailed):
            return b""

    def _model_labels(self, index: int) -> SeldonLabels:
        """The Seldon labels of arm ``index``, its image and version as its hello said (worked out again
        only when a new hello came, since this runs on every request)."""
        info = self.arms[index].info
        cached = self._arm_labels[index]
        if cached is not None and cached[0] is info:
            return cached[1]
        labels = self.metrics.labels
        image = info.image if info is not None and info.image else self._nodes[index].image or ""
        arm_labels = SeldonLabels(labels.deployment_name, labels.predictor_name, labels.predictor_version,
                                  self.arms[index].name, image, info.version if info is not None else "")
        self._arm_labels[index] = (info, arm_labels)
        return arm_labels

    def _mirror(self, rows: Rows, served: Rows) -> None:
        """Queue a served request for the shadow and return at once: the shadow's answer is only
        compared (most probable class, row by row) with what was served, never waited for. Only the
        graph's ``shadow_fraction`` of requests is mirrored; the rest are counted as not mirrored."""
        if self.graph.shadow_fraction < 1.0 and self._mirror_draw() >= self.graph.shadow_fraction:
            self._count_shadow("not_mirrored")
            return
        if self._shadow_queue is None:
            self._shadow_queue = asyncio.Queue(SHADOW_QUEUE)
            loop = asyncio.get_running_loop()
            self._shadow_workers = [loop.create_task(self._shadow_worker()) for _ in range(SHADOW_WORKERS)]
        try:
            self._shadow_queue.put_nowait((rows, served.argmax(axis=1)))
        except asyncio.QueueFull:
            self._count_shadow("dropped")

    async def _shadow_worker(self) -> None:
        assert self.shadow is not None and self._shadow_queue is not None
        while True:
            rows, served = await self._shadow_queue.get()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.limits.request_deadline):
                    answer = await self.shadow.predict(rows)
                agree = int((answer.argmax(axis=1) == served).sum())
            except Exception:  # noqa: BLE001 - whatever the shadow does, the served traffic never sees it
                self._count_shadow("error", time.perf_counter() - started)
                continue
            self._count_shadow("answered", time.perf_counter() - started, agree, len(served) - agree)

    def _count_shadow(self, result: str, seconds: float | None = None, agree: int = 0, disagree: int = 0) -> None:
        assert self.shadow is not None
        counts = self.shadow_counts
        counts[result] += 1
        counts["agree"] += agree
        counts["disagree"] += disagree
        self.metrics.shadow(self.shadow.name, result, seconds, agree, disagree)

    def _route(self, call: Call, request: PredictionRequest | InferRequest) -> int:
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
        tags = request.parameters if isinstance(request, InferRequest) else request.tags
        raw = call.headers.get(key) if kind == HEADER_UNIT else tags.get(key)
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
            code = 200
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(share):
                    return index, await arm.predict(rows)
            except TimeoutError:
                code = 504
                failure = failure or SeldonError(
                    504, f"model arm {arm.name!r} gave no answer within {share:.3g}s (the request deadline is "
                         f"{self.limits.request_deadline:g}s)", TIMEOUT)
            except ArmUnavailable as exc:
                code = 503
                failure = failure or SeldonError(503, f"{_public(str(exc))}; retry shortly, the supervisor "
                                                      "restarts it", UNAVAILABLE)
            except ArmFailed as exc:
                code = 500
                raise _ArmError(arm.name, SeldonError(500, f"model arm {arm.name!r} failed: {exc}",
                                                      INTERNAL_ERROR)) from None
            finally:
                self.metrics.client_request(self._model_labels(index), "/predict", code, time.perf_counter() - sent)
            if not last:
                self.metrics.failover(arm.name, self.arms[order[attempt + 1]].name)
        assert failure is not None
        raise _ArmError(self.arms[routed].name, failure)

    def _encode_oip(self, model: str, request: InferRequest, probabilities: Rows, index: int, puid: str) -> bytes:
        info = self.arms[index].info
        assert info is not None
        parameters: dict[str, str | int] = {"arm": info.name, "puid": puid}
        if self._router_name is not None:
            parameters.update(router=self._router_name, child=index)
        return encode_infer_response(request, probabilities, info.class_names, model_name=model,
                                     model_version=info.version if model == info.name else "", parameters=parameters)

    def _encode(self, request: PredictionRequest, probabilities: Rows, index: int, puid: str) -> bytes:
        info = self.arms[index].info
        assert info is not None
        return encode_prediction_response(request, probabilities, info.class_names,
                                          puid=puid, routing=self._routings[index],
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

    def _feedback_arm(self, feedback: Feedback) -> int:
        """The arm ``feedback`` credits: a single model's, the one its routing names, or the one
        remembered for its puid; 400 when none can be told, 409 when routing and memory disagree."""
        remembered = self._puids.arm(feedback.puid) if feedback.puid is not None else None
        if self._router_name is None:
            return 0
        routed = (feedback.routing or {}).get(self._router_name)
        if routed is not None and routed >= len(self.arms):
            raise SeldonError(400, f"response.meta.routing must name router {self._router_name!r} with a child "
                                   f"between 0 and {len(self.arms) - 1}, got {feedback.routing!r}")
        if routed is not None and remembered is not None and routed != remembered:
            raise SeldonError(409, f"response.meta.routing says child {routed} of {self._router_name!r} served "
                                   f"puid {feedback.puid!r}, but {self.arms[remembered].name!r} (child "
                                   f"{remembered}) did: send back the prediction response as it was returned",
                              CONFLICT)
        index = routed if routed is not None else remembered
        if index is None:
            known = f"puid {feedback.puid!r} is not among the recent predictions remembered" if feedback.puid \
                else "it carries no meta.puid"
            raise SeldonError(400, f"feedback must name the arm that served: response.meta.routing names no "
                                   f"child of router {self._router_name!r} and {known}; send back the prediction "
                                   "response as it was returned (or its meta.puid, within the window stated in "
                                   "the docs)", BAD_DATA)
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
