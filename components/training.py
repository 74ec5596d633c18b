"""Train the iris classifier: the plain logic behind the pipeline's ``train`` step.

The model is ``Pipeline([StandardScaler, LogisticRegression])`` rather than the bare classifier:
scaling makes the solver converge in a few iterations for any ``C`` and lets ``C`` penalise every
feature alike, and because the scaler is pickled with the classifier the server receives the raw
measurements in centimetres, exactly as the tutorial's clients send them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from abflow.serving.artifact import DEFAULT_CLASS_NAMES, sha256_of


@dataclass(frozen=True)
class TrainResult:
    """A trained model and everything the store records next to it."""

    model_bytes: bytes
    metrics: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    params: dict[str, Any]
    data_fingerprint: str

    @property
    def sha256(self) -> str:
        return sha256_of(self.model_bytes)


def train_iris(c: float = 1.0, max_iter: int = 200, test_size: float = 0.25, seed: int = 42) -> TrainResult:
    """Fit on a stratified split of sklearn's bundled iris data and score on the held-out part.

    The same arguments give the same model bytes and metrics, so a rerun is reproducible and the
    data fingerprint tells whether two models saw the same training data."""
    import joblib
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    iris = load_iris()
    features, labels = np.ascontiguousarray(iris.data), np.ascontiguousarray(iris.target)
    class_names = [f"iris-{name}" for name in iris.target_names]
    if tuple(class_names) != DEFAULT_CLASS_NAMES:
        raise RuntimeError(f"sklearn's iris classes {class_names} differ from {list(DEFAULT_CLASS_NAMES)}")
    validate_params(c=c, max_iter=max_iter, test_size=test_size, seed=seed,
                    n_samples=len(labels), n_classes=len(class_names))
    params: dict[str, Any] = {"c": float(c), "max_iter": int(max_iter), "test_size": float(test_size),
                              "seed": int(seed)}

    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    model = Pipeline([
        ("scaler", StandardScaler()),
        ("clf", LogisticRegression(C=c, max_iter=max_iter, random_state=seed)),
    ]).fit(x_train, y_train)

    predicted = model.predict(x_test)
    all_labels = list(range(len(class_names)))
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
        "log_loss": float(log_loss(y_test, model.predict_proba(x_test), labels=all_labels)),
    }
    matrix = confusion_matrix(y_test, predicted, labels=all_labels)

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return TrainResult(
        model_bytes=buffer.getvalue(),
        metrics=metrics,
        confusion_matrix=[[int(cell) for cell in row] for row in matrix],
        class_names=class_names,
        params=params,
        data_fingerprint=data_fingerprint(features.tobytes(), labels.tobytes(), test_size=test_size,
                                          seed=seed),
    )


def validate_params(*, c: float, max_iter: int, test_size: float, seed: int, n_samples: int,
                    n_classes: int) -> None:
    """Refuse parameters sklearn would reject deep inside ``fit`` (or silently accept badly), with a
    message that names the parameter, the value and the allowed range."""
    if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c <= 0:
        raise ValueError(f"c must be a positive number (inverse regularisation strength), got {c!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(test_size, bool) or not isinstance(test_size, int | float) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    n_test = math.ceil(test_size * n_samples)
    if n_test < n_classes or n_samples - n_test < n_classes:
        raise ValueError(
            f"test_size {test_size} puts {n_test} of {n_samples} samples in the test set; a stratified "
            f"split needs at least {n_classes} on each side (one per class)"
        )


def data_fingerprint(features: bytes, labels: bytes, *, test_size: float, seed: int) -> str:
    """sha256 over the training data and the split that was taken from it: two models with the same
    fingerprint were trained and scored on exactly the same rows."""
    digest = hashlib.sha256()
    for part in (features, labels, json.dumps({"test_size": test_size, "seed": seed, "stratify": True},
                                               sort_keys=True).encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def train_summary(result: TrainResult) -> dict[str, Any]:
    """Everything in a ``TrainResult`` except the model bytes, as JSON-ready values: what one
    pipeline step hands the next beside the ``Model`` artifact file."""
    return {
        "metrics": result.metrics,
        "confusion_matrix": result.confusion_matrix,
        "class_names": result.class_names,
        "params": result.params,
        "data_fingerprint": result.data_fingerprint,
    }


def train_result_from(model_bytes: bytes, summary: str | dict[str, Any]) -> TrainResult:
    """Rebuild a ``TrainResult`` from a model file and its ``train_summary`` (a dict or its JSON)."""
    body = json.loads(summary) if isinstance(summary, str) else summary
    missing = {"metrics", "confusion_matrix", "class_names", "params", "data_fingerprint"} - body.keys()
    if missing:
        raise ValueError(f"train summary lacks {sorted(missing)}: pass the summary the train step wrote")
    return TrainResult(
        model_bytes=model_bytes,
        metrics={str(name): float(value) for name, value in body["metrics"].items()},
        confusion_matrix=[[int(cell) for cell in row] for row in body["confusion_matrix"]],
        class_names=[str(name) for name in body["class_names"]],
        params=dict(body["params"]),
        data_fingerprint=str(body["data_fingerprint"]),
    )
