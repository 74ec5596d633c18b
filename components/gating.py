"""The quality gate: a new model is deployed only if it is good enough, absolutely and against the
current champion. The plain logic behind the pipeline's ``gate`` step.

A failed gate raises ``GateFailed`` so the step, and with it the run, ends failed before anything
is stored or deployed, and the message says which number missed and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

TOLERANCE = 1e-9
"""Slack for float noise, so a model exactly at a limit (0.90 - 0.85 = 0.05000000000000004) passes."""


class GateFailed(RuntimeError):
    """The new model must not be deployed; the message names the number that missed."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate compared, for the step's ``Metrics`` output and its log line."""

    accuracy: float
    min_accuracy: float
    max_regression: float
    champion_accuracy: float | None

    def as_metrics(self) -> dict[str, float]:
        metrics = {"accuracy": self.accuracy, "min_accuracy": self.min_accuracy,
                   "max_regression": self.max_regression}
        if self.champion_accuracy is not None:
            metrics["champion_accuracy"] = self.champion_accuracy
            metrics["accuracy_change_vs_champion"] = self.accuracy - self.champion_accuracy
        return metrics

    def describe(self) -> str:
        text = f"accuracy {_num(self.accuracy)} >= min_accuracy {_num(self.min_accuracy)}"
        if self.champion_accuracy is None:
            return f"{text}; no champion yet"
        return (f"{text}; champion accuracy {_num(self.champion_accuracy)}, allowed regression "
                f"{_num(self.max_regression)}")


def check_gate(
    metrics: Mapping[str, float],
    *,
    min_accuracy: float,
    champion_metrics: Mapping[str, float] | None,
    max_regression: float,
) -> GateDecision:
    """Pass (returning what was compared) or raise ``GateFailed``.

    ``max_regression`` is in accuracy points: 0.02 lets a challenger be up to two points worse than
    the champion (held-out accuracy on 38 iris rows moves in steps of ~0.026, so 0 would make the
    gate a coin toss between equally good models)."""
    if not 0 <= min_accuracy <= 1:
        raise ValueError(f"min_accuracy must be in [0, 1], got {min_accuracy!r}")
    if math.isnan(max_regression) or max_regression < 0:
        raise ValueError(f"max_regression must be >= 0 (accuracy points), got {max_regression!r}")
    accuracy = _accuracy(metrics, "the new model's metrics")
    if accuracy < min_accuracy - TOLERANCE:
        raise GateFailed(
            f"accuracy {_num(accuracy)} is below min_accuracy {_num(min_accuracy)}: the new model is not "
            "deployed; lower --min-accuracy or fix the training data"
        )
    champion_accuracy = None
    if champion_metrics is not None:
        champion_accuracy = _accuracy(champion_metrics, "the champion's metrics (champion.json)")
        if champion_accuracy - accuracy > max_regression + TOLERANCE:
            raise GateFailed(
                f"accuracy {_num(accuracy)} is worse than the champion's {_num(champion_accuracy)} by "
                f"{_num(champion_accuracy - accuracy)}, more than max_regression {_num(max_regression)}: "
                "the new model is not deployed; raise --max-regression to accept it, or fix the training"
            )
    return GateDecision(accuracy=accuracy, min_accuracy=min_accuracy, max_regression=max_regression,
                        champion_accuracy=champion_accuracy)


def _accuracy(metrics: Mapping[str, float], whose: str) -> float:
    if "accuracy" not in metrics:
        raise ValueError(f"{whose} have no 'accuracy' (found {sorted(metrics)}); the gate compares accuracy")
    value = float(metrics["accuracy"])
    if math.isnan(value):  # NaN compares false with everything and would slip through the checks
        raise GateFailed(f"{whose} report accuracy NaN: the new model is not deployed; check the training")
    return value


def _num(value: float) -> str:
    return f"{value:.6g}"
