"""``abflow render | submit | schedule`` through the real command line parser.

Stand-in: ``tests/cluster/kfp_standin.py`` replaces the Kubeflow Pipelines API server (v2beta1 REST
on 127.0.0.1). submit/schedule use the compiled pipeline that ships with abflow, so the parameter
typing is checked against the real pipeline's declared types.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from abflow.components.seldon_manifests import render_all
from abflow.pipelines.cli import main
from abflow.serving.graph import ab_graph
from tests.cluster.kfp_standin import API, KfpState, kfp_standin


@pytest.fixture
def kfp(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, KfpState]]:
    with kfp_standin() as (host, state):
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        yield host, state


def test_render_prints_what_deploy_applies(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["render", "--target", "seldon", "--model-a", "gs://b/m/v1", "--model-b", "gs://b/m/v2",
         "--ratio-a", "0.3", "--image", "reg/iris:1", "--namespace", "models"]
    )  # fmt: skip
    assert code == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    expected = render_all(
        ab_graph("iris-ab", "gs://b/m/v1", "gs://b/m/v2", 0.3), image="reg/iris:1", namespace="models"
    )
    assert documents == expected


def test_render_rejects_a_bad_ratio_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--model-a", "a", "--model-b", "b", "--ratio-a", "1.5"]) == 2
    assert "ratioA must be between 0 and 1, got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["render", "submit", "schedule"])
def test_help_shows_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"examples:\n  abflow {command}" in capsys.readouterr().out


def test_submit_types_params_of_the_shipped_pipeline(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    host, state = kfp
    state.run_script = ["SUCCEEDED"]  # the first poll finds it done: no poll interval to wait out
    code = main(
        ["submit", "--param", "target=seldon", "--param", "ratio_a=0.3", "--param", "smoke_requests=200",
         "--service-account", "abflow-pipeline-runner", "--wait"]
    )  # fmt: skip
    assert code == 0
    (run,) = state.calls("POST", f"{API}/runs")
    assert run.body["runtime_config"]["parameters"] == {"target": "seldon", "ratio_a": 0.3, "smoke_requests": 200}
    (run_id,) = state.runs
    assert capsys.readouterr().out.splitlines() == [f"run {run_id}: SUCCEEDED", f"{host}/#/runs/details/{run_id}"]


def test_submit_wait_fails_when_the_run_fails(kfp: tuple) -> None:
    _, state = kfp
    state.run_script = ["FAILED"]
    assert main(["submit", "--wait"]) == 1


def test_schedule_nightly_cron(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = kfp
    code = main(["schedule", "--name", "iris-nightly", "--cron", "0 0 2 * * *", "--param", "ratio_a=0.5"])
    assert code == 0
    (created,) = state.calls("POST", f"{API}/recurringruns")
    assert created.body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert created.body["runtime_config"] == {"parameters": {"ratio_a": 0.5}}
    assert (created.body["max_concurrency"], created.body["no_catchup"]) == (1, True)
    assert "recurring run" in capsys.readouterr().out


def test_schedule_five_field_cron_fails_with_the_fix(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = kfp
    assert main(["schedule", "--name", "n", "--cron", "0 2 * * *"]) == 2
    assert "cron needs 6 fields (seconds first): '0 0 2 * * *' = 02:00 daily" in capsys.readouterr().err
    assert state.requests == []


def test_schedule_needs_cron_or_every() -> None:
    with pytest.raises(SystemExit) as done:
        main(["schedule", "--name", "n"])
    assert done.value.code == 2
