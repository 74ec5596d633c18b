"""A shadow predictor (Seldon v1's ``shadow: true``) under real ``abflow serve``: it gets a copy of
every served request, its answers are compared and never returned, and a slow shadow costs the
served traffic nothing (its bounded queue drops, and counts what it drops)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abflow.serving.executor import SHADOW_QUEUE, SHADOW_WORKERS, Executor
from abflow.serving.graph import ModelNode, ab_graph
from abflow.serving.limits import EndpointLimits
from abflow.serving.service import Call
from tests.fixtures.processes import wait_until
from tests.fixtures.serving import ab_graph_file, start_served_graph
from tests.serving_runtime.slowmodel import write_slow_model
from tests.serving_runtime.test_executor import BODY, FakeArm, metric


def with_shadow(graph: Path) -> Path:
    document = json.loads(graph.read_text())
    document["spec"]["predictors"].append({"name": "shadow", "shadow": True, "graph": {
        "name": "challenger", "implementation": "SKLEARN_SERVER", "type": "MODEL", "children": []}})
    shadowed = graph.with_name(f"shadowed-{graph.name}")
    shadowed.write_text(json.dumps(document))
    return shadowed


def test_every_served_request_is_mirrored_and_compared_never_returned(tmp_path: Path, iris_model_dir: Path,
                                                                     iris_model_dir_b: Path) -> None:
    graph = with_shadow(ab_graph_file(tmp_path, "1"))  # ratio 1: every request is served by classifier-1
    models = {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b, "challenger": iris_model_dir}
    served = start_served_graph(graph, models, tmp_path)
    try:
        answers = served.predict_many(30)
        assert all(a["meta"]["routing"] == {"random-ab-test": 0} for a in answers)
        assert all(set(a["meta"]["requestPath"]) == {"classifier-1"} for a in answers)

        def compared() -> dict[str, Any] | None:
            shadow: dict[str, Any] = served.health()["shadow"]
            return shadow if shadow["answered"] == 30 else None

        shadow = wait_until(compared, timeout=60, what="the shadow's 30 answers")
        assert shadow["name"] == "challenger" and shadow["up"] is True
        assert shadow["agreement"] == 1.0, "the shadow serves the same model as the arm that answered"
        assert shadow["dropped"] == 0 and shadow["error"] == 0
        metrics = served.session.get(f"{served.url}/metrics", timeout=10).text
        assert 'abflow_shadow_rows_total{agreement="agree",shadow="challenger"} 30.0' in metrics
    finally:
        assert served.stop() == 0


def test_a_slow_shadow_never_slows_or_fails_the_served_traffic(tmp_path: Path, iris_model_dir: Path,
                                                              iris_model_dir_b: Path) -> None:
    graph = with_shadow(ab_graph_file(tmp_path, "0.5"))
    models = {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b,
              "challenger": write_slow_model(tmp_path / "slow")}
    served = start_served_graph(graph, models, tmp_path)
    try:
        started = time.perf_counter()
        answers = served.predict_many(300)
        elapsed = time.perf_counter() - started
        assert len(answers) == 300, "every served request was answered (predict_many asserts each is a 200)"
        # Waiting for the shadow (1.5 s an answer, two at a time) would have taken 225 s.
        assert elapsed < 60, f"300 served requests took {elapsed:.1f} s"
        health = served.health()
        shadow = health["shadow"]
        assert shadow["answered"] + shadow["error"] + shadow["dropped"] < 300, shadow
        assert health["status"] == "ok", "a shadow in trouble is not the endpoint's trouble"
    finally:
        assert served.stop() == 0


def test_when_the_shadows_queue_is_full_a_mirror_is_dropped_and_counted() -> None:
    """Unit level, with a shadow that never answers, so the queue's bound is exact: 2 requests in the
    workers' hands, 1000 queued, the rest dropped."""
    shadow = FakeArm("challenger", hangs=True)
    graph = dataclasses.replace(ab_graph("g", "a", "b", 1.0), shadow=ModelNode("challenger", None, None, None),
                                shadow_predictor="shadow")
    ex = Executor(graph, {"classifier-1": "a", "classifier-2": "b", "challenger": "c"},
                  [FakeArm("classifier-1"), FakeArm("classifier-2")], limits=EndpointLimits(), shadow=shadow)

    async def serve(count: int) -> list[int]:
        statuses = []
        for _ in range(count):
            reply = await ex.handle(Call("POST", "/api/v1.0/predictions", "application/json", None, BODY))
            statuses.append(reply.status)
            await asyncio.sleep(0)  # let the workers take their first requests
        return statuses

    assert asyncio.run(serve(SHADOW_QUEUE + SHADOW_WORKERS + 7)) == [200] * (SHADOW_QUEUE + SHADOW_WORKERS + 7)
    assert ex.shadow_counts["dropped"] == 7 and ex.shadow_counts["answered"] == 0
    assert metric(ex, "abflow_shadow_requests_total", shadow="challenger", result="dropped") == 7


def test_only_the_graphs_mirror_fraction_of_requests_is_mirrored_the_rest_counted() -> None:
    """2000 requests, a quarter mirrored: 500 expected, and 6 standard deviations (±116) allowed, so the
    check fails by chance about once in a billion runs."""
    graph = dataclasses.replace(ab_graph("g", "a", "b", 1.0), shadow=ModelNode("challenger", None, None, None),
                                shadow_predictor="shadow", shadow_fraction=0.25)
    ex = Executor(graph, {"classifier-1": "a", "classifier-2": "b", "challenger": "c"},
                  [FakeArm("classifier-1"), FakeArm("classifier-2")], limits=EndpointLimits(),
                  shadow=FakeArm("challenger"))

    async def serve(count: int) -> None:
        for _ in range(count):
            reply = await ex.handle(Call("POST", "/api/v1.0/predictions", "application/json", None, BODY))
            assert reply.status == 200
        await wait_for_shadow(lambda: ex.shadow_counts["answered"] + ex.shadow_counts["not_mirrored"] == count)

    asyncio.run(serve(2000))
    counts = ex.shadow_counts
    assert abs(counts["answered"] - 500) <= 116 and counts["dropped"] == counts["error"] == 0
    assert metric(ex, "abflow_shadow_requests_total", shadow="challenger", result="not_mirrored") == \
        counts["not_mirrored"]


async def wait_for_shadow(done: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, "the shadow's workers did not catch up"
        await asyncio.sleep(0.01)
