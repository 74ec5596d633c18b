"""The laptop command line: flags mirror the pipeline, bad parameters fail before any work."""

import io
import json
import subprocess
import sys

import pytest

from abflow.pipelines.cli import build_parser, main
from abflow.pipelines.local_commands import PARAMETER_HELP, check_arguments, pipeline_arguments
from abflow.pipelines.local_run import ProgressLog
from abflow.pipelines.pipeline import STEP_NAMES, iris_ab_pipeline
from tests.fixtures.processes import free_port
from tests.fixtures.serving import ServedGraph


def test_every_pipeline_parameter_has_a_flag_with_help() -> None:
    assert set(PARAMETER_HELP) == set(iris_ab_pipeline.component_spec.inputs)
    args = build_parser().parse_args(["run", "--ratio-a", "0.3", "--smoke-requests", "50"])
    arguments = pipeline_arguments(args)
    assert arguments["ratio_a"] == 0.3 and arguments["smoke_requests"] == 50
    assert arguments["artifact_root"].endswith("abflow-data")


def test_building_the_command_line_does_not_import_kfp() -> None:
    """Every abflow process builds the parser, `abflow serve` included: it must stay light."""
    probe = "import sys; from abflow.pipelines.cli import build_parser; build_parser(); print('kfp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_flags_have_the_pipeline_types_and_defaults() -> None:
    for name, spec in iris_ab_pipeline.component_spec.inputs.items():
        parsed = getattr(build_parser().parse_args(["run"]), name)
        assert parsed is None or (parsed == spec.default and type(parsed) is type(spec.default)), name


def test_gcs_artifact_root_is_passed_through_untouched() -> None:
    args = build_parser().parse_args(["run", "--artifact-root", "gs://bucket/prefix"])
    assert pipeline_arguments(args)["artifact_root"] == "gs://bucket/prefix"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--ratio-a", "1.5", "--ratio-a must be between 0 and 1, got 1.5"),
        ("--test-size", "1", "--test-size must be between 0 and 1"),
        ("--smoke-requests", "0", "--smoke-requests must be at least 1"),
        ("--target", "kserve", "--target must be one of local, seldon"),
        ("--builder", "kaniko", "--builder kaniko runs in a cluster"),
    ],
)
def test_bad_parameters_are_rejected_before_running(flag: str, value: str, message: str) -> None:
    args = build_parser().parse_args(["run", flag, value])
    assert any(message in problem for problem in check_arguments(pipeline_arguments(args)))


def test_run_with_a_bad_ratio_exits_2_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--ratio-a", "1.5"]) == 2
    assert "--ratio-a must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_help_explains_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "abflow.pipelines.cli", "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "--ratio-a" in result.stdout and "examples:" in result.stdout


def test_progress_log_reports_steps_and_keeps_the_failure_reason() -> None:
    log, terminal = io.StringIO(), io.StringIO()
    progress = ProgressLog(log=log, terminal=terminal)
    progress.write("08:00:00 - INFO - Executing task \x1b[96m'train'\x1b[0m\n")
    progress.write("    abflow: trained, accuracy 0.974\n")
    progress.write("08:00:01 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    progress.write("08:00:01 - INFO - Executing task 'gate'\n    abflow.components.gating.GateFailed: accuracy 0.5")
    progress.write(" is below min_accuracy 0.9\n      - and one more reason\n\n")
    progress.write("Task 'gate' finished with status FAILURE\n")
    shown = terminal.getvalue()
    assert f"[1/{len(STEP_NAMES)}] train ..." in shown and "trained, accuracy 0.974" in shown and "FAILED" in shown
    reason = "GateFailed: accuracy 0.5 is below min_accuracy 0.9\n  - and one more reason"
    assert progress.last_error == {"gate": reason}
    assert "Executing task" in log.getvalue()


def test_predict_sends_the_tutorial_payload_to_a_real_graph(
    tutorial_ab: ServedGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--url", tutorial_ab.url, "--token", tutorial_ab.get_token()]) == 0
    response = json.loads(capsys.readouterr().out)
    assert response["data"]["names"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]
    assert set(response["meta"]["routing"]) == {"random-ab-test"}


def test_predict_without_the_token_shows_the_servers_status_body(
    tutorial_ab: ServedGraph, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--url", tutorial_ab.url]) == 1
    assert '"status":"FAILURE"' in capsys.readouterr().err.replace(" ", "")


def test_predict_at_a_closed_port_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "start one with `abflow run`" in capsys.readouterr().err
