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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from abflow.components.datasets import (
    BUNDLED_IRIS,
    DEFAULT_FEATURE_COLUMNS,
    DEFAULT_LABEL_COLUMN,
    DataError,
    LabelledRows,
    load_labelled_rows,
)
from abflow.serving.artifact import DEFAULT_CLASS_NAMES, sha256_of


@dataclass(frozen=True)
class TrainResult:
    """A trained model and everything the store records next to it.

    ``holdout`` is the held-out split the metrics were measured on; the gate scores the champion on
    the same rows. It travels as its own artifact and is not part of what the store records, so it
    is left out of equality (a ``TrainResult`` rebuilt from the store's summary has none)."""

    model_bytes: bytes
    metrics: dict[str, float]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    params: dict[str, Any]
    data_fingerprint: str
    holdout: LabelledRows | None = field(default=None, compare=False, repr=False)

    @property
    def sha256(self) -> str:
        return sha256_of(self.model_bytes)


def train_iris(c: float = 1.0, max_iter: int = 200, test_size: float = 0.25, seed: int = 42, *,
               data_uri: str = BUNDLED_IRIS, feature_columns: str = DEFAULT_FEATURE_COLUMNS,
               label_column: str = DEFAULT_LABEL_COLUMN) -> TrainResult:
    """Fit on a stratified split of the labelled rows at ``data_uri`` (sklearn's bundled iris by
    default, or a CSV) and score on the held-out part.

    The same arguments on the same data give the same model bytes and metrics, so a rerun is
    reproducible and the data fingerprint tells whether two models saw the same training data."""
    validate_params(c=c, max_iter=max_iter, test_size=test_size, seed=seed)
    rows = load_labelled_rows(data_uri, feature_columns=feature_columns, label_column=label_column)
    return train_on(rows, c=c, max_iter=max_iter, test_size=test_size, seed=seed)


def train_on(rows: LabelledRows, *, c: float, max_iter: int, test_size: float, seed: int) -> TrainResult:
    """``train_iris`` on rows already loaded."""
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    class_names = list(DEFAULT_CLASS_NAMES)
    validate_params(c=c, max_iter=max_iter, test_size=test_size, seed=seed)
    validate_split(rows, test_size=test_size)
    params: dict[str, Any] = {"c": float(c), "max_iter": int(max_iter), "test_size": float(test_size),
                              "seed": int(seed)}

    x_train, x_test, y_train, y_test = train_test_split(
        rows.features, rows.labels, test_size=test_size, random_state=seed, stratify=rows.labels
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
        data_fingerprint=data_fingerprint(rows, test_size=test_size, seed=seed),
        holdout=LabelledRows(x_test, y_test, f"the held-out {test_size:g} of {rows.source}"),
    )


def validate_params(*, c: float, max_iter: int, test_size: float, seed: int) -> None:
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


def validate_split(rows: LabelledRows, *, test_size: float) -> None:
    """Refuse data a stratified split cannot divide so that both sides hold every class: the served
    model must predict every class its metadata names, and the gate must score each."""
    n_classes, n_samples = len(DEFAULT_CLASS_NAMES), len(rows.labels)
    counts = np.bincount(rows.labels, minlength=n_classes)
    for index, count in enumerate(counts):
        if count < 2:
            raise DataError(f"{rows.source} has {count} rows of {DEFAULT_CLASS_NAMES[index]}: every class needs "
                            "at least 2 (one to train on, one to score)")
    n_test = math.ceil(test_size * n_samples)
    if n_test < n_classes or n_samples - n_test < n_classes:
        raise ValueError(
            f"test_size {test_size} puts {n_test} of {n_samples} samples in the test set; a stratified "
            f"split needs at least {n_classes} on each side (one per class)"
        )


def data_fingerprint(rows: LabelledRows, *, test_size: float, seed: int) -> str:
    """sha256 over the rows' own fingerprint and the split taken from them: two models with the same
    fingerprint were trained and scored on exactly the same rows."""
    split = json.dumps({"test_size": test_size, "seed": seed, "stratify": True}, sort_keys=True)
    return hashlib.sha256(f"{rows.fingerprint()}\n{split}".encode()).hexdigest()


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
