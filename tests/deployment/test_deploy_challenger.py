"""deploy-ab's plain logic with the real local target: a champion against a different challenger
starts an experiment, recorded in the store and named in the release; the same version twice does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.deploy_targets import AbDeployment, deploy_challenger
from abflow.components.experiment import LEDGER, read_experiment, running_experiment
from abflow.components.local_target import LocalRelease, current_deployment, stop_local
from abflow.components.registry import PublishedModel, promote, publish_model
from abflow.components.training import train_iris
from tests.fixtures.processes import free_port


@pytest.fixture(scope="module")
def store_with_two_versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, PublishedModel, PublishedModel]:
    root = str(tmp_path_factory.mktemp("store"))
    champion = publish_model(root, "iris", train_iris(), run_id="run-1", version="v1")
    promote(root, "iris", champion, run_id="run-1")
    challenger = publish_model(root, "iris", train_iris(seed=7), run_id="run-2", version="v2")
    return root, champion, challenger


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deploy"
    yield root
    stop_local(root)


def deploy(root: str, state_root: Path, champion: PublishedModel, challenger: PublishedModel,
           champion_version: str, schedule: str = "") -> AbDeployment:
    return deploy_challenger(
        "local", artifact_root=root, model_name="iris", champion_version=champion_version,
        challenger_version=challenger.version, model_a_uri=champion.uri, model_b_uri=challenger.uri, ratio_a=0.5,
        ratio_schedule=schedule, image="", namespace="", name="iris-ab", local_state_dir=str(state_root),
        local_port=free_port(), prometheus_url="", run_id="run-2",
    )


def test_champion_against_a_challenger_starts_an_experiment(
        store_with_two_versions: tuple[str, PublishedModel, PublishedModel], state_root: Path) -> None:
    root, champion, challenger = store_with_two_versions
    deployed = deploy(root, state_root, champion, challenger, "v1", schedule="0.8,0.5")
    experiment = deployed.experiment
    assert experiment is not None and deployed.ratio_a == 0.8
    assert read_experiment(root, "iris", experiment.id) == experiment == running_experiment(root, "iris")
    assert [(a.name, a.version, a.role) for a in experiment.arms] == [
        ("classifier-1", "v1", "champion"), ("classifier-2", "v2", "challenger")]
    assert experiment.ratio_schedule == (0.8, 0.5) and experiment.started_by == "run-2"
    release = current_deployment(state_root)
    assert release is not None and release.experiment_id == experiment.id and release.ratio_a == 0.8
    assert experiment.outcomes == (f"{LEDGER}{release.serving_state_dir}/outcomes.sqlite",)
    assert experiment.endpoint == release.endpoint


def test_the_same_version_on_both_arms_is_not_an_experiment(
        store_with_two_versions: tuple[str, PublishedModel, PublishedModel], state_root: Path,
        tmp_path: Path) -> None:
    _, champion, _ = store_with_two_versions
    root = str(tmp_path / "fresh-store")
    deployed = deploy(root, state_root, champion, champion, "", schedule="0.8,0.5")
    assert deployed.experiment is None and deployed.ratio_a == 0.5
    assert running_experiment(root, "iris") is None
    release = current_deployment(state_root)
    assert release is not None and release.experiment_id == ""


def test_a_record_written_before_experiments_still_reads() -> None:
    record = LocalRelease(
        target="local", name="iris-ab", release=1, endpoint="http://127.0.0.1:1", graph_path="/g", model_a_uri="a",
        model_b_uri="b", ratio_a=0.5, previous_release=None, router_name="r", arm_names=("x", "y"), host="h",
        port=1, state_root="/s", serving_state_dir="/s/r/1/serving", deployed_at="now")
    body = record.to_dict()
    del body["experiment_id"]
    assert LocalRelease.from_json(json.dumps(body)) == record
