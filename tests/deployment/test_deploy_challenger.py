"""deploy-ab's plain logic with the real local target: a champion against a different challenger
starts an experiment, recorded in the store and named in the release; the same version twice does not.
With ``deploy_mode=shadow`` the champion serves every request, the challenger gets a copy of the stated
fraction, the smoke report says how many copies it answered and how often it agreed, and no experiment
starts: no user sees the shadow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abflow.components.deploy_targets import AbDeployment, deploy_challenger
from abflow.components.experiment import LEDGER, list_experiments, read_experiment, running_experiment
from abflow.components.local_target import LocalRelease, current_deployment, stop_local
from abflow.components.registry import PublishedModel, promote, publish_model
from abflow.components.shadow_smoke import smoke_shadow_deployment
from abflow.components.smoke import render_html_report
from abflow.components.training import train_iris
from abflow.serving.graph import GraphError, load_graph
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
           champion_version: str, schedule: str = "", **mode: Any) -> AbDeployment:
    return deploy_challenger(
        "local", artifact_root=root, model_name="iris", champion_version=champion_version,
        challenger_version=challenger.version, model_a_uri=champion.uri, model_b_uri=challenger.uri, ratio_a=0.5,
        ratio_schedule=schedule, image="", namespace="", name="iris-ab", local_state_dir=str(state_root),
        local_port=free_port(), prometheus_url="", run_id="run-2", **mode,
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

@pytest.fixture(scope="module")
def weak_challenger(store_with_two_versions: tuple[str, PublishedModel, PublishedModel]) -> PublishedModel:
    """A challenger that disagrees with the champion on some iris rows, so agreement is neither 0 nor 1."""
    return publish_model(store_with_two_versions[0], "iris", train_iris(c=0.001), run_id="run-3", version="v3")


SHADOW_REQUESTS = 400


def test_a_shadow_deploy_serves_the_champion_mirrors_the_fraction_and_reports_agreement(
        store_with_two_versions: tuple[str, PublishedModel, PublishedModel], weak_challenger: PublishedModel,
        state_root: Path) -> None:
    root, champion, _ = store_with_two_versions
    challenger = weak_challenger
    experiments_before = list_experiments(root, "iris")
    deployed = deploy(root, state_root, champion, challenger, "v1", mode="shadow", shadow_fraction=0.5)
    assert deployed.mode == "shadow" and deployed.experiment is None and deployed.ratio_a == 1.0
    assert list_experiments(root, "iris") == experiments_before, "a shadow starts no experiment"
    release = current_deployment(state_root)
    assert release is not None and (release.mode, release.shadow_fraction, release.ratio_a) == ("shadow", 0.5, 1.0)
    graph = load_graph(release.graph_path)
    assert graph.router is None and graph.shadow is not None and graph.shadow.model_uri == challenger.uri

    report = smoke_shadow_deployment(release.endpoint, release.to_json(), requests=SHADOW_REQUESTS, p99_budget_ms=5000)
    assert report.passed, report.failures
    assert report.arm_counts == {"classifier-1": SHADOW_REQUESTS}
    shadow = report.shadow
    assert shadow is not None and shadow["measured"] and shadow["fraction"] == 0.5
    # 200 expected; 6 standard deviations (±60) allowed.
    assert abs(shadow["mirrored"] - SHADOW_REQUESTS / 2) <= 60 and shadow["answered"] == shadow["mirrored"]
    assert 0 < shadow["agreement"] < 1, "a C=0.001 model disagrees with the default one on some iris rows"
    assert report.as_metrics()["smoke_shadow_agreement"] == shadow["agreement"]
    assert "same most probable class as the served answer" in render_html_report(report)


def test_without_a_champion_there_is_nothing_to_shadow_and_the_model_deploys_as_ab(
        store_with_two_versions: tuple[str, PublishedModel, PublishedModel], weak_challenger: PublishedModel,
        state_root: Path) -> None:
    root, champion, _ = store_with_two_versions
    deployed = deploy(root, state_root, champion, champion, "", mode="shadow", shadow_fraction=0.5)
    assert deployed.mode == "ab"
    release = current_deployment(state_root)
    assert release is not None and release.mode == "ab"


def test_a_fraction_that_is_not_a_whole_percent_deploys_nothing(
        store_with_two_versions: tuple[str, PublishedModel, PublishedModel], weak_challenger: PublishedModel,
        state_root: Path) -> None:
    root, champion, _ = store_with_two_versions
    challenger = weak_challenger
    with pytest.raises(GraphError, match="whole percent"):
        deploy(root, state_root, champion, challenger, "v1", mode="shadow", shadow_fraction=0.123)
    assert current_deployment(state_root) is None
