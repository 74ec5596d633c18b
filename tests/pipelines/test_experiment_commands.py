"""``abflow experiment status|decide`` on an experiment record in a real artifact store and a real
ledger file written by ``OutcomeLedger`` and closed (the endpoint is down): the table, the ``--json``
shape the README's tour relies on, the report, and that deciding changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    Arm,
    Experiment,
    ledger_source,
    read_experiment,
    record_decision,
    start_experiment,
    update_experiment,
)
from abflow.pipelines.cli import main
from abflow.serving.ledger import OutcomeLedger, read_outcomes
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.serving import ab_graph_file, start_served_graph

MODEL = "iris"
ARMS = (Arm("classifier-1", "v20260101-aaaa", "file:///store/models/iris/v20260101-aaaa", CHAMPION),
        Arm("classifier-2", "v20260102-bbbb", "file:///store/models/iris/v20260102-bbbb", CHALLENGER))


def start(root: Path, experiment_id: str = "iris-20260102-220000-abcdef", ratio_a: float = 0.75) -> Experiment:
    return start_experiment(str(root), experiment_id=experiment_id, model_name=MODEL, target="local",
                            deployment_name="iris-ab", endpoint="http://127.0.0.1:8000", arms=ARMS, ratio_a=ratio_a,
                            outcomes=ledger_source(str(root / "serving")), run_id="run-2")


def serve(root: Path, experiment: Experiment, outcomes: dict[str, tuple[int, int, int]]) -> None:
    """Record ``requests, feedback, ones`` per arm in the endpoint's ledger, then close it."""
    with OutcomeLedger(root / "serving" / "outcomes.sqlite") as ledger:
        for arm, (requests, feedback, ones) in outcomes.items():
            for _ in range(requests):
                ledger.record_request(experiment.id, arm, 200, 0.002)
            for index in range(feedback):
                ledger.record_feedback(experiment.id, arm, 1.0 if index < ones else 0.0)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    body: dict[str, Any] = json.loads(out)
    return body


@pytest.mark.parametrize(("challenger_ones", "expected"), [(570, "promote"), (380, "keep"), (460, "continue")])
def test_decide_json_says_what_the_evidence_supports(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     challenger_ones: int, expected: str) -> None:
    experiment = start(tmp_path)
    serve(tmp_path, experiment, {"classifier-1": (600, 600, 480), "classifier-2": (600, 600, challenger_ones)})
    body = as_json(capsys, "experiment", "decide", "--data-dir", str(tmp_path))
    assert body["decision"] == expected
    assert body["reason"].startswith(expected)
    assert [{key: arm[key] for key in ("name", "version", "role", "requests", "feedback", "mean_reward")}
            for arm in body["arms"]] == [
        {"name": "classifier-1", "version": "v20260101-aaaa", "role": "champion", "requests": 600, "feedback": 600,
         "mean_reward": 0.8},
        {"name": "classifier-2", "version": "v20260102-bbbb", "role": "challenger", "requests": 600, "feedback": 600,
         "mean_reward": challenger_ones / 600},
    ]
    assert body["experiment"]["id"] == experiment.id
    assert [arm["share"] for arm in body["arms"]] == [0.75, 0.25]


def test_status_is_a_table_of_both_arms_and_the_decision_now(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    experiment = start(tmp_path)
    serve(tmp_path, experiment, {"classifier-1": (150, 120, 90), "classifier-2": (50, 40, 38)})
    code, out, _ = run(capsys, "experiment", "status", "--artifact-root", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"experiment {experiment.id} of iris: running since")
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("champion ", "challenger "))}
    assert rows["champion"][:6] == ["champion", "classifier-1", "v20260101-aaaa", "75%", "150", "0"]
    assert rows["champion"][-2:] == ["120", "0.7500"]
    assert rows["challenger"][:6] == ["challenger", "classifier-2", "v20260102-bbbb", "25%", "50", "0"]
    assert rows["challenger"][-2:] == ["40", "0.9500"]
    assert "decision now: continue: the test needs 100 feedbacks per arm; missing 60 for challenger" in out


def test_status_json_has_the_same_shape_as_decide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = start(tmp_path)
    serve(tmp_path, experiment, {"classifier-1": (10, 10, 9), "classifier-2": (10, 10, 10)})
    status = as_json(capsys, "experiment", "status", "--data-dir", str(tmp_path))
    decided = as_json(capsys, "experiment", "decide", "--data-dir", str(tmp_path))
    assert status.keys() == decided.keys() >= {"decision", "reason", "arms", "guardrails", "test", "experiment"}
    assert status["arms"] == decided["arms"]
    assert status["decision"] == "continue"


def test_the_decision_parameters_are_those_of_abflow_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = start(tmp_path)
    serve(tmp_path, experiment, {"classifier-1": (60, 60, 48), "classifier-2": (60, 60, 59)})
    assert as_json(capsys, "experiment", "decide", "--data-dir", str(tmp_path))["decision"] == "continue"
    body = as_json(capsys, "experiment", "decide", "--data-dir", str(tmp_path), "--min-feedback", "50",
                   "--alpha", "0.2", "--p99-slack-ms", "7")
    assert (body["test"]["min_feedback"], body["test"]["alpha"], body["test"]["p99_slack_seconds"]) == (50, 0.2, 0.007)
    code, _, err = run(capsys, "experiment", "decide", "--data-dir", str(tmp_path), "--max-duration-hours", "-1")
    assert code == 1 and "max_duration_hours must be >= 0" in err


