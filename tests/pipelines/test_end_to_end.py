"""``abflow run`` end to end: KFP's local runner executes the real pipeline, the store is a real
folder or the real google-cloud-storage client against fake-gcs-server on 127.0.0.1, and the A/B
endpoint is the real serving runtime on 127.0.0.1, exercised over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from abflow.components.experiment import ROLLED_BACK, list_experiments, running_experiment
from abflow.components.local_target import current_deployment
from abflow.components.registry import read_champion
from abflow.pipelines.local_commands import TUTORIAL_PAYLOAD
from abflow.pipelines.pipeline import STEP_NAMES
from tests.fixtures.processes import free_port

pytestmark = pytest.mark.slow


class LocalProject:
    """A working directory where a user runs ``abflow run``; stops whatever it deployed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "abflow-data"

    def run(self, *flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "abflow.pipelines.cli", "run", "--local-port", str(self.port),
                   "--smoke-requests", "60", *flags]
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=240)

    def predict(self) -> dict[str, object]:
        response = requests.post(f"http://127.0.0.1:{self.port}/api/v1.0/predictions", json=TUTORIAL_PAYLOAD,
                                 timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body


def test_two_runs_make_a_champion_and_a_failed_smoke_rolls_back(project: LocalProject) -> None:
    first = project.run()
    assert first.returncode == 0, first.stderr
    assert f"[{len(STEP_NAMES)}/{len(STEP_NAMES)}] promote" in first.stderr
    assert f"curl -s -X POST http://127.0.0.1:{project.port}/api/v1.0/predictions" in first.stdout
    body = project.predict()
    assert body["meta"]["routing"].keys() == {"random-ab-test"}  # type: ignore[index]
    assert body["data"]["names"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]  # type: ignore[index]
    champion = read_champion(str(project.data), "iris")
    assert champion is not None
    first_release = current_deployment(project.data)
    assert first_release is not None
    assert first_release.model_a_uri == first_release.model_b_uri == champion.model_uri

    same = project.run()
    assert same.returncode == 0, same.stderr
    assert "nothing new to test" in same.stderr and "deploy-ab" not in same.stderr
    assert current_deployment(project.data) == first_release, "the same model is not deployed again"

    failed = project.run("--seed", "7", "--p99-budget-ms", "0.001")
    assert failed.returncode == 1
    assert "step 'smoke-test' failed" in failed.stderr and "p99" in failed.stderr
    restored = current_deployment(project.data)
    assert restored is not None and restored.release == first_release.release, "the previous release serves again"
    project.predict()
    assert read_champion(str(project.data), "iris") == champion, "a failed run must not promote"
    [rolled_back] = list_experiments(str(project.data), "iris")
    assert rolled_back.status == ROLLED_BACK, "the experiment whose deployment failed is over"

    second = project.run("--seed", "7")
    assert second.returncode == 0, second.stderr
    release = current_deployment(project.data)
    assert release is not None
    assert release.model_a_uri == champion.model_uri, "arm A is the champion"
    assert release.model_b_uri != champion.model_uri, "arm B is the new model"
    assert read_champion(str(project.data), "iris") == champion, "the experiment decides, not the smoke test"
    experiment = running_experiment(str(project.data), "iris")
    assert experiment is not None and experiment.id == release.experiment_id
    assert experiment.champion.model_uri == champion.model_uri
    project.predict()


def test_gate_miss_fails_the_run_naming_the_number(project: LocalProject) -> None:
    result = project.run("--min-accuracy", "0.999")
    assert result.returncode == 1
    assert "step 'gate' failed" in result.stderr
    assert "below min_accuracy 0.999" in result.stderr
    assert current_deployment(project.data) is None, "a gate miss deploys nothing"


def test_whole_pipeline_on_gcs(project: LocalProject, gcs_root: str) -> None:
    result = project.run("--artifact-root", gcs_root)
    assert result.returncode == 0, result.stderr
    champion = read_champion(gcs_root, "iris")
    assert champion is not None and champion.model_uri.startswith(gcs_root)
    release = current_deployment(project.data)
    assert release is not None and release.model_b_uri.startswith("gs://")
    meta = project.predict()["meta"]
    assert isinstance(meta, dict) and meta["routing"]["random-ab-test"] in (0, 1)
    served_from = list(meta["requestPath"].values())
    assert served_from and all(str(uri).startswith(gcs_root) for uri in served_from), served_from


def test_unreachable_bucket_says_what_to_check(project: LocalProject, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    result = project.run("--artifact-root", "gs://no-such-bucket/abflow")
    assert result.returncode == 1
    assert "gs://no-such-bucket" in result.stderr and "STORAGE_EMULATOR_HOST" in result.stderr
