"""Labelled rows from sklearn's bundled iris or a CSV in a store: columns checked up front, by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abflow.components.datasets import (
    DEFAULT_FEATURE_COLUMNS,
    DEFAULT_LABEL_COLUMN,
    DataError,
    LabelledRows,
    load_labelled_rows,
    parse_columns,
    parse_csv,
    to_csv,
)
from abflow.components.store_writes import open_writable_store

KAGGLE_HEADER = "Id,SepalLengthCm,SepalWidthCm,PetalLengthCm,PetalWidthCm,Species"
KAGGLE_ROWS = [
    "1,5.1,3.5,1.4,0.2,Iris-setosa",
    "2,4.9,3.0,1.4,0.2,Iris-setosa",
    "51,7.0,3.2,4.7,1.4,Iris-versicolor",
    "52,6.4,3.2,4.5,1.5,versicolor",
    "101,6.3,3.3,6.0,2.5,2",
    "102,5.8,2.7,5.1,1.9,IRIS-VIRGINICA",
]


def write_csv(folder: Path, text: str, name: str = "flowers.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_iris_is_the_default() -> None:
    rows = load_labelled_rows()
    assert rows.features.shape == (150, 4)
    assert np.bincount(rows.labels).tolist() == [50, 50, 50]
    assert rows.fingerprint() == load_labelled_rows("iris").fingerprint()


def test_a_kaggle_style_csv_reads_by_path_and_file_uri(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "\n".join([KAGGLE_HEADER, *KAGGLE_ROWS]) + "\n")
    by_path = load_labelled_rows(str(path))
    by_uri = load_labelled_rows(path.as_uri())
    assert by_path.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert by_path.features[0].tolist() == [5.1, 3.5, 1.4, 0.2]
    assert by_path.fingerprint() == by_uri.fingerprint()
    changed = write_csv(tmp_path, "\n".join([KAGGLE_HEADER, *KAGGLE_ROWS[:-1]]) + "\n", "fewer.csv")
    assert load_labelled_rows(str(changed)).fingerprint() != by_path.fingerprint()


def test_a_csv_in_a_bucket_reads_through_the_store(gcs_root: str) -> None:
    open_writable_store(gcs_root).write_bytes("data/iris.csv", "\n".join([KAGGLE_HEADER, *KAGGLE_ROWS]).encode())
    rows = load_labelled_rows(f"{gcs_root}/data/iris.csv")
    assert rows.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_configured_column_names(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "a,b,c,d,kind\n1,2,3,4,setosa\n")
    rows = load_labelled_rows(str(path), feature_columns="d, c,b,a", label_column="kind")
    assert rows.features.tolist() == [[4.0, 3.0, 2.0, 1.0]]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        (KAGGLE_HEADER.replace(",PetalWidthCm", "") + "\n", {},
         r"has no column 'petalwidthcm' \(its columns: Id, SepalLengthCm.*--feature-columns"),
        (KAGGLE_HEADER + "\n" + KAGGLE_ROWS[0] + "\n", {"label_column": "variety"},
         r"has no column 'variety'.*--label-column"),
        (KAGGLE_HEADER + "\n" + KAGGLE_ROWS[0].replace("3.5", "wide") + "\n", {},
         r"column 'sepalwidthcm' of .* is not numeric: line 2 holds 'wide'"),
        (KAGGLE_HEADER + "\n" + KAGGLE_ROWS[0].replace("0.2", "nan") + "\n", {},
         r"column 'petalwidthcm' of .* holds 'nan' on line 2"),
        (KAGGLE_HEADER + "\n" + KAGGLE_ROWS[0].replace("Iris-setosa", "rose") + "\n", {},
         r"label column 'species' of .* holds 'rose' on line 2"),
        (KAGGLE_HEADER + "\n" + KAGGLE_ROWS[0] + ",extra\n", {}, "line 2 has 7 cells, the header 6"),
        (KAGGLE_HEADER + "\n", {}, "has a header but no rows"),
        ("", {}, "is empty"),
        (KAGGLE_HEADER + "\n", {"feature_columns": "a,b,c"}, "feature columns must be 4 comma-separated names"),
    ],
)
def test_unusable_csvs_name_the_column_or_row(tmp_path: Path, text: str, kwargs: dict[str, str],
                                              message: str) -> None:
    path = write_csv(tmp_path, text)
    with pytest.raises(DataError, match=message):
        load_labelled_rows(str(path), **kwargs)


def test_a_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read the training data .*--data-uri iris"):
        load_labelled_rows(str(tmp_path / "nope.csv"))


def test_column_lists_parse() -> None:
    assert parse_columns(" a, b,c ,d") == ("a", "b", "c", "d")
    with pytest.raises(DataError, match="got 'a,,c,d'"):
        parse_columns("a,,c,d")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
                          st.integers(0, 2)), min_size=1, max_size=30))
def test_held_out_rows_travel_as_csv_exactly(rows: list[tuple[list[float], int]]) -> None:
    original = LabelledRows(np.array([r[0] for r in rows], dtype=np.float64),
                            np.array([r[1] for r in rows], dtype=np.int64), "generated")
    parsed = parse_csv(to_csv(original), feature_columns=parse_columns(DEFAULT_FEATURE_COLUMNS),
                       label_column=DEFAULT_LABEL_COLUMN, where="generated")
    assert parsed.features.tobytes() == original.features.tobytes()
    assert parsed.labels.tolist() == original.labels.tolist()