def test_decide_changes_nothing_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    experiment = start(tmp_path)
    serve(tmp_path, experiment, {"classifier-1": (600, 600, 480), "classifier-2": (600, 600, 570)})
    before = {path: path.read_bytes() for path in tmp_path.rglob("*.json")}
    report = tmp_path / "out" / "decision.html"
    code, out, err = run(capsys, "experiment", "decide", "--data-dir", str(tmp_path), "--html", str(report))
    assert code == 0
    assert out.startswith("promote classifier-2 (v20260102-bbbb): the challenger is better")
    assert "nothing was changed" in err and str(report) in err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*.json")} == before
    page = report.read_text()
    assert "v20260101-aaaa (champion) vs v20260102-bbbb (challenger)" in page and ">promote</b>" in page


def test_the_running_experiment_is_chosen_else_the_latest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    older = start(tmp_path, "iris-20260101-220000-000001")
    newer = start(tmp_path, "iris-20260102-220000-000002")
    update_experiment(str(tmp_path), MODEL, newer.id,
                      lambda stored: record_decision(stored, {"decision": "keep"}, run_id="run-3", ends_it=True))
    serve(tmp_path, older, {"classifier-1": (5, 0, 0), "classifier-2": (5, 0, 0)})
    assert as_json(capsys, "experiment", "status", "--data-dir", str(tmp_path))["experiment"]["id"] == older.id
    update_experiment(str(tmp_path), MODEL, older.id,
                      lambda stored: record_decision(stored, {"decision": "keep"}, run_id="run-3", ends_it=True))
    latest = as_json(capsys, "experiment", "status", "--data-dir", str(tmp_path))["experiment"]
    assert (latest["id"], latest["status"]) == (newer.id, "concluded")
    chosen = as_json(capsys, "experiment", "status", "--data-dir", str(tmp_path), "--experiment", older.id)
    assert chosen["experiment"]["id"] == older.id and chosen["arms"][0]["requests"] == 5
    assert read_experiment(str(tmp_path), MODEL, older.id).status == "concluded"


def test_the_commands_load_their_statistics_and_clients_only_when_run() -> None:
    """`abflow --help` (and every `abflow serve`) builds this parser: numpy, savvi, requests and the
    ledger's sqlite3 are imported by the handlers, not by the parser."""
    probe = ("import sys; from abflow.pipelines.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('numpy', 'savvi', 'requests', 'sqlite3', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_without_an_experiment_the_error_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "experiment", "status", "--data-dir", str(tmp_path))
    assert code == 1 and not out
    assert f"no experiment of model 'iris' in {tmp_path.resolve()}" in err and "--data-dir" in err


def test_an_experiment_that_has_served_nothing_yet_is_missing_evidence(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    start(tmp_path)
    body = as_json(capsys, "experiment", "decide", "--data-dir", str(tmp_path))
    assert body["decision"] == "continue" and "missing 100 for challenger" in body["reason"]
    assert [(arm["requests"], arm["feedback"], arm["mean_reward"]) for arm in body["arms"]] == [(0, 0, None)] * 2


@pytest.mark.parametrize(("source", "message"), [
    ("carrier-pigeon:loft-3", "'carrier-pigeon:loft-3', which abflow cannot read"),
    ("prometheus:http://127.0.0.1:{port}", "cannot reach Prometheus at http://127.0.0.1:{port}"),
])
def test_an_unreadable_outcome_source_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            source: str, message: str) -> None:
    port = free_port()
    source, message = source.format(port=port), message.format(port=port)
    start_experiment(str(tmp_path), experiment_id="iris-20260102-220000-abcdef", model_name=MODEL, target="seldon",
                     deployment_name="iris-ab", endpoint="http://127.0.0.1:8000", arms=ARMS, ratio_a=0.5,
                     outcomes=source, run_id="run-2")
    code, out, err = run(capsys, "experiment", "status", "--data-dir", str(tmp_path))
    assert code == 1 and not out
    assert message in err


def test_traffic_with_feedback_to_a_real_endpoint_is_what_status_reads_once_it_is_down(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The loop on real processes: ``abflow traffic --feedback`` (rewards of 0 sent with no ``reward``
    key) into ``abflow serve --experiment``, the endpoint stopped, then ``abflow experiment status``."""
    experiment = start(tmp_path, ratio_a=0.5)
    state = tmp_path / "serving"
    served = start_served_graph(ab_graph_file(tmp_path, "0.5"),
                                {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}, tmp_path,
                                "--experiment", experiment.id, "--state-dir", str(state))
    try:
        code, out, err = run(capsys, "traffic", "--url", served.url, "--requests", "300", "--feedback")
        assert code == 0, out + err
        wait_until(lambda: sum(arm.feedback for arm in read_outcomes(state / "outcomes.sqlite",
                                                                     experiment.id).values()) == 300,
                   timeout=60, what="300 feedbacks in the ledger")
    finally:
        served.stop()
    sent = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    body = as_json(capsys, "experiment", "status", "--data-dir", str(tmp_path))
    for arm in body["arms"]:
        requests, feedback, accuracy = int(sent[arm["name"]][2]), int(sent[arm["name"]][3]), float(sent[arm["name"]][5])
        assert (arm["requests"], arm["feedback"]) == (requests, feedback), arm
        assert arm["mean_reward"] == pytest.approx(accuracy, abs=5e-4), "every wrong answer counted as a 0"
    assert sum(arm["feedback"] for arm in body["arms"]) == 300
    assert any(arm["mean_reward"] < 1 for arm in body["arms"]), "some rewards were 0, sent without a reward key"
