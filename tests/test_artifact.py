from pathlib import Path

import pytest

from abflow.serving.artifact import METADATA_FILE, MODEL_FILE, ModelMetadata, sha256_of, write_model_folder


def test_metadata_round_trips_and_keeps_unknown_keys(iris_model_dir: Path) -> None:
    metadata = ModelMetadata.from_json((iris_model_dir / METADATA_FILE).read_bytes())
    assert metadata.sha256 == sha256_of((iris_model_dir / MODEL_FILE).read_bytes())
    newer = metadata.to_json().replace(b'"name"', b'"future_field": 1, "name"', 1)
    reread = ModelMetadata.from_json(newer)
    assert reread.extra == {"future_field": 1}
    assert ModelMetadata.from_json(reread.to_json()) == reread


def test_metadata_missing_required_keys_is_named() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ModelMetadata.from_json('{"name": "iris", "version": "v1", "versions": {}}')


def test_writer_refuses_a_wrong_checksum(tmp_path: Path) -> None:
    metadata = ModelMetadata(name="iris", version="v1", sha256="0" * 64, versions={})
    with pytest.raises(ValueError, match="sha256"):
        write_model_folder(tmp_path, b"model", metadata)


def test_runtime_versions_match_the_imported_libraries() -> None:
    import joblib
    import numpy
    import sklearn

    from abflow.serving.artifact import runtime_versions

    versions = runtime_versions()
    assert (versions["sklearn"], versions["joblib"], versions["numpy"]) == (
        sklearn.__version__,
        joblib.__version__,
        numpy.__version__,
    )
