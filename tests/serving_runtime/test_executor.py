"""The executor's logic without HTTP or processes: ``Executor.handle`` with fake arms."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import orjson

from abflow.serving.armlink import ArmFailed, ArmInfo, ArmUnavailable, Rows
from abflow.serving.executor import Executor
from abflow.serving.graph import Graph, ab_graph, single_model_graph
from abflow.serving.limits import EndpointLimits
from abflow.serving.service import Call, Reply

BODY = orjson.dumps({"data": {"ndarray": [[5.1, 3.5, 1.4, 0.2]]}})


class FakeArm:
    """An arm that answers thirds, or is down, hangs (never answers) or fails (its model raises)."""

    def __init__(self, name: str, *, down: bool = False, hangs: bool = False, fails: bool = False) -> None:
        self.name = name
        self.down = down
        self.hangs = hangs
        self.fails = fails
        self.info: ArmInfo | None = ArmInfo(name, f"file:///{name}", ("x", "y", "z"), 4, 1, None)
        self.last_error: str | None = None
        self.calls = 0
        self.rewards: list[float] = []

    @property
    def up(self) -> bool:
        return not self.down

    async def connect(self) -> ArmInfo:
        if self.down:
            self.last_error = "not listening"
            raise ArmUnavailable(self.name, "not listening")
        assert self.info is not None
        return self.info

    async def predict(self, rows: Rows) -> Rows:
        self.calls += 1
        await self.connect()
        if self.hangs:
            await asyncio.Event().wait()
        if self.fails:
            raise ArmFailed("ValueError: the model refuses")
        return np.full((rows.shape[0], 3), 1 / 3)

    async def exposition(self) -> bytes:
        await self.connect()
        return b""

    def send_feedback(self, reward: float) -> bool:
        self.rewards.append(reward)
        return self.up


def executor(graph: Graph, *arms: FakeArm, **limits: Any) -> Executor:
    return Executor(graph, {arm.name: f"file:///{arm.name}" for arm in arms}, arms, limits=EndpointLimits(**limits))


def ab(*arms: FakeArm, ratio_a: float = 0.0, **limits: Any) -> Executor:
    """An A/B executor; ratio 0 routes every request to the second arm."""
    return executor(ab_graph("g", "a", "b", ratio_a), *arms, **limits)


def metric(ex: Executor, name: str, **labels: str) -> float | None:
    value = ex.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def call(ex: Executor, path: str = "/api/v1.0/predictions", body: bytes = BODY, method: str = "POST",
         authorization: str | None = None) -> tuple[Reply, Any]:
    reply = asyncio.run(ex.handle(Call(method, path, "application/json", authorization, body)))
    return reply, orjson.loads(reply.body) if reply.content_type == "application/json" else reply.body


def test_single_model_graph_routes_nothing_and_names_the_model() -> None:
    reply, body = call(executor(single_model_graph("g", "file:///m", node_name="m"), FakeArm("m")))
    assert reply.status == 200
    assert body["meta"]["routing"] == {} and body["meta"]["requestPath"] == {"m": "file:///m"}
    assert body["data"]["names"] == ["x", "y", "z"] and len(body["data"]["ndarray"]) == 1


def test_a_down_arm_fails_over_to_the_healthy_one_which_routing_names_and_metrics_count() -> None:
    ex = ab(FakeArm("classifier-1"), down := FakeArm("classifier-2", down=True))
    for _ in range(3):
        reply, body = call(ex)
        assert reply.status == 200 and body["meta"]["routing"] == {"random-ab-test": 0}
        assert body["meta"]["requestPath"] == {"classifier-1": "file:///classifier-1"}
    assert down.calls == 0  # known to be down: not even a connect attempt
    assert metric(ex, "abflow_failovers_total", arm="classifier-2", to="classifier-1") == 3
    assert metric(ex, "abflow_requests_total", arm="classifier-1", code="200") == 3
    reply, health = call(ex, "/health/status", b"", "GET")
    assert reply.status == 200 and health["status"] == "degraded"
    assert [arm["status"] for arm in health["arms"]] == ["up", "down"]
    assert call(ex, "/ready", b"", "GET")[0].status == 503


def test_with_on_arm_down_fail_a_down_arm_is_a_503_naming_it() -> None:
    ex = ab(FakeArm("classifier-1"), FakeArm("classifier-2", down=True), on_arm_down="fail")
    reply, body = call(ex)
    assert reply.status == 503 and "classifier-2" in body["status"]["info"]
    assert body["status"]["reason"] == "MICROSERVICE_UNAVAILABLE"
    assert metric(ex, "abflow_requests_total", arm="classifier-2", code="503") == 1
    assert metric(ex, "abflow_failovers_total", arm="classifier-2", to="classifier-1") is None


def test_an_arm_that_does_not_answer_within_its_share_of_the_deadline_fails_over() -> None:
    ex = ab(FakeArm("classifier-1"), hung := FakeArm("classifier-2", hangs=True), request_deadline=0.2)
    reply, body = call(ex)
    assert reply.status == 200 and body["meta"]["routing"] == {"random-ab-test": 0}
    assert hung.calls == 1
    assert metric(ex, "abflow_failovers_total", arm="classifier-2", to="classifier-1") == 1


def test_without_failover_a_silent_arm_is_a_504_at_the_deadline() -> None:
    ex = ab(FakeArm("classifier-1"), FakeArm("classifier-2", hangs=True), request_deadline=0.1, on_arm_down="fail")
    reply, body = call(ex)
    assert reply.status == 504 and "classifier-2" in body["status"]["info"] and "0.1s" in body["status"]["info"]
    single = executor(single_model_graph("g", "file:///m", node_name="m"), FakeArm("m", hangs=True),
                      request_deadline=0.1)
    assert call(single)[0].status == 504


def test_when_both_arms_are_down_the_routed_one_is_named_in_a_503() -> None:
    ex = ab(FakeArm("classifier-1", down=True), FakeArm("classifier-2", down=True))
    reply, body = call(ex)
    assert reply.status == 503 and "'classifier-2'" in body["status"]["info"]


def test_a_model_error_is_a_500_naming_the_arm_and_does_not_fail_over() -> None:
    """The other arm would most likely refuse the same rows; a failover would hide the model's error."""
    ex = ab(healthy := FakeArm("classifier-1"), FakeArm("classifier-2", fails=True))
    reply, body = call(ex)
    assert reply.status == 500 and "'classifier-2' failed: ValueError" in body["status"]["info"]
    assert healthy.calls == 0
    assert metric(ex, "abflow_requests_total", arm="classifier-2", code="500") == 1


