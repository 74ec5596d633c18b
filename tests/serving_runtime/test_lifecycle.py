"""Processes, not requests: arms crashing and coming back, graceful shutdown, no orphans, refused
models, and the detached mode the pipeline's local deploy step uses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import requests

from abflow.serving.daemon import DetachError, endpoint_status, start_detached, stop_detached
from tests.fixtures.arms import graph_arms
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.serving import (
    TUTORIAL_DIR,
    ServedGraph,
    ab_graph_file,
    parent_pid,
    process_alive,
    serve_command,
    serving_env,
)
from tests.serving_runtime.slowmodel import write_slow_model

ServeGraph = Callable[[Path, Mapping[str, Path | str]], ServedGraph]


def test_a_killed_arm_answers_503_naming_it_then_recovers(serve_graph: ServeGraph, tmp_path: Path,
                                                          iris_model_dir: Path, iris_model_dir_b: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABFLOW_ON_ARM_DOWN", "fail")  # the default, failover, is test_hardening's
    served = serve_graph(ab_graph_file(tmp_path, "0.5"),
                         {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b})
    old_pid = graph_arms(served.proc.pid, 2)[1]
    assert served.health()["arms"][1]["status"] == "up"
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(old_pid), what="the killed arm to be gone")

    # While classifier-2 is down: its share fails fast with a 503 naming it, classifier-1 keeps serving.
    seen: dict[str, int] = {"arm0": 0, "503": 0, "arm1": 0}
    statuses: set[str] = set()
    for _ in range(30):
        started = time.monotonic()
        response = served.predict()
        assert time.monotonic() - started < 5.0
        if response.status_code == 503:
            status = response.json()["status"]
            assert "classifier-2" in status["info"] and status["status"] == "FAILURE"
            seen["503"] += 1
        else:
            assert response.status_code == 200, response.text
            seen[f"arm{response.json()['meta']['routing']['random-ab-test']}"] += 1
        statuses.add(served.health()["status"])
    assert seen["arm0"] > 0
    assert seen["503"] > 0 or seen["arm1"] > 0
    assert statuses <= {"degraded", "ok"}
    assert "degraded" in statuses or seen["503"] == 0

    def recovered() -> bool:
        return served.health()["status"] == "ok" and graph_arms(served.proc.pid, 2)[1] != old_pid

    wait_until(recovered, timeout=60, interval=0.1, what="the supervisor to restart classifier-2")
    routed = {answer["meta"]["routing"]["random-ab-test"] for answer in served.predict_many(40)}
    assert routed == {0, 1}
    assert "exited with code" in served.log()


def test_sigterm_drains_a_slow_request_and_leaves_no_orphans(serve_graph: ServeGraph, tmp_path: Path) -> None:
    slow = write_slow_model(tmp_path / "slow")
    served = serve_graph(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": slow})
    arm_pids = graph_arms(served.proc.pid, 1)
    zygote = parent_pid(arm_pids[0])
    result: dict[str, requests.Response] = {}
    request = threading.Thread(target=lambda: result.setdefault("response", served.predict()))
    request.start()

    def in_flight() -> bool:
        metrics = requests.get(f"{served.url}/metrics", timeout=10).text
        return bool(re.search(r"^abflow_inflight_requests 1\.0$", metrics, re.M))

    wait_until(in_flight, timeout=30, what="the slow request to be in flight")
    served.proc.send_signal(signal.SIGTERM)
    request.join(timeout=60)
    assert result["response"].status_code == 200
    assert result["response"].json()["data"]["tensor"]["shape"] == [1, 3]
    assert served.proc.wait(timeout=30) == 0
    for pid in [*arm_pids, zygote]:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"pid {pid} to exit")
    assert "draining" in served.log()


def test_arms_and_their_zygote_die_with_a_killed_supervisor(serve_graph: ServeGraph, tmp_path: Path,
                                                            iris_model_dir: Path) -> None:
    served = serve_graph(ab_graph_file(tmp_path, "0.5"),
                         {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir})
    arm_pids = graph_arms(served.proc.pid, 2)
    zygotes = {parent_pid(pid) for pid in arm_pids}
    assert len(zygotes) == 1 and parent_pid(next(iter(zygotes))) == served.proc.pid
    served.proc.kill()
    served.proc.wait(timeout=10)
    for pid in [*zygotes, *arm_pids]:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"orphaned pid {pid} to exit")


def test_a_killed_zygote_takes_its_arms_and_the_supervisor_starts_both_again(
        serve_graph: ServeGraph, tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    served = serve_graph(ab_graph_file(tmp_path, "0.5"),
                         {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b})
    old_arms = set(graph_arms(served.proc.pid, 2))
    zygote = parent_pid(next(iter(old_arms)))
    os.kill(zygote, signal.SIGKILL)
    for pid in old_arms:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"arm pid {pid} to exit with its zygote")

    def recovered() -> bool:
        return served.health()["status"] == "ok" and not old_arms & set(graph_arms(served.proc.pid, 2))

    wait_until(recovered, timeout=60, interval=0.1, what="the supervisor to fork both arms from a new zygote")
    new_zygotes = {parent_pid(pid) for pid in graph_arms(served.proc.pid, 2)}
    assert len(new_zygotes) == 1 and zygote not in new_zygotes
    assert {answer["meta"]["routing"]["random-ab-test"] for answer in served.predict_many(40)} == {0, 1}
    assert "went down with its zygote" in served.log()


def test_a_tampered_model_makes_serve_exit_with_the_reason(tmp_path: Path, iris_model_dir: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(iris_model_dir, tampered)
    with open(tampered / "model.joblib", "ab") as model:
        model.write(b"\0")
    command = serve_command(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": tampered},
                            free_port())
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=serving_env())
    assert finished.returncode != 0
    assert "sha256" in finished.stderr and "sklearn-iris-classifier" in finished.stderr


def test_graph_errors_exit_2_before_starting_anything(tmp_path: Path, iris_model_dir: Path) -> None:
    command = serve_command(TUTORIAL_DIR / "ab_test.json", {"classifier-1": iris_model_dir}, free_port())
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, env=serving_env())
    assert finished.returncode == 2
    assert "classifier-2" in finished.stderr and "--model classifier-2=" in finished.stderr


def test_detach_status_down(tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    state_dir = tmp_path / "state"
    models = {"classifier-1": str(iris_model_dir), "classifier-2": str(iris_model_dir_b)}
    info = start_detached(TUTORIAL_DIR / "ab_test.json", models, port=free_port(), state_dir=state_dir,
                          ready_timeout=60)
    try:
        assert info.url == f"http://127.0.0.1:{info.port}"
        assert requests.get(f"{info.url}/ready", timeout=10).status_code == 200
        status = endpoint_status(state_dir)
        assert status is not None and status["running"] and status["pid"] == info.pid
        assert status["health"]["status"] == "ok" and status["models"] == models
        arm_pids = graph_arms(info.pid, 2)
        cli = subprocess.run([sys.executable, "-m", "abflow.serving", "status", "--json", "--state-dir",
                              str(state_dir)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and f'"url": "{info.url}"' in cli.stdout
        with pytest.raises(DetachError, match="already running"):
            start_detached(TUTORIAL_DIR / "ab_test.json", models, port=free_port(), state_dir=state_dir)
    finally:
        down = subprocess.run([sys.executable, "-m", "abflow.serving", "down", "--state-dir", str(state_dir)],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "stopped the endpoint" in down.stderr
    wait_until(lambda: not process_alive(info.pid), what="the detached server to exit")
    for pid in arm_pids:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"arm pid {pid} to exit")
    assert endpoint_status(state_dir) is None
    assert stop_detached(state_dir) is False
    assert "ready: " in info.log_path.read_text()


def test_detach_reports_why_a_server_did_not_start(tmp_path: Path, iris_model_dir: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(iris_model_dir, tampered)
    (tampered / "model.joblib").write_bytes(b"not a model")
    with pytest.raises(DetachError, match="sha256"):
        start_detached(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": str(tampered)},
                       port=free_port(), state_dir=tmp_path / "state", ready_timeout=60)
    assert endpoint_status(tmp_path / "state") is None
