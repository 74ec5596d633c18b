"""Load one trained model for serving, refusing anything that would serve wrong answers quietly.

The checks run before the first request rather than on it: a model whose bytes changed since training
(sha256), or that was pickled by a different scikit-learn major.minor (pickles are not portable across
them), or whose classes do not match its class names, is refused at start-up with a message that
says how to fix it. Unpickling runs code from the file, so only load models from stores you trust;
the sha256 check protects integrity, not trust.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from abflow.serving.artifact import (
    DEFAULT_CLASS_NAMES,
    METADATA_FILE,
    MODEL_FILE,
    ModelMetadata,
    major_minor,
    sha256_of,
)

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle", ".sav")
RESTORE_HINT = "re-run the store step or point --model at an intact version"


class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says what failed and what to do about it."""


@dataclass
class LoadedModel:
    estimator: Any
    class_names: tuple[str, ...]
    n_features: int | None
    metadata: ModelMetadata | None
    uri: str

    def predict_proba(self, features: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Probabilities per row; a serving process calls ``trust_decoded_input`` once to make it cheap."""
        return np.asarray(self.estimator.predict_proba(features), dtype=np.float64)


def trust_decoded_input() -> None:
    """Switch off scikit-learn's per-call input checks for this process (its predicting thread).

    Every row a model server predicts came through ``abflow.serving.protocol``'s decoder, which refused
    NaN/Infinity, ragged shapes and non-numbers, so sklearn's finiteness scan and parameter validation
    are repeated work on each request. ``set_config`` once instead of ``config_context`` per call:
    sklearn keeps its config per thread, a model server predicts on its event loop's one thread, and
    the context manager alone costs ~5 µs per request.
    """
    import sklearn

    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)


def load_model(uri: str) -> LoadedModel:
    """Load ``uri``: a folder with model.joblib (+ metadata.json), a pickle file, file://… or gs://…."""
    model_bytes, metadata_bytes, where = _read(uri)
    metadata = _check_metadata(metadata_bytes, model_bytes, where) if metadata_bytes is not None else None
    estimator = _unpickle(model_bytes, where)
    class_names = tuple(metadata.class_names) if metadata else DEFAULT_CLASS_NAMES
    _check_estimator(estimator, class_names, where, has_metadata=metadata is not None)
    n_features = getattr(estimator, "n_features_in_", None)
    return LoadedModel(
        estimator=estimator,
        class_names=class_names,
        n_features=int(n_features) if n_features is not None else None,
        metadata=metadata,
        uri=uri,
    )


def _read(uri: str) -> tuple[bytes, bytes | None, str]:
    """The model's bytes, its metadata.json bytes if it has one, and where they came from."""
    if not uri:
        raise ModelLoadError("empty model URI: give a folder holding model.joblib, a .joblib file or gs://…")
    parsed = urlparse(uri)
    if parsed.scheme == "gs":
        return _read_gcs(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ModelLoadError(f"{uri!r} is not a local file URI: use file:///absolute/path")
        return _read_local(Path(unquote(parsed.path)))
    if len(parsed.scheme) > 1:
        raise ModelLoadError(
            f"model URI scheme {parsed.scheme!r} is not supported in {uri!r}: "
            "use a local path, file:///absolute/path or gs://bucket/prefix"
        )
    return _read_local(Path(uri))


def _read_local(path: Path) -> tuple[bytes, bytes | None, str]:
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        if path.is_dir():
            raise ModelLoadError(
                f"{path} holds no {MODEL_FILE}: point --model at a model version folder "
                f"(model.joblib + metadata.json) or at a .joblib file"
            )
        raise ModelLoadError(f"model {path} does not exist: check the path given to --model or modelUri")
    metadata_path = model_path.with_name(METADATA_FILE)
    try:
        model_bytes = model_path.read_bytes()
        has_metadata = model_path.name == MODEL_FILE and metadata_path.is_file()
        metadata_bytes = metadata_path.read_bytes() if has_metadata else None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {model_path}: {exc}") from exc
    return model_bytes, metadata_bytes, str(model_path)


def _read_gcs(uri: str) -> tuple[bytes, bytes | None, str]:
    from abflow.serving.store import StoreError, open_store

    root, _, last = uri.rstrip("/").rpartition("/")
    if last.endswith(PICKLE_SUFFIXES) and root != "gs:/":
        folder, key = root, last
    else:
        folder, key = uri.rstrip("/"), MODEL_FILE
    try:
        store = open_store(folder)
        if not store.exists(key):
            raise ModelLoadError(
                f"{store.uri_for(key)} does not exist: point --model at a model version folder or a .joblib file"
            )
        model_bytes = store.read_bytes(key)
        has_metadata = key == MODEL_FILE and store.exists(METADATA_FILE)
        metadata_bytes = store.read_bytes(METADATA_FILE) if has_metadata else None
        return model_bytes, metadata_bytes, store.uri_for(key)
    except StoreError as exc:
        raise ModelLoadError(f"cannot read model {uri}: {exc}") from exc


def _check_metadata(metadata_bytes: bytes, model_bytes: bytes, where: str) -> ModelMetadata:
    try:
        metadata = ModelMetadata.from_json(metadata_bytes)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"{METADATA_FILE} beside {where} is not valid ({exc}): {RESTORE_HINT}") from exc
    actual = sha256_of(model_bytes)
    if actual != metadata.sha256:
        raise ModelLoadError(
            f"sha256 of {where} is {actual} but {METADATA_FILE} says {metadata.sha256}: the file was "
            f"changed or truncated after training; {RESTORE_HINT}"
        )
    trained_with = metadata.versions.get("sklearn") if isinstance(metadata.versions, dict) else None
    if trained_with:
        _check_sklearn_version(str(trained_with), where)
    return metadata


def _check_sklearn_version(trained_with: str, where: str) -> None:
    import sklearn

    if major_minor(trained_with) != major_minor(sklearn.__version__):
        raise ModelLoadError(
            f"{where} was trained with scikit-learn {trained_with} but this server runs "
            f"{sklearn.__version__}; pickles do not carry across major.minor versions: rebuild the "
            f"serving image pinned to scikit-learn=={trained_with} (the trainer's version)"
        )


def _unpickle(model_bytes: bytes, where: str) -> Any:
    import joblib
    from sklearn.exceptions import InconsistentVersionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        try:
            estimator = joblib.load(io.BytesIO(model_bytes))
        except Exception as exc:  # noqa: BLE001 - a corrupt pickle can raise almost anything
            raise ModelLoadError(
                f"{where} is not a loadable joblib/pickle file ({type(exc).__name__}: {exc}): {RESTORE_HINT}"
            ) from exc
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            _check_sklearn_version(warning.message.original_sklearn_version, where)
        else:
            warnings.warn(warning.message, warning.category, stacklevel=2)
    return estimator


def _check_estimator(estimator: Any, class_names: tuple[str, ...], where: str, *, has_metadata: bool) -> None:
    if not callable(getattr(estimator, "predict_proba", None)):
        raise ModelLoadError(
            f"{where} holds a {type(estimator).__name__}, not a scikit-learn classifier with predict_proba: "
            "point --model at a trained classifier"
        )
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ModelLoadError(f"{where} holds an unfitted {type(estimator).__name__}: train it before serving")
    if len(classes) != len(class_names):
        source = METADATA_FILE if has_metadata else "the default iris class names"
        fix = "fix class_names there" if has_metadata else f"add a {METADATA_FILE} with class_names"
        raise ModelLoadError(
            f"{where} predicts {len(classes)} classes but {source} name {len(class_names)} "
            f"({', '.join(class_names)}): {fix}"
        )
