"""``abflow submit`` / ``abflow schedule`` logic: ``kfp.Client`` against a KFP API over real HTTP.

Stand-in: ``tests/cluster/kfp_standin.py`` replaces the Kubeflow Pipelines API server (v2beta1 REST,
on 127.0.0.1; it checks every body against kfp_server_api's models, records requests, runs nothing).
The pipeline is a small one compiled here with ``kfp.compiler``, with the parameter types the real
pipeline uses and a nested (``dsl.If``) DAG.
(No ``from __future__ import annotations`` here: KFP reads the components' annotations as types.)
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kfp import compiler, dsl

from abflow.pipelines.package import ParameterError, SubmissionError, load_package, parse_param, typed_params
from abflow.pipelines.remote import schedule, submit
from abflow.pipelines.triggers import parse_cron, parse_every
from tests.cluster.kfp_standin import API, KfpState, kfp_standin


@dsl.component(base_image="python:3.11-slim")
def retrain(ratio_a: float, smoke_requests: int, dry_run: bool, label: str) -> str:
    return f"{label}:{ratio_a}:{smoke_requests}:{dry_run}"


@dsl.component(base_image="python:3.11-slim")
def report(summary: str) -> None:
    print(summary)


@dsl.pipeline(name="tiny-retrain")
def tiny_retrain(ratio_a: float = 0.5, smoke_requests: int = 200, dry_run: bool = False, label: str = "nightly"):
    trained = retrain(ratio_a=ratio_a, smoke_requests=smoke_requests, dry_run=dry_run, label=label)
    with dsl.If(dry_run == False):  # noqa: E712 - a KFP condition, not a Python comparison
        report(summary=trained.output)


@pytest.fixture(scope="module")
def package_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "tiny.yaml"
    compiler.Compiler().compile(tiny_retrain, str(path))
    return path


@pytest.fixture
def kfp() -> Iterator[tuple[str, KfpState]]:
    with kfp_standin() as running:
        yield running


def spec_of(package_path: Path) -> dict[str, Any]:
    return load_package(package_path).pipeline_spec


def all_tasks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return [task for dag in dags for task in dag["tasks"].values()]


RAW = ["ratio_a=0.3", "smoke_requests=50", "dry_run=true", "label=a=b"]
TYPED = {"ratio_a": 0.3, "smoke_requests": 50, "dry_run": True, "label": "a=b"}


def test_params_are_typed_by_the_spec(package_path: Path) -> None:
    spec = spec_of(package_path)
    assert dict(parse_param(option, spec) for option in RAW) == TYPED
    assert parse_param("ratio_a=1", spec) == ("ratio_a", 1.0)
    assert parse_param("dry_run=False", spec) == ("dry_run", False)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("ratio_a=half", "parameter 'ratio_a' is a number: got 'half'; use a number such as 0.5"),
        ("smoke_requests=2.5", "parameter 'smoke_requests' is an integer: got '2.5'; use a whole number"),
        ("dry_run=maybe", "parameter 'dry_run' is a boolean: got 'maybe'; use true or false"),
        ("ratio=0.3", "unknown pipeline parameter 'ratio' (did you mean 'ratio_a'?); the pipeline declares: "),
        ("ratio_a", "--param expects key=value (e.g. ratio_a=0.3), got 'ratio_a'"),
        ("ratio_a=nan", "use a finite number"),
    ],
)
def test_bad_params_say_what_to_type(package_path: Path, option: str, message: str) -> None:
    with pytest.raises(ParameterError) as caught:
        parse_param(option, spec_of(package_path))
    assert message in str(caught.value)


def test_required_parameter_must_be_given() -> None:
    spec = {"root": {"inputDefinitions": {"parameters": {"seed": {"parameterType": "NUMBER_INTEGER"}}}}}
    with pytest.raises(ParameterError, match="needs parameter\\(s\\) seed"):
        typed_params({}, spec)


def test_cron_needs_six_fields_seconds_first() -> None:
    assert parse_cron("0 0 2 * * *") == "0 0 2 * * *"
    assert parse_cron("0 30 1 * * MON-FRI") == "0 30 1 * * MON-FRI"
    assert parse_cron("0 */15 * * * ?") == "0 */15 * * * ?"
    assert parse_cron("@daily") == "@daily"
    with pytest.raises(SubmissionError) as caught:
        parse_cron("0 2 * * *")
    assert str(caught.value) == (
        "cron needs 6 fields (seconds first): '0 0 2 * * *' = 02:00 daily; got 5 in '0 2 * * *'; "
        "did you mean '0 0 2 * * *'?"
    )
    with pytest.raises(SubmissionError, match="cron hour field '25': '25' is not in 0-23"):
        parse_cron("0 0 25 * * *")
    with pytest.raises(SubmissionError, match="use --every"):
        parse_cron("@every 24h")


def test_every_becomes_interval_seconds() -> None:
    assert parse_every("24h") == 86400
    assert parse_every("1h30m") == 5400
    assert parse_every("2d") == 172800
    for bad in ("24", "1 day", "0m", ""):
        with pytest.raises(SubmissionError, match="--every"):
            parse_every(bad)


def test_submit_sends_typed_params_with_caching_off_and_waits(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    info = submit(
        package_path,
        host=host,
        experiment="abflow",
        params=dict(parse_param(option, spec_of(package_path)) for option in RAW),
        wait=True,
        poll_interval=0.01,
        service_account="abflow-pipeline-runner",
    )
    assert info.state == "SUCCEEDED"
    assert info.url == f"{host}/#/runs/details/{info.run_id}"
    # kfp.Client sends the context's namespace, empty on a single-user install.
    assert state.calls("POST", f"{API}/experiments")[0].body == {"display_name": "abflow", "namespace": ""}
    (run,) = state.calls("POST", f"{API}/runs")
    experiment_id = next(iter(state.experiments))
    assert set(run.body) == {"display_name", "experiment_id", "pipeline_spec", "runtime_config", "service_account"}
    assert run.body["experiment_id"] == experiment_id
    assert run.body["runtime_config"] == {"parameters": TYPED}
    assert run.body["service_account"] == "abflow-pipeline-runner"
    assert run.body["display_name"].startswith("tiny-retrain ")
    tasks = all_tasks(run.body["pipeline_spec"])
    assert len(tasks) == 3  # retrain, the condition, report inside it
    # kfp.Client sends the spec through protobuf, which leaves out a false enableCache: off either way.
    assert not any(task.get("cachingOptions", {}).get("enableCache") for task in tasks)
    assert len(state.calls("GET", f"{API}/runs/{info.run_id}")) == 2  # RUNNING, then SUCCEEDED


def test_submit_reuses_the_experiment_and_does_not_wait(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    for _ in range(2):
        info = submit(package_path, host=host, experiment="abflow", params={"ratio_a": "0.7"}, wait=False)
        assert info.state == "PENDING"
    assert len(state.calls("POST", f"{API}/experiments")) == 1
    assert [r.body["runtime_config"] for r in state.calls("POST", f"{API}/runs")] == [
        {"parameters": {"ratio_a": 0.7}}
    ] * 2
    assert not state.calls("GET", f"{API}/runs/{info.run_id}")


def test_schedule_cron_uploads_once_and_fills_in_both_ids(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    info = schedule(
        package_path,
        host=host,
        experiment="abflow",
        name="iris-nightly",
        cron="0 0 2 * * *",
        every=None,
        params={"ratio_a": "0.5", "smoke_requests": "200", "dry_run": "false"},
    )
    (upload,) = state.calls("POST", f"{API}/pipelines/upload")
    assert upload.query == {"name": "iris-nightly"}
    assert upload.filename == "tiny-retrain.yaml"
    (version_upload,) = state.calls("POST", f"{API}/pipelines/upload_version")
    assert version_upload.query["pipelineid"] == info.pipeline_id
    assert version_upload.query["name"].startswith("iris-nightly-")
    assert all(task["cachingOptions"]["enableCache"] is False for task in all_tasks(version_upload.body[0]))
    (created,) = state.calls("POST", f"{API}/recurringruns")
    assert created.body == {
        "display_name": "iris-nightly",
        "description": "abflow schedule of tiny-retrain",
        "experiment_id": info.experiment_id,
        "pipeline_version_reference": {
            "pipeline_id": info.pipeline_id,
            "pipeline_version_id": info.pipeline_version_id,
        },
        "runtime_config": {"parameters": {"ratio_a": 0.5, "smoke_requests": 200, "dry_run": False}},
        "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}},
        "max_concurrency": 1,
        "no_catchup": True,
        "mode": "ENABLE",
    }
    assert info.url == f"{host}/#/recurringrun/details/{info.recurring_run_id}"

    again = schedule(
        package_path, host=host, experiment="abflow", name="iris-nightly", cron="@daily", every=None, params={}
    )
    assert (again.pipeline_id, again.pipeline_version_id) == (info.pipeline_id, info.pipeline_version_id)
    assert len(state.calls("POST", f"{API}/pipelines/upload")) == 1
    assert len(state.calls("POST", f"{API}/pipelines/upload_version")) == 1, "unchanged spec: version reused"


def test_schedule_every_with_catchup_and_concurrency(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    schedule(
        package_path,
        host=host,
        experiment="abflow",
        name="iris-every",
        cron=None,
        every="24h",
        params={},
        max_concurrency=2,
        catchup=True,
    )
    (created,) = state.calls("POST", f"{API}/recurringruns")
    assert created.body["trigger"] == {"periodic_schedule": {"interval_second": 86400}}
    assert (created.body["max_concurrency"], created.body["no_catchup"]) == (2, False)


def test_schedule_checks_everything_before_sending(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    common: dict[str, Any] = {"host": host, "experiment": "abflow", "name": "n", "params": {}}
    with pytest.raises(SubmissionError, match="exactly one of --cron"):
        schedule(package_path, cron="0 0 2 * * *", every="24h", **common)
    with pytest.raises(SubmissionError, match="cron needs 6 fields"):
        schedule(package_path, cron="0 2 * * *", every=None, **common)
    with pytest.raises(ParameterError, match="unknown pipeline parameter 'ratioA'"):
        schedule(package_path, cron="@daily", every=None, **{**common, "params": {"ratioA": "0.5"}})
    assert state.requests == []


def test_unreachable_host_and_server_errors_say_what_to_check(package_path: Path, kfp: tuple) -> None:
    host, state = kfp
    with pytest.raises(SubmissionError, match="cannot reach KFP at http://127.0.0.1:9 to connect: .*; check --host"):
        submit(package_path, host="http://127.0.0.1:9", experiment="e", params={}, wait=False)
    state.refusals[f"POST {API}/runs"] = (403, "user is not allowed to create runs in namespace kubeflow")
    with pytest.raises(SubmissionError) as caught:
        submit(package_path, host=host, experiment="e", params={}, wait=False)
    assert str(caught.value) == (
        "KFP refused to create a run: HTTP 403: user is not allowed to create runs in namespace kubeflow "
        "(check --token / KFP_TOKEN)"
    )


def test_the_standin_refuses_fields_the_api_does_not_have(kfp: tuple) -> None:
    """The check that makes the payload assertions above worth something: a misspelt field is a 400."""
    import requests

    host, _ = kfp
    response = requests.post(f"{host}{API}/runs", json={"display_name": "r", "runtimeConfig": {}}, timeout=10)
    assert response.status_code == 400
    assert response.json()["message"] == "run: unknown field 'runtimeConfig' of V2beta1Run"
