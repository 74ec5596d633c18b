"""``abflow run --deploy-mode shadow`` end to end (KFP's local runner, real processes): a second run
deploys its model as a shadow of the champion, which alone answers users; the run's smoke report
says how the shadow agreed, and nothing is promoted or A/B-tested."""

from __future__ import annotations

import json

import pytest
import requests

from abflow.components.experiment import running_experiment
from abflow.components.local_target import current_deployment
from abflow.components.registry import read_champion
from tests.pipelines.test_end_to_end import LocalProject

pytestmark = pytest.mark.slow

DIFFERENT_MODEL = ("--c", "0.01", "--min-accuracy", "0.3", "--max-regression", "1")


def test_a_shadow_run_serves_the_champion_mirrors_the_new_model_and_promotes_nothing(project: LocalProject) -> None:
    first = project.run()
    assert first.returncode == 0, first.stderr
    champion = read_champion(str(project.data), "iris")
    assert champion is not None

    second = project.run("--deploy-mode", "shadow", "--shadow-fraction", "0.5", *DIFFERENT_MODEL)
    assert second.returncode == 0, second.stderr
    assert f"shadows champion {champion.version} on 50% of requests" in second.stderr
    assert "ran as a shadow, which promotes nothing" in second.stderr
    assert "mirrored requests answered" in second.stderr and "same most probable class as the served answer in" \
        in second.stderr, "the smoke line reports what the shadow answered and how often it agreed"
    after = read_champion(str(project.data), "iris")
    assert after is not None and after.version == champion.version
    assert running_experiment(str(project.data), "iris") is None

    release = current_deployment(project.data)
    assert release is not None and release.mode == "shadow"
    answer = project.predict()
    assert set(answer["meta"]["requestPath"]) == {"classifier-1"}, "the champion alone answers users"
    health = requests.get(f"http://127.0.0.1:{project.port}/health/status", timeout=10).json()
    assert health["shadow"]["name"] == "classifier-2" and health["shadow"]["fraction"] == 0.5


def test_a_shadow_fraction_that_is_not_a_whole_percent_is_refused_before_any_step(project: LocalProject) -> None:
    result = project.run("--deploy-mode", "shadow", "--shadow-fraction", "0.123")
    assert result.returncode != 0
    assert "--shadow-fraction" in result.stderr and "whole percent" in result.stderr
    assert not (project.data / "models").exists(), json.dumps(result.stderr)
