"""The executor's logic without HTTP or processes: ``Executor.handle`` with fake arms."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import orjson

from abflow.serving.armlink import ArmInfo, ArmUnavailable, Rows
from abflow.serving.executor import Executor
from abflow.serving.graph import Graph, ab_graph, single_model_graph
from abflow.serving.service import Call, Reply

BODY = orjson.dumps({"data": {"ndarray": [[5.1, 3.5, 1.4, 0.2]]}})


class FakeArm:
    def __init__(self, name: str, *, down: bool = False) -> None:
        self.name = name
        self.down = down
        self.info: ArmInfo | None = ArmInfo(name, f"file:///{name}", ("x", "y", "z"), 4, 1, None)
        self.last_error: str | None = None

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
        await self.connect()
        return np.full((rows.shape[0], 3), 1 / 3)


def executor(graph: Graph, *arms: FakeArm) -> Executor:
    return Executor(graph, {arm.name: f"file:///{arm.name}" for arm in arms}, arms)


def call(ex: Executor, path: str = "/api/v1.0/predictions", body: bytes = BODY, method: str = "POST",
         authorization: str | None = None) -> tuple[Reply, Any]:
    reply = asyncio.run(ex.handle(Call(method, path, "application/json", authorization, body)))
    return reply, orjson.loads(reply.body) if reply.content_type == "application/json" else reply.body


def test_single_model_graph_routes_nothing_and_names_the_model() -> None:
    reply, body = call(executor(single_model_graph("g", "file:///m", node_name="m"), FakeArm("m")))
    assert reply.status == 200
    assert body["meta"]["routing"] == {} and body["meta"]["requestPath"] == {"m": "file:///m"}
    assert body["data"]["names"] == ["x", "y", "z"] and len(body["data"]["ndarray"]) == 1


def test_a_down_arm_is_a_503_naming_it_and_health_is_degraded() -> None:
    ex = executor(ab_graph("g", "a", "b", 0.0), FakeArm("classifier-1"), FakeArm("classifier-2", down=True))
    reply, body = call(ex)
    assert reply.status == 503 and "classifier-2" in body["status"]["info"]
    reply, health = call(ex, "/health/status", b"", "GET")
    assert reply.status == 200 and health["status"] == "degraded"
    assert [arm["status"] for arm in health["arms"]] == ["up", "down"]
    assert call(ex, "/ready", b"", "GET")[0].status == 503


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


def test_serving_freezes_the_start_up_heap_out_of_the_collectors_reach() -> None:
    """A full collection over an unfrozen serving heap stalls one request for tens of milliseconds."""
    import gc

    from abflow.serving.http import start_http

    async def start_and_stop() -> int:
        service = executor(single_model_graph("g", "file:///m", node_name="m"), FakeArm("m"))
        endpoint = await start_http(service, "127.0.0.1", 0)
        frozen = gc.get_freeze_count()
        await endpoint.stop()
        return frozen

    gc.unfreeze()
    frozen = asyncio.run(start_and_stop())
    gc.unfreeze()
    assert frozen > 0
