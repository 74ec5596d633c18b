"""A run that fails after storing its model leaves no never-deployed version behind, and a run that
succeeds prunes by its keep parameter: whole ``abflow run`` pipelines under KFP's local runner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.local_target import current_deployment, stop_local
from abflow.components.registry import read_champion
from abflow.components.retention import stored_versions
from tests.fixtures.processes import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "abflow-data"
    yield folder
    stop_local(folder)


def run(data_dir: Path, port: int, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "abflow.pipelines.cli", "run", "--data-dir", str(data_dir), "--local-port",
               str(port), "--smoke-requests", "40", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def versions(data_dir: Path) -> list[str]:
    return sorted(version for version, _ in stored_versions(str(data_dir), "iris"))


def test_a_failed_smoke_deletes_its_version_and_a_passed_run_prunes(data_dir: Path) -> None:
    port = free_port()
    first = run(data_dir, port)
    assert first.returncode == 0, first.stderr
    champion = read_champion(str(data_dir), "iris")
    assert champion is not None and versions(data_dir) == [champion.version]

    failed = run(data_dir, port, "--seed", "7", "--p99-budget-ms", "0.001")
    assert failed.returncode == 1 and "step 'smoke-test' failed" in failed.stderr, failed.stderr
    assert "this failed run stored it" in failed.stderr
    assert versions(data_dir) == [champion.version], "the failed run's model is gone"
    release = current_deployment(data_dir)
    assert release is not None and release.model_a_uri == release.model_b_uri == champion.model_uri

    passed = run(data_dir, port, "--seed", "7", "--keep", "1")
    assert passed.returncode == 0, passed.stderr
    served = current_deployment(data_dir)
    assert served is not None and served.model_a_uri == champion.model_uri
    challenger = served.model_b_uri.rstrip("/").rsplit("/", 1)[-1]
    assert sorted(versions(data_dir)) == sorted([champion.version, challenger]), "both arms' versions stay"
    assert "retention kept 2 version(s) of iris, deleted none" in passed.stderr


def test_a_failed_image_build_stores_nothing(data_dir: Path) -> None:
    """The store step waits for the image build: a base image nobody can pull fails the build first."""
    failed = run(data_dir, free_port(), "--builder", "buildah", "--base-image", "registry.invalid/abflow/python:3.11")
    assert failed.returncode == 1 and "step 'build-image' failed" in failed.stderr, failed.stderr
    assert "] store ..." not in failed.stderr
    assert versions(data_dir) == []
