"""Faults a supervisor must notice and clean up after, on real processes: an arm that hangs (stopped, so its
socket stays open and only a liveness probe can tell), and a supervisor killed without a chance to tidy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from abflow.serving.armlink import ArmInfo, ArmLink, ArmUnavailable
from abflow.serving.supervisor import RUNTIME_PREFIX
from tests.fixtures.arms import graph_arms
from tests.fixtures.processes import wait_until
from tests.fixtures.serving import ServedGraph, ab_graph_file, process_alive, serving_env, start_served_graph

ServeGraph = Callable[[Path, Mapping[str, Path | str]], ServedGraph]


def test_a_hung_arm_is_marked_down_then_replaced(serve_graph: ServeGraph, tmp_path: Path,
                                                 iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    served = serve_graph(ab_graph_file(tmp_path, "0.5"),
                         {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b})
    first, hung = graph_arms(served.proc.pid, 2)
    os.kill(hung, signal.SIGSTOP)
    try:
        def marked_down() -> dict[str, object] | None:
            arm: dict[str, object] = served.health()["arms"][1]
            return arm if not arm["up"] else None

        arm = wait_until(marked_down, timeout=30, interval=0.05, what="the stopped arm to be marked down")
        assert "liveness probe" in str(arm["reason"])
        wait_until(lambda: not process_alive(hung), timeout=30, what="the hung arm to be killed")

        def replaced() -> bool:
            return served.health()["status"] == "ok" and graph_arms(served.proc.pid, 2)[1] not in (hung, first)

        wait_until(replaced, timeout=60, interval=0.05, what="a new classifier-2 to answer")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert graph_arms(served.proc.pid, 2)[0] == first  # the healthy arm was left alone
    assert {answer["meta"]["routing"]["random-ab-test"] for answer in served.predict_many(40)} == {0, 1}
    assert "did not answer a liveness probe" in served.log()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def arm_process(iris_model_dir: Path, short_tmpdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One model server speaking frames on a unix socket, as an arm of ``abflow serve`` does."""
    socket_path = str(short_tmpdir / "arm0.sock")
    proc = subprocess.Popen([sys.executable, "-m", "abflow.serving.modelserver", "--model", str(iris_model_dir),
                             "--socket", socket_path], stdout=subprocess.PIPE, env=serving_env())
    try:
        assert proc.stdout is not None and json.loads(proc.stdout.readline())["ready"]
        yield proc, socket_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_requests_to_a_hung_arm_fail_when_it_is_marked_down_and_then_fail_fast(
        arm_process: tuple[subprocess.Popen[bytes], str]) -> None:
    """The request in flight when the arm hangs fails with the probe's verdict (not its own 30 s timeout);
    the next ones fail at once instead of waiting on the hung arm; the supervisor hears of it."""
    proc, socket_path = arm_process
    rows = np.array([[5.1, 3.5, 1.4, 0.2]])

    async def scenario() -> tuple[list[ArmInfo | None], BaseException, BaseException, bool]:
        hung: list[ArmInfo | None] = []
        link = ArmLink("classifier", socket_path, probe_interval=0.1, probe_timeout=0.5)
        await link.connect()
        link.start_probing(hung.append)
        assert (await link.predict(rows)).shape == (1, 3)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(proc.pid) == "T", what="the arm to be stopped")
        in_flight = await asyncio.gather(link.predict(rows), return_exceptions=True)
        up_after = link.up
        following = await asyncio.gather(link.predict(rows), return_exceptions=True)
        link.close()
        return hung, in_flight[0], following[0], up_after

    hung, in_flight, following, up_after = asyncio.run(scenario())
    assert [info.pid if info else None for info in hung] == [proc.pid]
    assert not up_after
    for error in (in_flight, following):
        assert isinstance(error, ArmUnavailable) and "liveness probe within 0.5s" in error.reason, error


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR of the test's own, short enough for unix socket paths (108 bytes at most)."""
    folder = Path(tempfile.mkdtemp(prefix="abf-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def runtime_folders(tmpdir: Path) -> set[Path]:
    return set(tmpdir.glob(f"{RUNTIME_PREFIX}*"))


def test_a_sigkilled_supervisors_socket_folder_is_removed_at_the_next_start(
        short_tmpdir: Path, tmp_path: Path, iris_model_dir: Path) -> None:
    graph = ab_graph_file(tmp_path, "0.5")
    models = {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir}
    env = {"TMPDIR": str(short_tmpdir)}
    killed = start_served_graph(graph, models, tmp_path, env=env)
    arms = graph_arms(killed.proc.pid, 2)
    (stale,) = runtime_folders(short_tmpdir)
    killed.proc.kill()
    killed.proc.wait(timeout=10)
    for pid in arms:
        wait_until(lambda pid=pid: not process_alive(pid), what=f"arm {pid} to die with its supervisor")
    assert stale.is_dir()  # nothing could remove it: that is what the next start is for

    served = start_served_graph(graph, models, tmp_path, env=env)
    try:
        (current,) = runtime_folders(short_tmpdir)
        assert current != stale and not stale.exists()
        assert stat.S_IMODE(current.stat().st_mode) == 0o700
        assert served.predict().status_code == 200
    finally:
        assert served.stop() == 0
    assert runtime_folders(short_tmpdir) == set()  # a graceful stop removes its own


def test_a_running_supervisors_socket_folder_is_left_alone(short_tmpdir: Path, tmp_path: Path,
                                                           iris_model_dir: Path) -> None:
    graph = ab_graph_file(tmp_path, "0.5")
    models = {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir}
    first = start_served_graph(graph, models, tmp_path, env={"TMPDIR": str(short_tmpdir)})
    try:
        (folder,) = runtime_folders(short_tmpdir)
        second = start_served_graph(graph, models, tmp_path, env={"TMPDIR": str(short_tmpdir)})
        try:
            assert folder.is_dir() and len(runtime_folders(short_tmpdir)) == 2
            assert first.predict().status_code == 200
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_folder_whose_pid_was_reused_is_removed_and_others_are_not_touched(
        short_tmpdir: Path, tmp_path: Path, iris_model_dir: Path) -> None:
    """An ``abflow-serve-<pid>-…`` folder whose pid now runs another program (pid reuse) is stale too;
    a folder not named like ours is not ours to remove."""
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        reused = short_tmpdir / f"{RUNTIME_PREFIX}{sleeper.pid}-x"  # a live pid, but no abflow server
        unrelated = short_tmpdir / f"{RUNTIME_PREFIX}notapid"
        for folder in (reused, unrelated):
            folder.mkdir()
        served = start_served_graph(ab_graph_file(tmp_path, "0.5"),
                                    {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir}, tmp_path,
                                    env={"TMPDIR": str(short_tmpdir)})
        served.stop()
        assert unrelated.is_dir()
        assert not reused.exists()  # its pid runs, but not an abflow server: a reused pid
    finally:
        sleeper.kill()
        sleeper.wait()
