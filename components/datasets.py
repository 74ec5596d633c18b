"""Labelled iris rows from wherever users keep them: sklearn's bundled copy or a CSV file in a store.

``train`` fits on these rows and ``abflow traffic`` replays them with their labels as truth, so both
read data the same way. A CSV is read through ``abflow.serving.store.open_store`` (a path,
``file://`` or ``gs://``), and its columns are checked before anything is trained: a missing column
or a non-numeric cell is an error that names the column, the row and the flag that fixes it, rather
than a numpy traceback a minute into a pipeline run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abflow.serving.artifact import DEFAULT_CLASS_NAMES, DEFAULT_FEATURE_NAMES
from abflow.serving.store import StoreError, open_store

BUNDLED_IRIS = "iris"
"""The ``data_uri`` that means scikit-learn's bundled iris data (150 rows, no file needed)."""
DEFAULT_FEATURE_COLUMNS = ",".join(DEFAULT_FEATURE_NAMES)
DEFAULT_LABEL_COLUMN = "species"


class DataError(ValueError):
    """The data cannot be used as labelled iris rows; the message names the column or row and the fix."""


@dataclass(frozen=True)
class LabelledRows:
    """Feature rows (float64, one column per feature) and their class indices into ``DEFAULT_CLASS_NAMES``."""

    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    source: str

    def fingerprint(self) -> str:
        """sha256 over the rows (shape, features, labels): equal fingerprints mean the same data."""
        digest = hashlib.sha256()
        for part in (np.asarray(self.features.shape, dtype=np.int64).tobytes(),
                     np.ascontiguousarray(self.features).tobytes(), np.ascontiguousarray(self.labels).tobytes()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()


def parse_columns(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"a,b,c,d"`` (a pipeline parameter) or a sequence of names, as the four feature column names."""
    names = tuple(name.strip() for name in (spec.split(",") if isinstance(spec, str) else spec))
    if len(names) != len(DEFAULT_FEATURE_NAMES) or not all(names):
        raise DataError(f"feature columns must be {len(DEFAULT_FEATURE_NAMES)} comma-separated names (e.g. "
                        f"{DEFAULT_FEATURE_COLUMNS!r}), got {spec!r}")
    return names


def load_labelled_rows(data_uri: str = BUNDLED_IRIS, *, feature_columns: str | Sequence[str] = DEFAULT_FEATURE_COLUMNS,
                       label_column: str = DEFAULT_LABEL_COLUMN) -> LabelledRows:
    """The bundled iris data for ``"iris"``, else the CSV at ``data_uri`` (path, ``file://``, ``gs://``)."""
    if data_uri == BUNDLED_IRIS:
        from sklearn.datasets import load_iris

        iris = load_iris()
        return LabelledRows(np.ascontiguousarray(iris.data, dtype=np.float64),
                            np.ascontiguousarray(iris.target, dtype=np.int64), "sklearn's bundled iris")
    return parse_csv(_read(data_uri), feature_columns=parse_columns(feature_columns), label_column=label_column,
                     where=data_uri)


def parse_csv(text: str, *, feature_columns: Sequence[str], label_column: str, where: str) -> LabelledRows:
    """Rows of a CSV with a header; column names match case-insensitively (``SepalLengthCm`` is
    ``sepallengthcm``). Labels are class names with or without the ``iris-`` prefix, in any case
    (``Iris-setosa``, ``setosa``), or class indices ``0``-``2``."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise DataError(f"{where} is empty: a CSV with a header row and one row per flower is needed")
    positions = {name.strip().lower(): index for index, name in enumerate(header)}
    wanted = [*feature_columns, label_column]
    missing = [name for name in wanted if name.strip().lower() not in positions]
    if missing:
        raise DataError(
            f"{where} has no column {missing[0]!r} (its columns: {', '.join(header)}); name the columns with "
            "--feature-columns (four, comma-separated) and --label-column"
        )
    feature_at = [positions[name.strip().lower()] for name in feature_columns]
    label_at = positions[label_column.strip().lower()]
    features: list[list[float]] = []
    labels: list[int] = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{where} line {line} has {len(row)} cells, the header {len(header)}")
        features.append([_number(row[at], name, line, where) for at, name in zip(feature_at, feature_columns,
                                                                                   strict=True)])
        labels.append(_label(row[label_at], label_column, line, where))
    if not labels:
        raise DataError(f"{where} has a header but no rows")
    return LabelledRows(np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64), where)


def to_csv(rows: LabelledRows) -> str:
    """The rows as a CSV that ``parse_csv`` reads back exactly (default column names, ``repr`` floats):
    how the held-out split travels from ``train`` to ``gate``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*DEFAULT_FEATURE_NAMES, DEFAULT_LABEL_COLUMN])
    for features, label in zip(rows.features.tolist(), rows.labels.tolist(), strict=True):
        writer.writerow([*map(repr, features), DEFAULT_CLASS_NAMES[label]])
    return buffer.getvalue()


def _read(uri: str) -> str:
    folder, _, name = uri.rpartition("/")
    # "file:///data.csv" leaves "file://": the store needs its root, "file:///".
    folder = folder + "/" if folder.endswith("/") else folder or "."
    try:
        data = open_store(folder).read_bytes(name)
    except StoreError as exc:
        raise DataError(f"cannot read the training data {uri!r}: {exc}; pass --data-uri iris for the bundled "
                        "data, or a CSV path, file:// or gs:// URI") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri} is not UTF-8 text ({exc}): save it as a UTF-8 CSV") from exc


def _number(cell: str, column: str, line: int, where: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"column {column!r} of {where} is not numeric: line {line} holds {cell!r}; "
                        "fix the cell or point --feature-columns at the measurement columns") from None
    if not math.isfinite(value):
        raise DataError(f"column {column!r} of {where} holds {cell!r} on line {line}: every measurement must "
                        "be a finite number")
    return value


_LABELS = {
    **{name.lower(): index for index, name in enumerate(DEFAULT_CLASS_NAMES)},
    **{name.lower().removeprefix("iris-"): index for index, name in enumerate(DEFAULT_CLASS_NAMES)},
    **{str(index): index for index in range(len(DEFAULT_CLASS_NAMES))},
}


def _label(cell: str, column: str, line: int, where: str) -> int:
    index = _LABELS.get(cell.strip().lower())
    if index is None:
        raise DataError(f"label column {column!r} of {where} holds {cell!r} on line {line}: use a class name "
                        f"({', '.join(DEFAULT_CLASS_NAMES)}, with or without 'iris-') or an index 0-"
                        f"{len(DEFAULT_CLASS_NAMES) - 1}")
    return index
