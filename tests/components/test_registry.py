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
    read_model,
)
from abflow.components.store_writes import GcsWritableStore, LocalWritableStore, open_writable_store
from abflow.components.training import TrainResult, train_iris
from abflow.serving.artifact import (
    METADATA_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    ModelMetadata,
    runtime_versions,
    sha256_of,
    signature_matches,
)
from abflow.serving.model import ModelLoadError, load_model
from abflow.serving.store import StoreError


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return train_iris()


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "abflow-data")
    return str(request.getfixturevalue("gcs_root"))


def history(root: str) -> list[dict[str, str]]:
    """Every promotion champion.json records, oldest first."""
    document = json.loads(open_writable_store(root).read_bytes("models/iris/champion.json"))
    entries: list[dict[str, str]] = document["history"]
    return entries


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
    store = open_writable_store(root)
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
    assert [entry["version"] for entry in history(root)] == [first.version, second.version]
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
    open_writable_store(root).write_bytes("models/iris/champion.json", b"{not json")
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

    entries = history(root)
    assert sorted(entry["run_id"] for entry in entries) == sorted(
        f"v{i}-round-{r}" for i in (1, 2) for r in range(rounds))
    current = read_champion(root, "iris")
    assert current is not None and current.promoted_at == entries[-1]["promoted_at"]
    document = json.loads(open_writable_store(root).read_bytes("models/iris/champion.json"))
    assert document["promotion_id"] == entries[-1]["promotion_id"]


def test_publish_writes_the_metadata_last(root: str, trained: TrainResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers load nothing without metadata.json, so it must be the last file of a version to appear."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "publishing key")
    written: list[str] = []
    backend = LocalWritableStore if root.startswith("/") else GcsWritableStore
    for method in ("write_bytes", "write_if_unchanged"):
        original = getattr(backend, method)

        def record(self: object, key: str, *args: object, original: object = original) -> object:
            written.append(key.rpartition("/")[2])
            return original(self, key, *args)  # type: ignore[operator]

        monkeypatch.setattr(backend, method, record)
    publish_model(root, "iris", trained, run_id="run-1", version="v1")
    assert written == [MODEL_FILE, SIGNATURE_FILE, METADATA_FILE]


def test_a_publish_cut_short_never_loads_and_a_retry_completes_it(root: str, trained: TrainResult,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A step killed after writing the model (and a signature for metadata it never wrote) leaves a version
    no server loads; publishing again completes it, with a signature matching the metadata it writes."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "publishing key")
    store = open_writable_store(root)
    store.write_bytes(f"models/iris/v1/{MODEL_FILE}", trained.model_bytes)
    store.write_bytes(f"models/iris/v1/{SIGNATURE_FILE}", b"0" * 64)
    with pytest.raises(ModelLoadError, match="has no metadata.json"):
        load_model(store.uri_for("models/iris/v1"))
    published = publish_model(root, "iris", trained, run_id="retry", version="v1")
    assert load_model(published.uri).metadata == published.metadata


def test_with_a_signing_key_publish_signs_and_servers_check_it(root: str, trained: TrainResult,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = publish_model(root, "iris", trained, run_id="run-1", version="v1")
    monkeypatch.setenv(SIGNING_KEY_ENV, "publishing key")
    signed = publish_model(root, "iris", trained, run_id="run-2", version="v2")
    store = open_writable_store(root)
    assert not store.exists(f"models/iris/v1/{SIGNATURE_FILE}")
    signature = store.read_bytes(f"models/iris/v2/{SIGNATURE_FILE}")
    assert signature_matches(store.read_bytes(f"models/iris/v2/{METADATA_FILE}"), signature, b"publishing key")
    assert load_model(signed.uri).unverified is None
    with pytest.raises(ModelLoadError, match="is not signed"):
        load_model(unsigned.uri)
    with pytest.raises(ModelLoadError, match="does not match its metadata.json"):
        load_model(signed.uri, signing_key=b"another key")
    assert publish_model(root, "iris", trained, run_id="retry", version="v1") == unsigned  # a retry signs it
    assert load_model(unsigned.uri).unverified is None


def escapes(root: str) -> list[tuple[str, str]]:
    """Model URIs an edited champion.json could hold, each outside the version folders of iris in ``root``."""
    store = open_writable_store(root)
    inside = store.uri_for("models/iris/v1")
    foreign = "gs://someone-elses-bucket/models/iris/v1" if root.startswith("/") else "/tmp/models/iris/v1"
    return [
        (f"{inside}/../../../../elsewhere/models/iris/v1", "does not name a key inside the store"),
        (store.uri_for("models/other/v1"), "not a version folder of model 'iris'"),
        (foreign, "outside its artifact store"),
        (store.uri_for("models/iris/v2"), "another version's folder"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_a_champion_pointing_outside_its_store_is_refused(root: str, trained: TrainResult, case: int) -> None:
    promote(root, "iris", publish_model(root, "iris", trained, run_id="run-1", version="v1"), run_id="run-1")
    publish_model(root, "iris", trained, run_id="run-2", version="v2")
    uri, reason = escapes(root)[case]
    store = open_writable_store(root)
    document = json.loads(store.read_bytes("models/iris/champion.json"))
    store.write_bytes("models/iris/champion.json", json.dumps({**document, "model_uri": uri}).encode())
    for read in (lambda: read_champion(root, "iris"), lambda: choose_arms(root, "iris", store.uri_for("x"))):
        with pytest.raises(StoreError, match=reason) as error:
            read()
        assert "promote the intended version again" in str(error.value)