def test_health_tells_states_and_reasons_but_no_pid_port_or_path() -> None:
    down = FakeArm("classifier-2", down=True)
    ex = ab(FakeArm("classifier-1"), down)
    down.last_error = "cannot connect: [Errno 13] Permission denied: '/tmp/abflow-serve-1-x/arm1.sock'"
    down.connect = lambda: asyncio.sleep(0)  # type: ignore[method-assign] - keep the reason above
    _, health = call(ex, "/health/status", b"", "GET")
    assert [set(arm) for arm in health["arms"]] == [
        {"name", "index", "up", "status", "reason", "routed", "feedback", "mean_reward"}] * 2
    assert health["arms"][1]["reason"] == "cannot connect: [Errno 13] Permission denied: '<path>'"
    reply, ready = call(ex, "/ready", b"", "GET")
    assert "/tmp" not in ready["status"]["info"] and "<path>" in ready["status"]["info"]
    assert b"file://" not in call(ex, "/health/status", b"", "GET")[0].body


def test_rewards_past_the_configured_bound_are_a_400() -> None:
    ex = ab(FakeArm("classifier-1"), FakeArm("classifier-2"), ratio_a=1.0, max_abs_reward=10)
    _, prediction = call(ex)
    assert call(ex, "/api/v1.0/feedback", orjson.dumps({"response": prediction, "reward": 10}))[0].status == 200
    reply, body = call(ex, "/api/v1.0/feedback", orjson.dumps({"response": prediction, "reward": 11}))
    assert reply.status == 400 and "between -10 and 10" in body["status"]["info"]
    assert ex.router is not None and ex.router.stats[0].feedback == 1


def test_a_large_body_decodes_off_the_loop_to_the_same_answer() -> None:
    rows = [[5.1, 3.5, 1.4, 0.2]] * 3000
    body = orjson.dumps({"data": {"ndarray": rows}})
    ex = ab(FakeArm("classifier-1"), FakeArm("classifier-2"), large_body_bytes=1024)
    reply, answer = call(ex, body=body)
    assert len(body) > 1024 and reply.status == 200 and len(answer["data"]["ndarray"]) == 3000
    assert ex._decoder is not None  # noqa: SLF001 - the large request went through the decoder thread


