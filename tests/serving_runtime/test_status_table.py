"""``abflow status`` prints a table for people (``--json`` keeps the raw record for scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from abflow.components.local_target import deploy_local, stop_local
from abflow.serving.status import render_status
from tests.fixtures.processes import free_port


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    yield root
    stop_local(root)


def status(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "abflow.serving", "status", "--state-dir", str(state_dir), *flags],
                          capture_output=True, text=True, timeout=60)


def test_status_shows_url_release_and_each_arms_version_role_and_state(
        state_root: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    port = free_port()
    deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir_b), ratio_a=0.25,
                 state_root=state_root, port=port)
    table = status(state_root / "serving")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"endpoint  http://127.0.0.1:{port}/api/v1.0/predictions  running (pid ")
    assert lines[1].startswith("since     ") and " UTC (" in lines[1] and lines[1].endswith(" ago)")
    assert lines[2] == "release   1"
    assert lines[3] == "graph     iris-ab: router random-ab-test, ratioA 0.25; health ok"
    header, arm_a, arm_b = (line.split() for line in lines[5:8])
    assert header == ["role", "arm", "share", "model", "version", "state", "routed", "feedback", "mean", "reward"]
    assert arm_a == ["A", "classifier-1", "25%", "iris", "v1", "up", "0", "0", "-"]
    assert arm_b == ["B", "classifier-2", "75%", "iris", "v2", "up", "0", "0", "-"]
    assert lines[-1] == f"log       {state_root.resolve()}/releases/1/serving/serve.log"

    raw = status(state_root / "serving", "--json")
    assert raw.returncode == 0
    record = json.loads(raw.stdout)
    assert record["port"] == port and record["health"]["ratioA"] == 0.25
    assert record["models"]["classifier-2"].endswith("/models/iris/v2")


def test_an_endpoint_that_died_says_so_and_lists_its_arms() -> None:
    record = {"url": "http://127.0.0.1:8000", "pid": 4242, "running": False, "started_at": "2026-01-02T03:04:05+00:00",
              "state_dir": "/srv/abflow-data/releases/7/serving",
              "log_path": "/srv/abflow-data/releases/7/serving/serve.log",
              "models": {"classifier-1": "gs://bucket/abflow/models/iris/v3", "classifier-2": "/tmp/model.joblib"}}
    lines = render_status(record, now=datetime(2026, 1, 2, 6, 4, 5, tzinfo=UTC)).splitlines()
    assert lines[:3] == ["endpoint  http://127.0.0.1:8000/api/v1.0/predictions  NOT RUNNING (pid 4242 is gone)",
                         "since     2026-01-02 03:04:05 UTC (3 h ago)", "release   7"]
    assert lines[5].split() == ["A", "classifier-1", "-", "iris", "v3", "?", "-", "-", "-"]
    assert lines[6].split() == ["B", "classifier-2", "-", "-", "model.joblib", "?", "-", "-", "-"]
