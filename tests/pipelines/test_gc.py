"""``abflow gc``: retention from the command line, on a real folder store with a real local endpoint, and
on fake-gcs-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.local_target import deploy_local, stop_local
from abflow.components.registry import promote_version, publish_model
from abflow.components.retention import stored_versions
from abflow.components.training import TrainResult
from abflow.pipelines.cli import main
from abflow.serving.artifact import DEFAULT_CLASS_NAMES
from tests.fixtures.models import train_iris_bytes
from tests.fixtures.processes import free_port


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return TrainResult(model_bytes=train_iris_bytes(), metrics={"accuracy": 0.95}, confusion_matrix=[],
                       class_names=list(DEFAULT_CLASS_NAMES), params={}, data_fingerprint="")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "abflow-data"
    yield folder
    stop_local(folder)


def versions(root: str) -> list[str]:
    return sorted(version for version, _ in stored_versions(root, "iris"))


def test_gc_keeps_the_newest_the_champion_and_what_the_endpoint_serves(
        data_dir: Path, trained: TrainResult, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(data_dir)
    uris = {v: publish_model(root, "iris", trained, run_id="test", version=v).uri for v in ("v1", "v2", "v3", "v4")}
    promote_version(root, "iris", "v1", run_id="test")
    deploy_local(model_a_uri=uris["v2"], model_b_uri=uris["v2"], ratio_a=1.0, state_root=data_dir, port=free_port())

    assert main(["gc", "--data-dir", root, "--keep", "1", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["keep    v4  (one of the 1 newest)",
                                    "keep    v2  (served by the local endpoint or its rollback target)",
                                    "keep    v1  (champion)", "delete  v3"]
    assert "retention kept 3 version(s) of iris: would delete 1 (v3)" in out.err
    assert versions(root) == ["v1", "v2", "v3", "v4"]

    assert main(["gc", "--data-dir", root, "--keep", "1"]) == 0
    assert "retention kept 3 version(s) of iris: deleted 1 (v3)" in capsys.readouterr().err
    assert versions(root) == ["v1", "v2", "v4"]


def test_gc_on_gcs(gcs_root: str, trained: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("v1", "v2", "v3"):
        publish_model(gcs_root, "iris", trained, run_id="test", version=version)
    assert main(["gc", "--artifact-root", gcs_root, "--data-dir", str(tmp_path), "--keep", "2"]) == 0
    assert "retention kept 2 version(s) of iris: deleted 1 (v1)" in capsys.readouterr().err
    assert versions(gcs_root) == ["v2", "v3"]


def test_gc_refuses_a_keep_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--data-dir", str(tmp_path), "--keep", "0"]) == 2
    assert "--keep must be at least 1, got 0" in capsys.readouterr().err
