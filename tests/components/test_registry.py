"""The registry layout, champion pointer and A/B arm choice, on a local folder and on GCS."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import joblib
import pytest

from abflow.components.registry import (
    PublishedModel,
    choose_arms,
    new_version,
    promote,
    promote_version,
    publish_model,
    read_champion,
    read_champion_history,
    read_model,
)
from abflow.components.training import TrainResult, train_iris
from abflow.serving.artifact import ModelMetadata, runtime_versions, sha256_of
from abflow.serving.store import StoreError, open_store


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return train_iris()


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "abflow-data")
    return str(request.getfixturevalue("gcs_root"))


def test_new_version_sorts_by_time_and_is_unique() -> None:
    earlier = datetime(2025, 3, 1, 14, 25, 1, 123000, tzinfo=UTC)
    later = datetime(2025, 3, 1, 16, 25, 1, 124000, tzinfo=timezone(timedelta(hours=2)))  # 1 ms later
    assert new_version(earlier).startswith("20250301-142501-123-")
    assert new_version(earlier) < new_version(later)
    assert len({new_version(earlier) for _ in range(100)}) == 100
    with pytest.raises(ValueError, match="timezone-aware"):
        new_version(datetime(2025, 3, 1))  # noqa: DTZ001 - the naive value is the point


def test_publish_writes_the_layout_with_metadata(root: str, trained: TrainResult) -> None:
    published = publish_model(root, "iris", trained, run_id="run-1")
    store = open_store(root)
    folder = f"models/iris/{published.version}"
    assert published.uri == store.uri_for(folder)
    assert store.list_keys("models/") == [f"{folder}/metadata.json", f"{folder}/model.joblib"]

    model_bytes = store.read_bytes(f"{folder}/model.joblib")
    assert sha256_of(model_bytes) == published.sha256 == trained.sha256
    assert joblib.load(io.BytesIO(model_bytes)).predict([[5.1, 3.5, 1.4, 0.2]]).tolist() == [0]

    metadata = ModelMetadata.from_json(store.read_bytes(f"{folder}/metadata.json"))
    assert metadata == published.metadata
    assert (metadata.name, metadata.version, metadata.run_id) == ("iris", published.version, "run-1")
    assert metadata.sha256 == published.sha256
    assert metadata.versions == runtime_versions()
    assert metadata.metrics == trained.metrics
    assert metadata.params == trained.params
    assert metadata.data_fingerprint == trained.data_fingerprint
    assert metadata.class_names == trained.class_names
    assert metadata.extra["confusion_matrix"] == trained.confusion_matrix
    assert datetime.fromisoformat(metadata.created_at).tzinfo is not None
    assert read_model(root, "iris", published.version) == published


def test_versions_are_immutable_but_republishing_is_idempotent(root: str, trained: TrainResult) -> None:
    first = publish_model(root, "iris", trained, run_id="run-1", version="v1")
    assert publish_model(root, "iris", trained, run_id="retry", version="v1") == first
    different = train_iris(c=0.05)
    with pytest.raises(StoreError, match="already holds a different model; versions are immutable"):
        publish_model(root, "iris", different, run_id="run-2", version="v1")
    assert read_model(root, "iris", "v1").sha256 == first.sha256


@pytest.mark.parametrize(("name", "version"), [("Iris", None), ("../x", None), ("iris", "../v1"),
                                               ("iris", "champion.json")])
def test_names_that_would_break_the_layout_are_refused(tmp_path: Path, trained: TrainResult, name: str,
                                                       version: str | None) -> None:
    with pytest.raises(ValueError, match="must be"):
        publish_model(str(tmp_path), name, trained, run_id="r", version=version)


def test_first_run_serves_the_new_model_on_both_arms(root: str) -> None:
    assert read_champion(root, "iris") is None
    arms = choose_arms(root, "iris", "gs://b/models/iris/new")
    assert (arms.model_a_uri, arms.model_b_uri, arms.champion_version) == (
        "gs://b/models/iris/new", "gs://b/models/iris/new", None)


def test_promotion_makes_the_champion_arm_a(root: str, trained: TrainResult) -> None:
    first = publish_model(root, "iris", trained, run_id="run-1")
    champion = promote(root, "iris", first, run_id="run-1")
    assert read_champion(root, "iris") == champion
    assert (champion.version, champion.model_uri, champion.metrics, champion.run_id) == (
        first.version, first.uri, trained.metrics, "run-1")

    second = publish_model(root, "iris", trained, run_id="run-2")
    arms = choose_arms(root, "iris", second.uri)
    assert (arms.model_a_uri, arms.model_b_uri, arms.champion_version) == (first.uri, second.uri,
                                                                           first.version)
    promote_version(root, "iris", second.version, run_id="run-2")
    assert [c.version for c in read_champion_history(root, "iris")] == [first.version, second.version]
    current = read_champion(root, "iris")
    assert current is not None
    assert current.version == second.version


def test_a_champion_whose_model_vanished_is_reported(tmp_path: Path, trained: TrainResult) -> None:
    root = str(tmp_path)
    published = publish_model(root, "iris", trained, run_id="run-1")
    promote(root, "iris", published, run_id="run-1")
    (tmp_path / "models" / "iris" / published.version / "model.joblib").unlink()
    with pytest.raises(StoreError, match=f"champion of 'iris' is version {published.version}.*is gone"):
        choose_arms(root, "iris", "file:///new")


def test_a_corrupt_champion_file_is_never_overwritten(tmp_path: Path, trained: TrainResult) -> None:
    root = str(tmp_path)
    published = publish_model(root, "iris", trained, run_id="run-1")
    open_store(root).write_bytes("models/iris/champion.json", b"{not json")
    with pytest.raises(ValueError, match="champion.json is not valid JSON"):
        promote(root, "iris", published, run_id="run-2")
    assert (tmp_path / "models/iris/champion.json").read_bytes() == b"{not json"


def test_racing_promotions_lose_nothing(root: str, trained: TrainResult) -> None:
    """Two runs promote different versions at the same time, again and again: every promotion is in
    the history exactly once and the current champion is the last one written."""
    rounds = 6
    contenders = [publish_model(root, "iris", trained, run_id=f"run-{i}", version=f"v{i}") for i in (1, 2)]
    start = threading.Barrier(len(contenders))
    errors: list[BaseException] = []

    def run(published: PublishedModel) -> None:
        try:
            start.wait(timeout=10)
            for round_ in range(rounds):
                promote(root, "iris", published, run_id=f"{published.version}-round-{round_}")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(published,)) for published in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    history = read_champion_history(root, "iris")
    assert sorted(entry.run_id for entry in history) == sorted(
        f"v{i}-round-{r}" for i in (1, 2) for r in range(rounds))
    current = read_champion(root, "iris")
    assert current == history[-1]
    document = json.loads(open_store(root).read_bytes("models/iris/champion.json"))
    assert document["promotion_id"] == document["history"][-1]["promotion_id"]
