"""Retention on a real local folder and on fake-gcs-server through the real google-cloud-storage client:
old versions go, the champion, a running experiment's arms and the protected ones never do."""

from __future__ import annotations

from pathlib import Path

import pytest

from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    Arm,
    mark_rolled_back,
    start_experiment,
    update_experiment,
)
from abflow.components.registry import promote_version, publish_model, read_model
from abflow.components.retention import discard_version, prune_versions, stored_versions
from abflow.components.store_writes import open_writable_store
from abflow.components.training import TrainResult
from abflow.serving.artifact import DEFAULT_CLASS_NAMES
from abflow.serving.store import StoreError
from tests.fixtures.models import train_iris_bytes

VERSIONS = [f"v{n}" for n in range(1, 8)]
"""Published in this order within a second or two: newest first is v7, v6, … (creation time, then name)."""


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "gcs":
        return str(request.getfixturevalue("gcs_root"))
    return str(tmp_path / "store")


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return train_iris_bytes()


def publish(root: str, model_bytes: bytes, versions: list[str]) -> dict[str, str]:
    trained = TrainResult(model_bytes=model_bytes, metrics={"accuracy": 0.95}, confusion_matrix=[],
                          class_names=list(DEFAULT_CLASS_NAMES), params={}, data_fingerprint="")
    return {v: publish_model(root, "iris", trained, run_id="test", version=v).uri for v in versions}


def experiment(root: str, uris: dict[str, str], champion: str, challenger: str, experiment_id: str) -> None:
    arms = (Arm("classifier-1", champion, uris[champion], CHAMPION),
            Arm("classifier-2", challenger, uris[challenger], CHALLENGER))
    start_experiment(root, experiment_id=experiment_id, model_name="iris", target="local", deployment_name="iris-ab",
                     endpoint="http://127.0.0.1:1", arms=arms, ratio_a=0.5, outcomes=(), run_id="test")


def remaining(root: str) -> list[str]:
    return sorted(version for version, _ in stored_versions(root, "iris"))


def test_keeps_the_newest_and_everything_in_use(root: str, model_bytes: bytes) -> None:
    uris = publish(root, model_bytes, VERSIONS)
    promote_version(root, "iris", "v1", run_id="test")
    experiment(root, uris, "v1", "v2", "iris-running")
    experiment(root, uris, "v1", "v3", "iris-over")
    update_experiment(root, "iris", "iris-over", lambda e: mark_rolled_back(e, run_id="test", reason="smoke"))

    plan = prune_versions(root, "iris", keep=2, protect=["v4"], dry_run=True)
    assert plan.deleted == ("v5", "v3")
    assert remaining(root) == VERSIONS, "a dry run deletes nothing"

    done = prune_versions(root, "iris", keep=2, protect=["v4"])
    assert done.deleted == ("v5", "v3")
    assert dict(done.kept) == {"v7": "one of the 2 newest", "v6": "one of the 2 newest", "v4": "protected",
                               "v2": "challenger of running experiment iris-running", "v1": "champion"}
    assert remaining(root) == ["v1", "v2", "v4", "v6", "v7"]
    store = open_writable_store(root)
    assert store.list_keys("models/iris/v5") == [] and store.list_keys("models/iris/v3") == []
    assert read_model(root, "iris", "v2").uri == uris["v2"], "a kept version still loads"

    assert prune_versions(root, "iris", keep=2).deleted == ("v4",), "unprotected, v4 goes on the next pass"


def test_the_local_endpoints_models_are_in_use(root: str, model_bytes: bytes) -> None:
    uris = publish(root, model_bytes, VERSIONS[:4])
    done = prune_versions(root, "iris", keep=1, serving_uris=[uris["v1"], "/elsewhere/models/iris/v2"])
    assert done.kept["v1"] == "served by the local endpoint or its rollback target"
    assert done.deleted == ("v3", "v2"), "a URI outside the store protects nothing in it"


def test_discard_removes_an_unused_version_and_never_the_champion(root: str, model_bytes: bytes) -> None:
    uris = publish(root, model_bytes, ["v1", "v2", "v3"])
    promote_version(root, "iris", "v1", run_id="test")
    experiment(root, uris, "v1", "v2", "iris-running")
    assert discard_version(root, "iris", "v1") == "champion"
    assert discard_version(root, "iris", "v2") == "challenger of running experiment iris-running"
    assert discard_version(root, "iris", "v3") is None
    assert remaining(root) == ["v1", "v2"]
    with pytest.raises(StoreError):
        read_model(root, "iris", "v3")


def test_a_version_being_published_is_left_alone(tmp_path: Path, model_bytes: bytes) -> None:
    root = str(tmp_path / "store")
    publish(root, model_bytes, ["v1", "v2"])
    half = tmp_path / "store" / "models" / "iris" / "v0"
    half.mkdir()
    (half / "model.joblib").write_bytes(model_bytes)  # its metadata.json is not written yet
    assert prune_versions(root, "iris", keep=1).deleted == ("v1",)
    assert (half / "model.joblib").exists()


@pytest.mark.parametrize("version", ["", "..", "v1/../..", "champion.json"])
def test_discard_refuses_what_is_not_a_version(tmp_path: Path, model_bytes: bytes, version: str) -> None:
    root = str(tmp_path / "store")
    publish(root, model_bytes, ["v1"])
    with pytest.raises(ValueError, match="model version"):
        discard_version(root, "iris", version)
    assert remaining(root) == ["v1"], "nothing outside a version folder is deleted"


@pytest.mark.parametrize("keep", [0, -1, True])
def test_keep_must_be_at_least_one(tmp_path: Path, keep: int) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        prune_versions(str(tmp_path), "iris", keep=keep)
