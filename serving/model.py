"""Load one trained model for serving, refusing anything that would run untrusted code or serve wrong
answers quietly.

Unpickling runs code from the file, so a model is unpickled only once its bytes match the sha256 in
the ``metadata.json`` beside it (written by the store step after the model itself, so a half-published
version has none); with ``ABFLOW_MODEL_SIGNING_KEY`` set, that ``metadata.json`` must also carry a
valid HMAC signature, so whoever can write the bucket but lacks the key cannot swap a model in. A
model with nothing to vouch for it (a bare pickle, a folder without ``metadata.json``) is refused
unless the user opts in loudly (``--allow-unverified-model``). The remaining checks run before the
first request rather than on it: a model pickled by a different scikit-learn major.minor (pickles
are not portable across them), or whose classes do not match its class names, is refused at start-up
with a message that says how to fix it.
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
    ALLOW_UNVERIFIED_ENV,
    ALLOW_UNVERIFIED_FLAG,
    DEFAULT_CLASS_NAMES,
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    ModelMetadata,
    major_minor,
    sha256_of,
    signature_matches,
    signing_key_from_env,
)

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle", ".sav")
RESTORE_HINT = "re-run the store step or point --model at an intact version"
OPT_IN_HINT = (f"or, only if you trust this file and where it came from, pass {ALLOW_UNVERIFIED_FLAG} "
               f"({ALLOW_UNVERIFIED_ENV}=1 in the serving image)")


class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says what failed and what to do about it."""


@dataclass
class LoadedModel:
    estimator: Any
    class_names: tuple[str, ...]
    n_features: int | None
    metadata: ModelMetadata | None
    uri: str
    unverified: str | None = None
    """Why nothing vouched for the bytes that were unpickled (only with the opt-in); None when verified."""

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


def load_model(uri: str, *, allow_unverified: bool = False, signing_key: bytes | None = None) -> LoadedModel:
    """Load ``uri``: a version folder (model.joblib + metadata.json), its model.joblib, file://… or gs://….

    ``signing_key`` defaults to ``ABFLOW_MODEL_SIGNING_KEY``; with a key, metadata.json must be signed
    with it. ``allow_unverified`` admits a model with no metadata.json (or no signature) to vouch for
    it; the loaded model's ``unverified`` says why, for the caller to warn about. A sha256 mismatch or
    a wrong signature is evidence of tampering or corruption and is refused even then."""
    files = _read(uri)
    key = signing_key if signing_key is not None else signing_key_from_env()
    unverified = _check_signature(files, key, allow_unverified)
    if files.metadata is None:
        unverified = _no_metadata(files.where, allow_unverified)
        metadata = None
    else:
        metadata = _check_metadata(files.metadata, files.model, files.where)
    estimator = _unpickle(files.model, files.where)
    class_names = tuple(metadata.class_names) if metadata else DEFAULT_CLASS_NAMES
    _check_estimator(estimator, class_names, files.where, has_metadata=metadata is not None)
    n_features = getattr(estimator, "n_features_in_", None)
    return LoadedModel(
        estimator=estimator,
        class_names=class_names,
        n_features=int(n_features) if n_features is not None else None,
        metadata=metadata,
        uri=uri,
        unverified=unverified,
    )


@dataclass(frozen=True)
class _ModelFiles:
    """A model's bytes and what lies beside it (None when absent), and where they came from."""

    model: bytes
    metadata: bytes | None
    signature: bytes | None
    where: str


def _no_metadata(where: str, allow_unverified: bool) -> str:
    reason = (f"{where} has no {METADATA_FILE} beside it (a bare pickle, or a folder the store step did not "
              "write), so nothing vouches for its bytes, and unpickling runs code from the file")
    if not allow_unverified:
        raise ModelLoadError(
            f"refusing to unpickle {reason}: publish it with the store step (it writes {MODEL_FILE} + "
            f"{METADATA_FILE} with its sha256) and point --model at that version folder, {OPT_IN_HINT}")
    return reason


def _check_signature(files: _ModelFiles, key: bytes | None, allow_unverified: bool) -> str | None:
    """Refuse metadata that a configured signing key does not vouch for; None when it does (or no key)."""
    if key is None or files.metadata is None:
        return None
    if files.signature is None:
        reason = (f"{METADATA_FILE} beside {files.where} is not signed ({SIGNATURE_FILE} is missing) but "
                  f"{SIGNING_KEY_ENV} is set")
        if not allow_unverified:
            raise ModelLoadError(
                f"{reason}: publish the model with the signing key set (the store step then writes "
                f"{SIGNATURE_FILE}), or unset {SIGNING_KEY_ENV} where this store is not signed, {OPT_IN_HINT}")
        return reason
    if not signature_matches(files.metadata, files.signature, key):
        raise ModelLoadError(
            f"{SIGNATURE_FILE} beside {files.where} does not match its {METADATA_FILE} under the configured "
            f"{SIGNING_KEY_ENV}: the metadata was changed after publishing, or signed with another key; "
            "publish the version again with the right key")
    return None


def _read(uri: str) -> _ModelFiles:
    if not uri:
        raise ModelLoadError("empty model URI: give a model version folder (model.joblib + metadata.json), "
                             "file://… or gs://…")
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


def _read_local(path: Path) -> _ModelFiles:
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        if path.is_dir():
            raise ModelLoadError(
                f"{path} holds no {MODEL_FILE}: point --model at a model version folder "
                f"(model.joblib + metadata.json)"
            )
        raise ModelLoadError(f"model {path} does not exist: check the path given to --model or modelUri")

    def beside(name: str) -> bytes | None:
        other = model_path.with_name(name)
        return other.read_bytes() if model_path.name == MODEL_FILE and other.is_file() else None

    try:
        return _ModelFiles(model_path.read_bytes(), beside(METADATA_FILE), beside(SIGNATURE_FILE),
                           str(model_path))
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {model_path}: {exc}") from exc


def _read_gcs(uri: str) -> _ModelFiles:
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
                f"{store.uri_for(key)} does not exist: point --model at a model version folder"
            )

        def beside(name: str) -> bytes | None:
            return store.read_bytes(name) if key == MODEL_FILE and store.exists(name) else None

        return _ModelFiles(store.read_bytes(key), beside(METADATA_FILE), beside(SIGNATURE_FILE),
                           store.uri_for(key))
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
