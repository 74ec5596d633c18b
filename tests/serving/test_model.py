"""Loading models from every kind of URI, and refusing every model that would run unvouched code or serve
wrong answers."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from abflow.components.store_writes import open_writable_store
from abflow.serving.artifact import (
    DEFAULT_CLASS_NAMES,
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    ModelMetadata,
    runtime_versions,
    sha256_of,
    sign_metadata,
)
from abflow.serving.model import ModelLoadError, load_model

FEATURES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])


class Witness:
    """Unpickling this creates the file at ``path``: proof, if it appears, that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.fixture
def model_dir(iris_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared model, safe to corrupt."""
    return Path(shutil.copytree(iris_model_dir, tmp_path / "iris" / "v1"))


def dumped(obj: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def write_folder(folder: Path, model_bytes: bytes, **metadata: Any) -> Path:
    """A model folder whose metadata matches its bytes, so only the property under test is wrong (the
    registry's writer cannot write such metadata on purpose, which is the point)."""
    fields: dict[str, Any] = {"name": "iris", "version": "v1", "versions": runtime_versions(), **metadata}
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(model_bytes)
    (folder / METADATA_FILE).write_bytes(ModelMetadata(sha256=sha256_of(model_bytes), **fields).to_json())
    return folder


def test_a_model_folder_loads_with_its_metadata(iris_model_dir: Path) -> None:
    model = load_model(str(iris_model_dir))
    assert model.class_names == DEFAULT_CLASS_NAMES
    assert model.n_features == 4
    assert model.metadata is not None and model.metadata.version == "v1"
    assert model.uri == str(iris_model_dir)
    probabilities = model.predict_proba(FEATURES)
    assert probabilities.shape == (2, 3) and probabilities.dtype == np.float64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities.argmax(axis=1).tolist() == [0, 2]


def test_file_uris_and_the_model_file_itself_load_with_metadata(iris_model_dir: Path) -> None:
    for uri in (
        iris_model_dir.as_uri(),
        str(iris_model_dir / "model.joblib"),
        (iris_model_dir / "model.joblib").as_uri(),
    ):
        model = load_model(uri)
        assert model.metadata is not None, uri
        assert model.uri == uri


@pytest.mark.parametrize("layout", ["bare file", "folder without metadata.json"])
def test_a_model_nothing_vouches_for_is_refused_before_unpickling(tmp_path: Path, layout: str) -> None:
    witness = tmp_path / "unpickled"
    payload = pickle.dumps(Witness(str(witness)))
    if layout == "bare file":
        uri = tmp_path / "IrisClassifier.sav"
        uri.write_bytes(payload)
    else:
        uri = tmp_path / "v1"
        uri.mkdir()
        (uri / MODEL_FILE).write_bytes(payload)
    with pytest.raises(ModelLoadError) as error:
        load_model(str(uri))
    message = str(error.value)
    assert "refusing to unpickle" in message and "has no metadata.json beside it" in message
    assert "publish it with the store step" in message and "--allow-unverified-model" in message
    assert not witness.exists()


def test_the_opt_in_loads_a_bare_pickle_and_says_it_is_unverified(iris_model_dir: Path, tmp_path: Path) -> None:
    """The tutorial's IrisClassifier.sav: no metadata, so the user vouches for it; default class names."""
    bare = tmp_path / "IrisClassifier.sav"
    shutil.copyfile(iris_model_dir / "model.joblib", bare)
    model = load_model(str(bare), allow_unverified=True)
    assert model.metadata is None and model.unverified is not None
    assert "has no metadata.json" in model.unverified
    assert model.class_names == DEFAULT_CLASS_NAMES
    assert model.predict_proba(FEATURES[:1]).shape == (1, 3)
    assert load_model(str(iris_model_dir), allow_unverified=True).unverified is None


def test_metadata_beside_a_differently_named_file_vouches_for_nothing(model_dir: Path) -> None:
    (model_dir / "model.joblib").rename(model_dir / "other.joblib")
    with pytest.raises(ModelLoadError, match="has no metadata.json"):
        load_model(str(model_dir / "other.joblib"))
    assert load_model(str(model_dir / "other.joblib"), allow_unverified=True).metadata is None


def test_with_a_signing_key_only_correctly_signed_metadata_loads(model_dir: Path) -> None:
    metadata = (model_dir / METADATA_FILE).read_bytes()
    (model_dir / SIGNATURE_FILE).write_bytes(sign_metadata(metadata, b"right key"))
    assert load_model(str(model_dir), signing_key=b"right key").unverified is None
    with pytest.raises(ModelLoadError, match="does not match its metadata.json under the configured"):
        load_model(str(model_dir), signing_key=b"wrong key")
    with pytest.raises(ModelLoadError, match="does not match"):  # even with the opt-in: that is tampering
        load_model(str(model_dir), signing_key=b"wrong key", allow_unverified=True)


def test_edited_metadata_breaks_its_signature(model_dir: Path) -> None:
    """Whoever can write the folder but lacks the key cannot vouch for another model by editing metadata."""
    key = b"key"
    (model_dir / SIGNATURE_FILE).write_bytes(sign_metadata((model_dir / METADATA_FILE).read_bytes(), key))
    edited = json.loads((model_dir / METADATA_FILE).read_text())
    edited["class_names"] = ["a", "b", "c"]
    (model_dir / METADATA_FILE).write_text(json.dumps(edited))
    with pytest.raises(ModelLoadError, match="changed after publishing, or signed with another key"):
        load_model(str(model_dir), signing_key=key)


def test_with_a_signing_key_unsigned_metadata_is_refused_unless_opted_in(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "from the environment")
    with pytest.raises(ModelLoadError) as error:
        load_model(str(model_dir))
    assert f"not signed ({SIGNATURE_FILE} is missing) but {SIGNING_KEY_ENV} is set" in str(error.value)
    assert "publish the model with the signing key set" in str(error.value)
    unsigned = load_model(str(model_dir), allow_unverified=True)
    assert unsigned.unverified is not None and "not signed" in unsigned.unverified


def test_class_names_come_from_metadata(tmp_path: Path, iris_model_dir: Path) -> None:
    names = ["setosa", "versicolor", "virginica"]
    folder = write_folder(tmp_path / "named", (iris_model_dir / "model.joblib").read_bytes(), class_names=names)
    assert load_model(str(folder)).class_names == tuple(names)


def test_a_changed_model_file_is_refused_naming_both_hashes(model_dir: Path) -> None:
    model_file = model_dir / "model.joblib"
    recorded = sha256_of(model_file.read_bytes())
    model_file.write_bytes(model_file.read_bytes()[:-100])
    with pytest.raises(ModelLoadError) as error:
        load_model(str(model_dir))
    message = str(error.value)
    assert (
        f"sha256 of {model_file} is {sha256_of(model_file.read_bytes())} but metadata.json says {recorded}" in message
    )
    assert "re-run the store step or point --model at an intact version" in message


def test_a_model_from_another_sklearn_minor_is_refused(tmp_path: Path, iris_model_dir: Path) -> None:
    old = {**runtime_versions(), "sklearn": "0.19.0"}
    folder = write_folder(tmp_path / "old", (iris_model_dir / "model.joblib").read_bytes(), versions=old)
    with pytest.raises(ModelLoadError) as error:
        load_model(str(folder))
    message = str(error.value)
    assert f"trained with scikit-learn 0.19.0 but this server runs {sklearn.__version__}" in message
    assert "rebuild the serving image pinned to scikit-learn==0.19.0" in message


def test_a_patch_level_difference_is_accepted(tmp_path: Path, iris_model_dir: Path) -> None:
    major, minor = sklearn.__version__.split(".")[:2]
    patched = {**runtime_versions(), "sklearn": f"{major}.{minor}.999"}
    folder = write_folder(tmp_path / "patched", (iris_model_dir / "model.joblib").read_bytes(), versions=patched)
    assert load_model(str(folder)).n_features == 4


def test_a_bare_pickle_from_another_sklearn_minor_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opted in, without metadata, the version sklearn stamps into the pickle is all there is to check."""
    features, labels = load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=500).fit(features, labels)
    with monkeypatch.context() as patch:
        patch.setattr(sklearn.base, "__version__", "0.19.0")
        model_bytes = dumped(estimator)
    path = tmp_path / "IrisClassifier.sav"
    path.write_bytes(model_bytes)
    with pytest.raises(ModelLoadError, match="trained with scikit-learn 0.19.0"):
        load_model(str(path), allow_unverified=True)


@pytest.mark.parametrize(
    "corrupt",
    [b"", b"not a pickle at all", b"\x80\x04\x95\xff\xff\xff\xff", bytes(range(256))],
    ids=["empty", "text", "truncated-pickle", "binary"],
)
def test_a_file_that_is_not_a_pickle_is_refused(tmp_path: Path, corrupt: bytes) -> None:
    folder = write_folder(tmp_path / "corrupt", corrupt)
    with pytest.raises(ModelLoadError, match="is not a loadable joblib/pickle file"):
        load_model(str(folder))


def test_a_truncated_model_without_metadata_is_refused(iris_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes((iris_model_dir / "model.joblib").read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="is not a loadable joblib/pickle file"):
        load_model(str(path), allow_unverified=True)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"coef": [1, 2]}, "holds a dict, not a scikit-learn classifier with predict_proba"),
        (LinearRegression(), "holds a LinearRegression, not a scikit-learn classifier"),
        (LogisticRegression(), "holds an unfitted LogisticRegression: train it before serving"),
    ],
)
def test_objects_that_cannot_serve_probabilities_are_refused(tmp_path: Path, obj: Any, message: str) -> None:
    folder = write_folder(tmp_path / "wrong", dumped(obj))
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(folder))


def test_class_names_must_match_the_model_classes(tmp_path: Path, iris_model_dir: Path) -> None:
    folder = write_folder(tmp_path / "two", (iris_model_dir / "model.joblib").read_bytes(), class_names=["a", "b"])
    with pytest.raises(ModelLoadError, match="predicts 3 classes but metadata.json name 2 \\(a, b\\): fix class_names"):
        load_model(str(folder))


def test_a_binary_model_without_metadata_asks_for_class_names(tmp_path: Path) -> None:
    features, labels = load_iris(return_X_y=True)
    binary = LogisticRegression().fit(features, labels == 0)
    path = tmp_path / "binary.joblib"
    path.write_bytes(dumped(binary))
    with pytest.raises(
        ModelLoadError, match="predicts 2 classes but the default iris class names .*add a metadata.json"
    ):
        load_model(str(path), allow_unverified=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "metadata.json beside"), (b"[]", "must hold a JSON object"), (b"{}", "lacks")],
)
def test_an_invalid_metadata_file_is_refused(model_dir: Path, content: bytes, message: str) -> None:
    (model_dir / "metadata.json").write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(model_dir))


def test_missing_paths_say_what_to_point_at(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist: check the path given to --model"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="holds no model.joblib: point --model at a model version folder"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model((tmp_path / "nowhere" / "model.joblib").as_uri())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/iris", "scheme 's3' is not supported"),
        ("file://host/m", "not a local file URI"),
        ("", "empty model URI"),
    ],
)
def test_uris_abflow_cannot_read_are_refused(uri: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(uri)


@pytest.fixture
def bucket(gcs_root: str, iris_model_dir: Path) -> str:
    """The shared model copied into a fresh bucket of the fake GCS server, as ``<bucket>/models/iris/v1``."""
    store = open_writable_store(gcs_root)
    for name in (MODEL_FILE, METADATA_FILE):
        store.write_bytes(f"models/iris/v1/{name}", (iris_model_dir / name).read_bytes())
    return gcs_root


def test_gcs_folders_and_files_load_through_the_store(bucket: str, iris_model_dir: Path) -> None:
    folder = load_model(f"{bucket}/models/iris/v1/")
    assert folder.metadata is not None and folder.n_features == 4
    assert load_model(f"{bucket}/models/iris/v1/model.joblib").metadata is not None
    open_writable_store(bucket).write_bytes("IrisClassifier.sav", (iris_model_dir / MODEL_FILE).read_bytes())
    with pytest.raises(ModelLoadError, match="IrisClassifier.sav has no metadata.json"):
        load_model(f"{bucket}/IrisClassifier.sav")
    assert load_model(f"{bucket}/IrisClassifier.sav", allow_unverified=True).metadata is None


def test_gcs_signatures_are_checked_too(bucket: str) -> None:
    store = open_writable_store(bucket)
    with pytest.raises(ModelLoadError, match="not signed"):
        load_model(f"{bucket}/models/iris/v1", signing_key=b"key")
    metadata = store.read_bytes(f"models/iris/v1/{METADATA_FILE}")
    store.write_bytes(f"models/iris/v1/{SIGNATURE_FILE}", sign_metadata(metadata, b"key"))
    assert load_model(f"{bucket}/models/iris/v1", signing_key=b"key").unverified is None


def test_a_missing_gcs_model_is_refused(bucket: str) -> None:
    with pytest.raises(ModelLoadError, match="models/iris/v9/model.joblib does not exist"):
        load_model(f"{bucket}/models/iris/v9")


def test_a_tampered_gcs_model_is_refused(bucket: str) -> None:
    store = open_writable_store(bucket)
    metadata = json.loads(store.read_bytes(f"models/iris/v1/{METADATA_FILE}"))
    metadata["sha256"] = "0" * 64
    store.write_bytes(f"models/iris/v1/{METADATA_FILE}", json.dumps(metadata).encode())
    with pytest.raises(ModelLoadError, match="but metadata.json says 0000"):
        load_model(f"{bucket}/models/iris/v1")