def test_feedback_with_reward_zero_counts_for_the_routed_arm() -> None:
    ex = executor(ab_graph("g", "a", "b", 1.0), FakeArm("classifier-1"), FakeArm("classifier-2"))
    _, prediction = call(ex)
    assert prediction["meta"]["routing"] == {"random-ab-test": 0}
    feedback = orjson.dumps({"response": prediction, "reward": 0})
    assert call(ex, "/api/v1.0/feedback", feedback)[0].status == 200
    assert ex.router is not None
    assert [(s.feedback, s.reward_sum) for s in ex.router.stats] == [(1, 0.0), (0, 0.0)]
    _, health = call(ex, "/health/status", b"", "GET")
    assert [(a["routed"], a["feedback"], a["mean_reward"]) for a in health["arms"]] == [(1, 1, 0.0), (0, 0, None)]
    wrong_arm = orjson.dumps({"response": {"meta": {"routing": {"random-ab-test": 7}}}, "reward": 1})
    assert call(ex, "/api/v1.0/feedback", wrong_arm)[0].status == 400


def test_oauth_token_then_bearer() -> None:
    base = ab_graph("g", "a", "b", 0.5)
    graph = Graph(base.name, base.predictor, base.root, oauth_key="k", oauth_secret="s")
    ex = executor(graph, FakeArm("classifier-1"), FakeArm("classifier-2"))
    assert call(ex)[0].status == 401
    basic = "Basic " + base64.b64encode(b"k:s").decode()
    reply, token = call(ex, "/oauth/token", b"grant_type=client_credentials", authorization=basic)
    assert reply.status == 200 and token["token_type"] == "bearer" and token["expires_in"] == 43199
    assert call(ex, authorization=f"Bearer {token['access_token']}")[0].status == 200
    assert call(ex, "/oauth/token", b"grant_type=password", authorization=basic)[0].status == 400
    assert call(ex, "/oauth/token", b"grant_type=client_credentials",
                authorization="Basic " + base64.b64encode(b"k:nope").decode())[0].status == 401


def oauth_executor() -> Executor:
    base = ab_graph("g", "a", "b", 0.5)
    graph = Graph(base.name, base.predictor, base.root, oauth_key="k", oauth_secret="s")
    return executor(graph, FakeArm("classifier-1"), FakeArm("classifier-2"))


def head(path: str, authorization: str | None = None, method: str = "POST") -> Call:
    return Call(method, path, "application/json", authorization, b"", "127.0.0.1")


def test_calls_are_admitted_or_refused_from_their_head_alone() -> None:
    """What http.py asks before reading a body: refusals come without it, admissions say how much to read."""
    ex = oauth_executor()
    basic = "Basic " + base64.b64encode(b"k:s").decode()
    for refused, code in [(head("/api/v1.0/predictions"), 401), (head("/api/v1.0/feedback", "Bearer nope"), 401),
                          (head("/oauth/token", "Basic " + base64.b64encode(b"k:x").decode()), 401),
                          (head("/nowhere"), 404), (head("/metrics"), 405)]:
        admitted = ex.routes.admit(refused)
        assert isinstance(admitted, Reply) and admitted.status == code, refused
        assert orjson.loads(admitted.body)["status"]["code"] == code
    for accepted, limit in [(head("/oauth/token", basic), 4096), (head("/oauth/token"), 4096),
                            (head("/metrics", method="GET"), 0)]:
        route = ex.routes.admit(accepted)
        assert not isinstance(route, Reply) and route.max_body == limit
    token = call(ex, "/oauth/token", b"grant_type=client_credentials", authorization=basic)[1]["access_token"]
    route = ex.routes.admit(head("/api/v1.0/predictions", f"Bearer {token}"))
    assert not isinstance(route, Reply) and route.max_body == ex.max_body_bytes


def test_a_token_body_over_4_kib_is_a_413() -> None:
    reply, body = call(oauth_executor(), "/oauth/token", b"grant_type=client_credentials&x=" + b"y" * 4096,
                       authorization="Basic " + base64.b64encode(b"k:s").decode())
    assert reply.status == 413 and "4096 bytes" in body["status"]["info"]
