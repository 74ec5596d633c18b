"""The artifact store against both backends: a local folder and a real GCS API (fake-gcs-server). The read
path (``abflow.serving.store``, what model servers use) and the steps' writes (``store_writes``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.store_writes import (
    ABSENT,
    GcsWritableStore,
    LocalWritableStore,
    WritableStore,
    open_writable_store,
)
from abflow.serving.store import GcsStore, LocalStore, NotFoundInStore, StoreError, open_store


@pytest.fixture(params=["local", "gcs"])
def store_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The root URI of an empty store, once per backend."""
    if request.param == "local":
        return str(tmp_path / "artifacts")
    return str(request.getfixturevalue("gcs_root"))


@pytest.fixture
def store(store_root: str) -> WritableStore:
    return open_writable_store(store_root)


def test_open_store_picks_the_backend(tmp_path: Path, gcs_emulator: str) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(tmp_path.as_uri()).uri == tmp_path.as_uri()
    assert open_store("relative/folder").uri == (Path.cwd() / "relative/folder").as_uri()
    gcs = open_store("gs://bucket/some/prefix/")
    assert isinstance(gcs, GcsStore)
    assert gcs.uri == "gs://bucket/some/prefix"
    assert gcs.uri_for("models/iris/champion.json") == "gs://bucket/some/prefix/models/iris/champion.json"
    assert open_store("gs://bucket").uri_for("a/b") == "gs://bucket/a/b"
    assert isinstance(open_writable_store(str(tmp_path)), LocalWritableStore)
    assert isinstance(open_writable_store("gs://bucket/some/prefix/"), GcsWritableStore)


def test_the_read_path_cannot_write(tmp_path: Path, gcs_emulator: str) -> None:
    """What a model server opens has no way to change the store."""
    for store in (open_store(str(tmp_path)), open_store("gs://bucket/abflow")):
        assert not any(hasattr(store, name) for name in ("write_bytes", "write_if_unchanged", "read_versioned"))


def test_key_for_maps_uris_inside_the_store_back_to_keys(store: WritableStore) -> None:
    uri = store.uri_for("models/iris/v1")
    assert store.key_for(uri) == store.key_for(f"{uri}/") == "models/iris/v1"
    outside = [f"{uri}/../../../../x", store.uri.rsplit("/", 1)[0] + "/elsewhere/models/iris/v1",
               "gs://another-bucket/models/iris/v1", "s3://bucket/models/iris/v1", store.uri]
    for escape in outside:
        with pytest.raises(StoreError, match="outside the store|not in the local store|does not name a key"):
            store.key_for(escape)


