"""The cluster's way of reading outcomes agrees with the laptop's: a real Prometheus scrapes a real
``abflow serve`` A/B graph serving an experiment, and for the same traffic and feedback the
Prometheus reader yields the same per-arm counts as the endpoint's durable ledger, and the same sum
of squared rewards (rewards of 0, 0.5 and 1, so abflow's squares series is what is read)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from abflow.components.prometheus_outcomes import read_prometheus_outcomes
from abflow.serving.ledger import LEDGER_FILE, read_outcomes
from tests.fixtures.processes import wait_until
from tests.fixtures.prometheus import PrometheusServer
from tests.fixtures.serving import ab_graph_file, start_served_graph

EXPERIMENT = "iris-20261203-170000-abc123"
ARMS = ("classifier-1", "classifier-2")
PREDICTIONS = 120
FLUSH_AND_SCRAPE_TIMEOUT = 60.0


@pytest.mark.parametrize("predictor_labels", [True, False], ids=["PREDICTOR_LABELS", "experiment-default"])
def test_prometheus_yields_the_ledgers_counts(predictor_labels: bool, tmp_path: Path, iris_model_dir: Path,
                                              iris_model_dir_b: Path,
                                              prometheus: Callable[[str], PrometheusServer]) -> None:
    """With the experiment id in ``PREDICTOR_LABELS`` (as Seldon's operator injects a predictor's
    labels) and without (``--experiment`` alone labels ``predictor_version``)."""
    start = time.time()
    state_dir = tmp_path / "state"
    env = {"PREDICTOR_LABELS": json.dumps({"version": EXPERIMENT})} if predictor_labels else {}
    served = start_served_graph(ab_graph_file(tmp_path), {ARMS[0]: iris_model_dir, ARMS[1]: iris_model_dir_b},
                                tmp_path, "--experiment", EXPERIMENT, "--state-dir", str(state_dir), env=env)
    try:
        server = prometheus(f"127.0.0.1:{served.port}")
        rng = random.Random(9)
        answers = served.predict_many(PREDICTIONS)
        given = 0
        for answer in answers[: PREDICTIONS * 3 // 4]:
            reward = rng.choice((0, 0.5, 1))
            body: dict[str, object] = {"response": answer}
            if reward:  # a reward of 0 arrives as Seldon's client sends it: no reward key
                body["reward"] = reward
            response = served.post("/api/v1.0/feedback", json_body=body)
            assert response.status_code == 200, response.text
            given += 1
        repeat = served.post("/api/v1.0/feedback", json_body={"response": answers[0], "reward": 1})
        assert repeat.status_code in (200, 409), repeat.text  # counted once, whatever the answer
        last_request = time.time()
        wait_until(lambda: (server.last_scrape() or 0) > last_request, timeout=FLUSH_AND_SCRAPE_TIMEOUT,
                   interval=0.2, what="a scrape after the last request")

        outcomes = read_prometheus_outcomes(server.url, EXPERIMENT, ARMS, start, time.time())
    finally:
        served.stop()
    ledger = read_outcomes(state_dir / LEDGER_FILE, EXPERIMENT)  # all of it: a stopped endpoint has flushed

    assert set(outcomes) == set(ledger) == set(ARMS), (outcomes, ledger)
    assert sum(arm.feedback for arm in ledger.values()) == given
    assert sum(arm.requests for arm in outcomes.values()) == PREDICTIONS  # feedback is not a prediction
    for name in ARMS:
        mine, theirs = outcomes[name], ledger[name]
        assert (mine.requests, dict(mine.errors)) == (theirs.requests, dict(theirs.errors)), name
        assert (mine.feedback, mine.reward_sum) == (theirs.feedback, theirs.reward_sum), name
        assert mine.reward_sum_squares == theirs.reward_sum_squares, name  # from abflow_feedback_reward_squares
        assert mine.reward_sum_squares < mine.reward_sum, name  # the 0.5s: not the Bernoulli fallback
        assert mine.feedback > 0 and mine.requests > mine.feedback
        p99 = mine.latency_quantile(0.99)
        assert p99 is not None and 0 < p99 < 10, name
