"""The gate against a real champion in a real store: the same rows for both, and no A/B test of a
model against itself."""

from __future__ import annotations

import io
from pathlib import Path

import joblib
import pytest

from abflow.components.gating import GateDecision, GateFailed, gate_challenger
from abflow.components.registry import promote, publish_model
from abflow.components.training import TrainResult, train_iris


@pytest.fixture(scope="module")
def champion_model() -> TrainResult:
    return train_iris()


@pytest.fixture
def root(tmp_path: Path, champion_model: TrainResult) -> str:
    root = str(tmp_path / "store")
    promote(root, "iris", publish_model(root, "iris", champion_model, run_id="run-1"), run_id="run-1")
    return root


def gate(root: str, challenger: TrainResult, *, min_accuracy: float = 0.5,
         max_regression: float = 0.02) -> GateDecision:
    assert challenger.holdout is not None
    return gate_challenger(model_bytes=challenger.model_bytes, metrics=challenger.metrics, holdout=challenger.holdout,
                           artifact_root=root, model_name="iris", min_accuracy=min_accuracy,
                           max_regression=max_regression)


def test_the_champion_itself_is_nothing_new_to_test(root: str) -> None:
    decision = gate(root, train_iris(), min_accuracy=0.999)  # not even the floor is checked: nothing deploys
    assert decision.new_model is False
    assert decision.describe().startswith("nothing new to test")
    assert decision.as_metrics()["new_model"] == 0.0


def test_the_champion_is_scored_on_the_challengers_held_out_rows(root: str, champion_model: TrainResult) -> None:
    challenger = train_iris(seed=7, test_size=0.4)
    decision = gate(root, challenger, max_regression=1.0)
    assert decision.new_model is True
    assert challenger.holdout is not None and len(challenger.holdout.labels) == 60
    champion = joblib.load(io.BytesIO(champion_model.model_bytes))
    expected = float((champion.predict(challenger.holdout.features) == challenger.holdout.labels).mean())
    assert decision.champion_accuracy == expected
    assert "on the same held-out rows" in decision.describe()


def test_a_worse_challenger_fails_against_the_champion_on_the_same_rows(root: str) -> None:
    with pytest.raises(GateFailed, match=r"worse than the champion's .* more than max_regression 0"):
        gate(root, train_iris(c=0.001), max_regression=0.0)


def test_an_unloadable_champion_fails_the_gate_with_the_reason(root: str, champion_model: TrainResult) -> None:
    [model_file] = Path(root).glob("models/iris/*/model.joblib")
    model_file.write_bytes(model_file.read_bytes()[:-10])
    with pytest.raises(GateFailed, match="cannot score the champion .* sha256"):
        gate(root, train_iris(seed=3))
