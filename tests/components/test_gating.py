"""The quality gate: each way to pass and each way to fail, with the number that missed."""

from __future__ import annotations

import dataclasses

import pytest

from abflow.components.gating import GateDecision, GateFailed, check_gate


def test_first_model_above_the_floor_passes() -> None:
    decision = check_gate({"accuracy": 0.95}, min_accuracy=0.9, champion_metrics=None, max_regression=0.02)
    assert decision.champion_accuracy is None
    assert decision.as_metrics() == {"accuracy": 0.95, "min_accuracy": 0.9, "max_regression": 0.02,
                                     "new_model": 1.0}
    assert "no champion yet" in decision.describe()


def test_below_the_floor_fails_naming_both_numbers() -> None:
    with pytest.raises(GateFailed, match=r"accuracy 0.81 is below min_accuracy 0.9: the new model is not "
                                         r"deployed; lower --min-accuracy or fix the training data"):
        check_gate({"accuracy": 0.81}, min_accuracy=0.9, champion_metrics=None, max_regression=0.02)


def test_exactly_at_the_limits_passes_despite_float_noise() -> None:
    decision = check_gate({"accuracy": 0.85}, min_accuracy=0.85, champion_metrics={"accuracy": 0.9},
                          max_regression=0.05)
    assert decision.as_metrics()["accuracy_change_vs_champion"] == pytest.approx(-0.05)


def test_within_the_allowed_regression_passes() -> None:
    decision = check_gate({"accuracy": 0.92}, min_accuracy=0.8, champion_metrics={"accuracy": 0.95},
                          max_regression=0.05)
    assert decision.champion_accuracy == 0.95
    assert "champion accuracy 0.95" in decision.describe()


def test_better_than_the_champion_passes_with_zero_regression_allowed() -> None:
    check_gate({"accuracy": 0.97}, min_accuracy=0.8, champion_metrics={"accuracy": 0.95}, max_regression=0)


def test_worse_than_the_champion_fails_naming_both_numbers() -> None:
    with pytest.raises(GateFailed, match=r"accuracy 0.9 is worse than the champion's 0.97 by 0.07, more "
                                         r"than max_regression 0.02.*--max-regression"):
        check_gate({"accuracy": 0.9}, min_accuracy=0.8, champion_metrics={"accuracy": 0.97},
                   max_regression=0.02)


def test_nan_accuracy_never_passes() -> None:
    with pytest.raises(GateFailed, match="NaN"):
        check_gate({"accuracy": float("nan")}, min_accuracy=0.0, champion_metrics=None, max_regression=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_accuracy": 1.5}, r"min_accuracy must be in \[0, 1\], got 1.5"),
        ({"max_regression": -0.1}, "max_regression must be >= 0"),
        ({"max_regression": float("nan")}, "max_regression must be >= 0"),
        ({"champion_metrics": {"f1_macro": 0.9}}, "champion's metrics have no 'accuracy'"),
    ],
)
def test_bad_inputs_are_named(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"min_accuracy": 0.8, "champion_metrics": None, "max_regression": 0.02}
    with pytest.raises(ValueError, match=message):
        check_gate({"accuracy": 0.9}, **{**arguments, **kwargs})  # type: ignore[arg-type]


def test_metrics_without_accuracy_are_named() -> None:
    with pytest.raises(ValueError, match=r"new model's metrics have no 'accuracy' \(found \['f1_macro'\]\)"):
        check_gate({"f1_macro": 0.9}, min_accuracy=0.8, champion_metrics=None, max_regression=0.02)


def test_the_metrics_and_the_log_line_say_what_was_compared() -> None:
    decision = check_gate({"accuracy": 0.92}, min_accuracy=0.8, champion_metrics={"accuracy": 0.95},
                          max_regression=0.05)
    assert decision.as_metrics() == pytest.approx({
        "accuracy": 0.92, "min_accuracy": 0.8, "max_regression": 0.05, "new_model": 1.0,
        "champion_accuracy": 0.95, "accuracy_change_vs_champion": -0.03})
    assert decision.describe() == ("accuracy 0.92 >= min_accuracy 0.8; champion accuracy 0.95 on the same "
                                   "held-out rows, allowed regression 0.05")
    first = check_gate({"accuracy": 0.95}, min_accuracy=0.9, champion_metrics=None, max_regression=0.02)
    assert first.describe() == "accuracy 0.95 >= min_accuracy 0.9; no champion yet"
    assert first.champion_version is None


def test_nothing_new_names_the_champion_and_the_flags_that_make_a_challenger() -> None:
    same = GateDecision(accuracy=0.9, min_accuracy=0.8, max_regression=0.02, champion_accuracy=None,
                        new_model=False, champion_version="v7")
    assert same.describe() == (
        "nothing new to test: the new model is byte for byte the champion (version v7); nothing is stored "
        "or deployed. Change the data (--data-uri) or the training parameters (--seed, --c, --test-size) "
        "to train a challenger")
    assert same.as_metrics()["new_model"] == 0.0


def test_a_decision_cannot_be_changed_after_the_gate() -> None:
    decision = check_gate({"accuracy": 0.95}, min_accuracy=0.9, champion_metrics=None, max_regression=0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.accuracy = 1.0  # type: ignore[misc]