def test_key_for_takes_plain_paths_in_a_local_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert store.key_for(str(tmp_path / "models" / "iris" / "v1")) == "models/iris/v1"
    with pytest.raises(StoreError, match="outside the store"):
        store.key_for(str(tmp_path.parent / "elsewhere"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [("s3://bucket/x", "unsupported artifact store scheme 's3'"), ("gs://", "names no bucket"),
     ("gs://bucket/a//b", "invalid store key 'a//b'"), ("gs://bucket/a/../b", "invalid store key"),
     ("file://host/x", "not an absolute file URI"), ("", "empty artifact store URI")],
)
def test_open_store_rejects_what_it_cannot_serve(uri: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(uri)


def test_round_trip_and_uris(store: WritableStore) -> None:
    uri = store.write_bytes("models/iris/v1/model.joblib", b"model")
    assert uri == store.uri_for("models/iris/v1/model.joblib")
    assert uri.startswith(store.uri + "/")
    assert store.read_bytes("models/iris/v1/model.joblib") == b"model"
    assert store.exists("models/iris/v1/model.joblib")
    assert not store.exists("models/iris/v1/metadata.json")
    assert not store.exists("models/iris/v1")  # a folder is not a key
    store.write_bytes("models/iris/v1/model.joblib", b"replaced")
    assert store.read_bytes("models/iris/v1/model.joblib") == b"replaced"


def test_missing_key_names_its_uri(store: WritableStore) -> None:
    with pytest.raises(NotFoundInStore, match=store.uri_for("models/nope.json")):
        store.read_bytes("models/nope.json")


def test_list_keys_is_a_string_prefix_and_hides_internal_files(store: WritableStore) -> None:
    for key in ["models/iris/v1/model.joblib", "models/iris/v1/metadata.json", "models/iris/champion.json",
                "models/iris2/v1/model.joblib", "other.txt"]:
        store.write_bytes(key, b"x")
    # The local backend's lock and temporary files never show up as keys.
    assert store.list_keys("models/iris/") == [
        "models/iris/champion.json", "models/iris/v1/metadata.json", "models/iris/v1/model.joblib"]
    assert store.list_keys("models/iris") == [
        "models/iris/champion.json", "models/iris/v1/metadata.json", "models/iris/v1/model.joblib",
        "models/iris2/v1/model.joblib"]
    assert len(store.list_keys()) == 5
    assert store.list_keys("nothing/here/") == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/./b", "a/.hidden"])
def test_keys_that_could_escape_or_collide_are_refused(store: WritableStore, key: str) -> None:
    with pytest.raises(StoreError, match="invalid store key"):
        store.write_bytes(key, b"x")


def test_compare_and_swap(store: WritableStore) -> None:
    data, generation = store.read_versioned("pointer.json")
    assert (data, generation) == (None, ABSENT)
    assert store.write_if_unchanged("pointer.json", b"first", ABSENT)
    assert not store.write_if_unchanged("pointer.json", b"must not exist yet", ABSENT)

    data, first = store.read_versioned("pointer.json")
    assert data == b"first"
    assert first != ABSENT
    assert store.write_if_unchanged("pointer.json", b"second", first)

    # A writer still holding the first generation loses and writes nothing.
    assert not store.write_if_unchanged("pointer.json", b"stale", first)
    data, second = store.read_versioned("pointer.json")
    assert data == b"second"
    assert second != first


def test_an_unconditional_write_invalidates_a_generation(store: WritableStore) -> None:
    store.write_bytes("pointer.json", b"one")
    _, generation = store.read_versioned("pointer.json")
    store.write_bytes("pointer.json", b"two")
    assert not store.write_if_unchanged("pointer.json", b"three", generation)
    assert store.read_bytes("pointer.json") == b"two"


def test_racing_compare_and_swap_loses_no_increment(store_root: str) -> None:
    """Each thread increments a counter with read → write_if_unchanged → retry; no increment is lost."""
    threads, increments = 4, 10

    def worker() -> None:
        store = open_writable_store(store_root)  # a client of its own, as a separate pipeline run would have
        for _ in range(increments):
            while True:
                data, generation = store.read_versioned("counter")
                if store.write_if_unchanged("counter", str(int(data or b"0") + 1).encode(), generation):
                    break

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert open_store(store_root).read_bytes("counter") == str(threads * increments).encode()


def test_local_writes_replace_atomically(tmp_path: Path) -> None:
    """A reader opening the file during a rewrite still sees a complete old or new content."""
    store = open_writable_store(str(tmp_path))
    store.write_bytes("big.bin", b"a" * 1_000_000)
    stop = threading.Event()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            content = store.read_bytes("big.bin")
            if len(content) != 1_000_000 or len(set(content)) != 1:
                torn.append(len(content))

    thread = threading.Thread(target=reader)
    thread.start()
    for fill in (b"b", b"c", b"d"):
        store.write_bytes("big.bin", fill * 1_000_000)
    stop.set()
    thread.join()
    assert torn == []
    assert store.read_bytes("big.bin") == b"d" * 1_000_000
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["big.bin"]


def test_a_missing_bucket_says_so(gcs_emulator: str) -> None:
    store = open_writable_store("gs://no-such-bucket/abflow")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        store.write_bytes("x", b"x")
    with pytest.raises(NotFoundInStore, match="gs://no-such-bucket/abflow/x"):
        store.read_bytes("x")


@pytest.fixture
def silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a wedged proxy or emulator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield url


@pytest.fixture
def refused_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """An endpoint nothing listens on (the emulator is not running)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    return url


@pytest.mark.parametrize("endpoint", ["silent_endpoint", "refused_endpoint"])
def test_an_unreachable_endpoint_fails_fast_and_says_what_to_check(
    endpoint: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(endpoint)
    deadline_s = 1.0
    store = open_writable_store("gs://some-bucket/abflow", deadline_s=deadline_s)
    for operation in (lambda: store.read_bytes("models/iris/champion.json"),
                      lambda: store.write_bytes("models/iris/champion.json", b"{}")):
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            operation()
        # One attempt may use half the deadline after the retry budget ran out; allow process noise.
        assert time.monotonic() - started < deadline_s * 1.5 + 1.0
        message = str(caught.value)
        assert "gs://some-bucket/abflow/models/iris/champion.json" in message
        assert f"STORAGE_EMULATOR_HOST={url}" in message
        assert "credentials" in message
        assert "bucket 'some-bucket' exists" in message


def test_missing_credentials_name_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(StoreError, match="GOOGLE_APPLICATION_CREDENTIALS.*STORAGE_EMULATOR_HOST"):
        open_store("gs://bucket/abflow")
