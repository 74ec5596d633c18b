from pathlib import Path

import pytest

from abflow.serving.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    ModelMetadata,
    sha256_of,
    sign_metadata,
    signature_matches,
)


def test_metadata_round_trips_and_keeps_unknown_keys(iris_model_dir: Path) -> None:
    metadata = ModelMetadata.from_json((iris_model_dir / METADATA_FILE).read_bytes())
    assert metadata.sha256 == sha256_of((iris_model_dir / MODEL_FILE).read_bytes())
    newer = metadata.to_json().replace(b'"name"', b'"future_field": 1, "name"', 1)
    reread = ModelMetadata.from_json(newer)
    assert reread.extra == {**metadata.extra, "future_field": 1}
    assert ModelMetadata.from_json(reread.to_json()) == reread


def test_metadata_missing_required_keys_is_named() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ModelMetadata.from_json('{"name": "iris", "version": "v1", "versions": {}}')


def test_a_signature_matches_only_its_metadata_under_its_key() -> None:
    metadata = b'{"name": "iris"}'
    signature = sign_metadata(metadata, b"key")
    assert signature_matches(metadata, signature + b"\n", b"key")
    assert not signature_matches(metadata, signature, b"another key")
    assert not signature_matches(metadata.replace(b"iris", b"evil"), signature, b"key")


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
