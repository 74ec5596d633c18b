"""The executor's outcome bookkeeping without processes: what reaches the ledger, the router and the
arm for each kind of prediction and feedback (``Executor.handle`` with fake arms, a real ledger)."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from abflow.serving.executor import Executor
from abflow.serving.graph import ab_graph
from abflow.serving.ledger import OutcomeLedger, read_outcomes
from abflow.serving.limits import EndpointLimits
from abflow.serving.routers import RandomABTest
from tests.serving_runtime.test_executor import FakeArm, call

EXPERIMENT = "exp-1"


def experiment(tmp_path: Path, *arms: FakeArm, ratio_a: float = 1.0) -> tuple[Executor, OutcomeLedger]:
    ledger = OutcomeLedger(tmp_path / "outcomes.sqlite")
    executor = Executor(ab_graph("g", "a", "b", ratio_a), {arm.name: f"file:///{arm.name}" for arm in arms}, arms,
                        router=RandomABTest(ratio_a, random.Random(7)), limits=EndpointLimits(on_arm_down="fail"),
                        experiment=EXPERIMENT, ledger=ledger)
    return executor, ledger


def outcomes(ledger: OutcomeLedger) -> dict[str, tuple[int, dict[int, int], int, float]]:
    ledger.flush()
    return {arm: (o.requests, dict(o.errors), o.feedback, o.reward_sum)
            for arm, o in read_outcomes(ledger.path, EXPERIMENT).items()}


def test_every_prediction_that_reached_an_arm_is_recorded_with_its_status(tmp_path: Path) -> None:
    ex, ledger = experiment(tmp_path, FakeArm("classifier-1"), FakeArm("classifier-2", down=True), ratio_a=0.5)
    statuses = [call(ex)[0].status for _ in range(40)]
    assert call(ex, body=b'{"data": {}}')[0].status == 400  # refused before routing: no arm's outcome
    assert set(statuses) == {200, 503}
    with ledger:
        assert outcomes(ledger) == {"classifier-1": (statuses.count(200), {}, 0, 0.0),
                                    "classifier-2": (statuses.count(503), {503: statuses.count(503)}, 0, 0.0)}


def test_a_puid_is_credited_once_to_the_arm_that_served_it_and_told_to_that_arm(tmp_path: Path) -> None:
    arms = FakeArm("classifier-1"), FakeArm("classifier-2")
    ex, ledger = experiment(tmp_path, *arms, ratio_a=0.0)
    _, prediction = call(ex)
    puid = prediction["meta"]["puid"]
    by_puid = orjson.dumps({"request": {"meta": {"puid": puid}}, "reward": 2})
    reply, body = call(ex, "/api/v1.0/feedback", by_puid)
    assert reply.status == 200 and body["meta"]["routing"] == {"random-ab-test": 1}
    reply, body = call(ex, "/api/v1.0/feedback", orjson.dumps({"response": prediction, "reward": 5}))
    assert reply.status == 200 and body["status"]["reason"] == "FEEDBACK_ALREADY_COUNTED"
    forged = orjson.dumps({"response": {"meta": {"puid": puid, "routing": {"random-ab-test": 0}}}, "reward": 1})
    reply, body = call(ex, "/api/v1.0/feedback", forged)
    assert reply.status == 409 and body["status"]["reason"] == "FEEDBACK_CONFLICT"
    assert (arms[0].rewards, arms[1].rewards) == ([], [2.0])
    assert ex.router is not None and [s.feedback for s in ex.router.stats] == [0, 1]
    with ledger:
        assert outcomes(ledger)["classifier-2"] == (1, {}, 1, 2.0)


@pytest.mark.parametrize("body", [{"reward": 1}, {"request": {"meta": {"puid": "unknown"}}, "reward": 1},
                                  {"response": {"meta": {"routing": {"other-router": 0}}}}])
def test_ab_feedback_that_names_no_arm_is_a_400_counted_nowhere(tmp_path: Path, body: dict[str, object]) -> None:
    arms = FakeArm("classifier-1"), FakeArm("classifier-2")
    ex, ledger = experiment(tmp_path, *arms)
    reply, answer = call(ex, "/api/v1.0/feedback", orjson.dumps(body))
    assert reply.status == 400 and "must name the arm that served" in answer["status"]["info"]
    assert arms[0].rewards == arms[1].rewards == []
    with ledger:
        assert outcomes(ledger) == {}


def test_a_ledger_needs_an_experiment() -> None:
    with pytest.raises(ValueError, match="needs the experiment id"):
        Executor(ab_graph("g", "a", "b", 0.5), {"classifier-1": "m", "classifier-2": "m"},
                 [FakeArm("classifier-1"), FakeArm("classifier-2")], ledger=object())  # type: ignore[arg-type]
