"""Training on sklearn's bundled iris data: sane, reproducible, and strict about its parameters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pytest

from abflow.components.datasets import DataError, load_labelled_rows
from abflow.components.training import TrainResult, train_iris, train_result_from, train_summary
from abflow.serving.artifact import DEFAULT_CLASS_NAMES


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return train_iris()


def test_metrics_are_sane(trained: TrainResult) -> None:
    assert trained.metrics["accuracy"] > 0.8
    assert trained.metrics["f1_macro"] > 0.8
    assert 0 < trained.metrics["log_loss"] < 0.5
    assert trained.class_names == list(DEFAULT_CLASS_NAMES)
    matrix = np.array(trained.confusion_matrix)
    assert matrix.shape == (3, 3)
    assert matrix.sum() == 38  # 25 % of 150 rows, rounded up
    assert list(matrix.sum(axis=1)) in ([13, 13, 12], [13, 12, 13], [12, 13, 13])  # stratified
    assert trained.metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert trained.params == {"c": 1.0, "max_iter": 200, "test_size": 0.25, "seed": 42}


def test_model_takes_raw_centimetres(trained: TrainResult) -> None:
    model = joblib.load(io.BytesIO(trained.model_bytes))
    assert [name for name, _ in model.steps] == ["scaler", "clf"]
    # The tutorial's request: a setosa flower, measured in centimetres.
    assert model.predict(np.array([[5.1, 3.5, 1.4, 0.2]])).tolist() == [0]
    assert model.predict_proba(np.array([[6.7, 3.0, 5.2, 2.3]]))[0].argmax() == 2


def test_same_seed_same_model_other_seed_other_split(trained: TrainResult) -> None:
    again = train_iris()
    assert again.model_bytes == trained.model_bytes
    assert again.metrics == trained.metrics
    assert again.data_fingerprint == trained.data_fingerprint
    other = train_iris(seed=7)
    assert other.data_fingerprint != trained.data_fingerprint
    assert train_iris(c=0.1).data_fingerprint == trained.data_fingerprint  # same data, other model


def test_summary_round_trips_through_json(trained: TrainResult) -> None:
    rebuilt = train_result_from(trained.model_bytes, json.dumps(train_summary(trained)))
    assert rebuilt == trained
    with pytest.raises(ValueError, match="lacks \\['data_fingerprint'\\]"):
        train_result_from(b"", {k: v for k, v in train_summary(trained).items() if k != "data_fingerprint"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"test_size": 1.5}, r"test_size must be in \(0, 1\), got 1.5"),
        ({"test_size": 0.0}, r"test_size must be in \(0, 1\), got 0.0"),
        ({"test_size": 0.01}, "puts 2 of 150 samples in the test set"),
        ({"test_size": 0.99}, "puts 149 of 150 samples in the test set"),
        ({"c": 0}, "c must be a positive number"),
        ({"c": float("nan")}, "c must be a positive number"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
        ({"max_iter": 2.5}, "max_iter must be an integer >= 1, got 2.5"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_iris(**kwargs)  # type: ignore[arg-type]


def test_a_csv_trains_and_its_fingerprint_differs(tmp_path: Path, trained: TrainResult) -> None:
    rows = load_labelled_rows()
    lines = ["sepallengthcm,sepalwidthcm,petallengthcm,petalwidthcm,species"]
    lines += [",".join([*map(repr, f), str(label)]) for f, label in zip(rows.features.tolist(),
                                                                          rows.labels.tolist(), strict=True)]
    (tmp_path / "all.csv").write_text("\n".join(lines))
    (tmp_path / "most.csv").write_text("\n".join(lines[:-10]))
    same = train_iris(data_uri=str(tmp_path / "all.csv"))
    assert same.model_bytes == trained.model_bytes, "the same rows from a CSV train the same model"
    assert same.data_fingerprint == trained.data_fingerprint
    fewer = train_iris(data_uri=str(tmp_path / "most.csv"))
    assert fewer.data_fingerprint != trained.data_fingerprint
    assert fewer.holdout is not None and len(fewer.holdout.labels) == 35


def test_the_held_out_rows_are_the_scored_rows(trained: TrainResult) -> None:
    assert trained.holdout is not None
    model = joblib.load(io.BytesIO(trained.model_bytes))
    accuracy = float((model.predict(trained.holdout.features) == trained.holdout.labels).mean())
    assert accuracy == trained.metrics["accuracy"]


def test_data_missing_a_class_is_refused_naming_it(tmp_path: Path) -> None:
    csv_text = "a,b,c,d,species\n" + "\n".join(f"{i},1,1,1,{'setosa' if i % 2 else 'versicolor'}" for i in range(20))
    (tmp_path / "two.csv").write_text(csv_text)
    with pytest.raises(DataError, match="has 0 rows of iris-virginica: every class needs at least 2"):
        train_iris(data_uri=str(tmp_path / "two.csv"), feature_columns="a,b,c,d")
