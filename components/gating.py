"""The quality gate: a new model is deployed only if it is good enough, absolutely and against the
current champion. The plain logic behind the pipeline's ``gate`` step.

A failed gate raises ``GateFailed`` so the step, and with it the run, ends failed before anything
is stored or deployed, and the message says which number missed and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from abflow.components.datasets import LabelledRows
from abflow.components.registry import read_champion, read_model
from abflow.serving.artifact import sha256_of

TOLERANCE = 1e-9
"""Slack for float noise, so a model exactly at a limit (0.90 - 0.85 = 0.05000000000000004) passes."""


class GateFailed(RuntimeError):
    """The new model must not be deployed; the message names the number that missed."""


@dataclass(frozen=True)
class GateDecision:
    """What the gate compared, for the step's ``Metrics`` output and its log line.

    ``new_model`` is ``False`` when the challenger is byte for byte the champion (``champion_version``):
    there is nothing to A/B-test, so nothing is stored or deployed."""

    accuracy: float
    min_accuracy: float
    max_regression: float
    champion_accuracy: float | None
    new_model: bool = True
    champion_version: str | None = None

    def as_metrics(self) -> dict[str, float]:
        metrics = {"accuracy": self.accuracy, "min_accuracy": self.min_accuracy,
                   "max_regression": self.max_regression, "new_model": 1.0 if self.new_model else 0.0}
        if self.champion_accuracy is not None:
            metrics["champion_accuracy"] = self.champion_accuracy
            metrics["accuracy_change_vs_champion"] = self.accuracy - self.champion_accuracy
        return metrics

    def describe(self) -> str:
        if not self.new_model:
            return (f"nothing new to test: the new model is byte for byte the champion (version "
                    f"{self.champion_version}); nothing is stored or deployed. Change the data (--data-uri) or "
                    "the training parameters (--seed, --c, --test-size) to train a challenger")
        text = f"accuracy {_num(self.accuracy)} >= min_accuracy {_num(self.min_accuracy)}"
        if self.champion_accuracy is None:
            return f"{text}; no champion yet"
        return (f"{text}; champion accuracy {_num(self.champion_accuracy)} on the same held-out rows, allowed "
                f"regression {_num(self.max_regression)}")


def gate_challenger(
    *,
    model_bytes: bytes,
    metrics: Mapping[str, float],
    holdout: LabelledRows,
    artifact_root: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
) -> GateDecision:
    """The gate against the current champion of ``model_name`` in ``artifact_root``: a challenger that is
    the champion's own file is no challenger (``new_model=False``); otherwise the champion is loaded
    from the store and scored on the challenger's held-out rows, so both accuracies come from the same
    rows whatever seed, test size or data the champion was trained with."""
    champion = read_champion(artifact_root, model_name)
    if champion is not None and read_model(artifact_root, model_name, champion.version).sha256 == sha256_of(
            model_bytes):
        return GateDecision(accuracy=float(metrics.get("accuracy", math.nan)), min_accuracy=min_accuracy,
                            max_regression=max_regression, champion_accuracy=None, new_model=False,
                            champion_version=champion.version)
    champion_metrics = None
    if champion is not None:
        champion_metrics = {"accuracy": accuracy_on(champion.model_uri, holdout)}
    decision = check_gate(metrics, min_accuracy=min_accuracy, champion_metrics=champion_metrics,
                          max_regression=max_regression)
    return replace(decision, champion_version=champion.version if champion else None)


def accuracy_on(model_uri: str, rows: LabelledRows) -> float:
    """Accuracy of the stored model at ``model_uri`` on ``rows``, loaded as the server loads it (its
    sha256 and scikit-learn version checked first)."""
    from abflow.serving.model import ModelLoadError, load_model

    try:
        loaded = load_model(model_uri)
    except ModelLoadError as exc:
        raise GateFailed(f"cannot score the champion on the new model's held-out rows: {exc}") from exc
    predicted = loaded.estimator.predict(rows.features)
    return float((predicted == rows.labels).mean())


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
        champion_accuracy = _accuracy(champion_metrics, "the champion's metrics")
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
