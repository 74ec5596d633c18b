"""Bandit routers under real ``abflow serve``: they learn from feedback (rewards of 0 count) and, with
an experiment, go on after a restart from what the experiment's ledger holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.serving import TUTORIAL_DIR, ServedGraph, start_served_graph

RATES = (0.1, 0.9)


def bandit_graph(folder: Path, implementation: str) -> Path:
    document = json.loads((TUTORIAL_DIR / "ab_test.json").read_text())
    del document["spec"]["oauth_key"], document["spec"]["oauth_secret"]
    router = document["spec"]["predictors"][0]["graph"]
    router["implementation"] = implementation
    epsilon = [{"name": "epsilon", "value": "0.1", "type": "FLOAT"}]
    router["parameters"] = epsilon if implementation == "EPSILON_GREEDY" else []
    path = folder / f"{implementation.lower()}.json"
    path.write_text(json.dumps(document))
    return path


def predict_and_reward(served: ServedGraph, rewards: np.random.Generator) -> int:
    response = served.predict()
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    arm = int(answer["meta"]["routing"]["random-ab-test"])
    body: dict[str, Any] = {"response": answer}
    if rewards.random() < RATES[arm]:
        body["reward"] = 1.0  # otherwise no reward key: a 0, as Seldon's protobuf-JSON client sends it
    feedback = served.post("/api/v1.0/feedback", json_body=body)
    assert feedback.status_code == 200, feedback.text
    return arm


@pytest.mark.parametrize("implementation", ["THOMPSON_SAMPLING", "EPSILON_GREEDY"])
def test_a_bandit_learns_and_a_restart_goes_on_from_the_experiments_ledger(
        tmp_path: Path, implementation: str, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    graph = bandit_graph(tmp_path, implementation)
    models = {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}
    extra = ("--experiment", "iris-bandit-1", "--state-dir", str(tmp_path / "state"))
    rewards = np.random.default_rng(11)
    served = start_served_graph(graph, models, tmp_path, *extra)
    try:
        chosen = [predict_and_reward(served, rewards) for _ in range(250)]
        learned = served.health()["arms"]
    finally:
        assert served.stop() == 0
    assert chosen[-80:].count(1) > 64, chosen
    assert sum(arm["feedback"] for arm in learned) == 250, "every feedback counts, a reward of 0 too"

    restarted = start_served_graph(graph, models, tmp_path, *extra)
    try:
        arms = restarted.health()["arms"]
        assert [a["feedback"] for a in arms] == [a["feedback"] for a in learned]
        assert [a["mean_reward"] for a in arms] == pytest.approx([a["mean_reward"] for a in learned])
        served_arms = [int(answer["meta"]["routing"]["random-ab-test"]) for answer in restarted.predict_many(100)]
        assert served_arms.count(1) > 80, "a restart must not forget what the experiment learned"
    finally:
        assert restarted.stop() == 0


def test_a_thompson_graph_refuses_a_reward_outside_zero_to_one_and_counts_nothing(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    served = start_served_graph(bandit_graph(tmp_path, "THOMPSON_SAMPLING"),
                                {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}, tmp_path)
    try:
        answer = served.predict().json()
        refused = served.post("/api/v1.0/feedback", json_body={"response": answer, "reward": 5.0})
        assert refused.status_code == 400 and "between 0 and 1" in refused.json()["status"]["info"]
        assert [arm["feedback"] for arm in served.health()["arms"]] == [0, 0]
    finally:
        assert served.stop() == 0
