"""The outcome ledger on a real SQLite file, written by real processes: counts add up across flushes,
writers and a SIGKILL, and another process can read them at any time."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abflow.serving import ledger as ledger_module
from abflow.serving.ledger import LATENCY_BUCKETS, LedgerError, OutcomeLedger, read_outcomes
from tests.fixtures.processes import wait_until

WRITER = """
import sys, time
from abflow.serving.ledger import OutcomeLedger

path, arm, count, flush_every, then = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
ledger = OutcomeLedger(path, flush_interval=0.1)
for i in range(count):
    ledger.record_request("exp-1", arm, 503 if i % 10 == 0 else 200, 0.001 * (i % 7))
    ledger.record_feedback("exp-1", arm, float(i % 2))
    if flush_every and i % flush_every == 0:
        ledger.flush()
print("recorded", flush=True)
if then == "wait-for-kill":
    time.sleep(600)
ledger.close()
"""


def start_writer(path: Path, arm: str, count: int, *, flush_every: int = 0,
                 then: str = "close") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), arm, str(count), str(flush_every), then],
                            stdout=subprocess.PIPE, text=True)


def test_counts_add_up(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    with OutcomeLedger(path) as ledger:
        ledger.record_request("exp-1", "a", 200, 0.002)
        ledger.record_request("exp-1", "a", 503, 0.020)
        ledger.record_request("exp-1", "a", 400, 0.001)
        ledger.flush()
        ledger.record_request("exp-1", "a", 503, 0.004)
        ledger.record_request("exp-1", "b", 200, 0.003)
        ledger.record_request("exp-2", "a", 200, 0.003)
        for reward in (1.0, 0.0, 1.0):
            ledger.record_feedback("exp-1", "a", reward)
        ledger.record_feedback("exp-1", "b", 0.0)

    arms = read_outcomes(path, "exp-1")
    assert sorted(arms) == ["a", "b"]
    a = arms["a"]
    assert a.requests == 4
    assert a.errors == {503: 2, 400: 1}
    assert a.error_rate == pytest.approx(2 / 4)  # a 400 is the caller's fault, as in Flagger
    assert sum(a.latency_counts) == 4
    assert a.cumulative_latency_counts()[-1] == 4
    assert a.latency_sum == pytest.approx(0.027)
    assert (a.feedback, a.reward_sum, a.reward_sum_squares) == (3, 2.0, 2.0)
    assert a.mean_reward == pytest.approx(2 / 3)
    assert a.reward_variance == pytest.approx(1 / 3)
    assert a.first_at <= a.last_at
    assert arms["b"].feedback == 1 and arms["b"].reward_sum == 0.0  # a reward of 0 is an observation
    assert read_outcomes(path, "exp-2")["a"].requests == 1
    assert read_outcomes(path, "exp-3") == {}


def test_a_sigkilled_writer_loses_nothing_it_flushed(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    writer = start_writer(path, "a", 5000, then="wait-for-kill")
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "recorded"
        # The writer never calls flush(): only its background flusher can put these in the file.
        wait_until(lambda: (a := read_outcomes(path, "exp-1").get("a")) is not None and a.feedback == 5000,
                   what="the background flush")
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    a = read_outcomes(path, "exp-1")["a"]
    assert (a.requests, a.feedback, a.reward_sum, a.errors) == (5000, 5000, 2500.0, {503: 500})
    # A new endpoint on the same file (a restart) adds to what the dead one left.
    with OutcomeLedger(path) as ledger:
        ledger.record_feedback("exp-1", "a", 1.0)
    assert read_outcomes(path, "exp-1")["a"].feedback == 5001


def test_two_writers_add_up(tmp_path: Path) -> None:
    """An old and a new executor of one experiment (a blue/green replace) write the same file at once."""
    path = tmp_path / "outcomes.sqlite"
    writers = [start_writer(path, arm, 3000, flush_every=50) for arm in ("a", "a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    arms = read_outcomes(path, "exp-1")
    assert (arms["a"].requests, arms["a"].feedback, arms["a"].reward_sum) == (6000, 6000, 3000.0)
    assert arms["a"].errors == {503: 600}
    assert sum(arms["a"].latency_counts) == 6000
    assert (arms["b"].requests, arms["b"].feedback) == (3000, 3000)


def test_reads_while_the_writer_runs_and_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    with OutcomeLedger(path) as ledger:
        for _ in range(5):
            ledger.record_feedback("exp-1", "a", 1.0)
        ledger.flush()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer mid-transaction: readers must not wait for it
        try:
            for _ in range(3):  # held back from the file by the other writer's lock
                ledger.record_feedback("exp-1", "a", 1.0)
            assert read_outcomes(path, "exp-1")["a"].feedback == 5  # committed only; 3 still in memory
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert read_outcomes(path, "exp-1")["a"].feedback == 8


def test_a_failed_flush_keeps_its_outcomes_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "outcomes.sqlite"
    monkeypatch.setattr(ledger_module, "BUSY_TIMEOUT_MS", 50)
    with OutcomeLedger(path, flush_interval=1) as ledger:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # before recording, so the background flusher cannot succeed either
        ledger.record_request("exp-1", "a", 200, 0.001)
        ledger.record_feedback("exp-1", "a", 1.0)
        with pytest.raises(LedgerError, match="could not write outcomes"):
            ledger.flush()
        blocker.execute("ROLLBACK")
        blocker.close()
        ledger.record_feedback("exp-1", "a", 0.0)
        ledger.flush()
    a = read_outcomes(path, "exp-1")["a"]
    assert (a.requests, a.feedback, a.reward_sum) == (1, 2, 1.0)


def test_p99_is_within_one_bucket_of_the_samples(tmp_path: Path) -> None:
    samples = np.random.default_rng(7).lognormal(mean=math.log(0.003), sigma=0.6, size=5000)
    path = tmp_path / "outcomes.sqlite"
    with OutcomeLedger(path) as ledger:
        for seconds in samples:
            ledger.record_request("exp-1", "a", 200, float(seconds))
    a = read_outcomes(path, "exp-1")["a"]
    for q in (0.5, 0.9, 0.99):
        estimate = a.latency_quantile(q)
        assert estimate is not None
        exact = float(np.percentile(samples, 100 * q))
        assert abs(bisect_left(LATENCY_BUCKETS, estimate) - bisect_left(LATENCY_BUCKETS, exact)) <= 1, (q, estimate,
                                                                                                         exact)


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outcomes.sqlite"
    previous = os.umask(0)
    try:
        with OutcomeLedger(path) as ledger:
            ledger.record_request("exp-1", "a", 200, 0.001)
            ledger.flush()
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert modes == {"outcomes.sqlite": 0o600, "outcomes.sqlite-wal": 0o600, "outcomes.sqlite-shm": 0o600}


def test_state_is_shared_by_the_processes_of_one_experiment(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.sqlite"
    with OutcomeLedger(path) as old, OutcomeLedger(path) as new:
        assert new.load_state("exp-1", "router") is None
        old.save_state("exp-1", "router", {"alpha": [3, 1], "beta": [1, 2]})
        assert new.load_state("exp-1", "router") == {"alpha": [3, 1], "beta": [1, 2]}
        new.save_state("exp-1", "router", {"alpha": [4, 1], "beta": [1, 2]})
        assert old.load_state("exp-1", "router") == {"alpha": [4, 1], "beta": [1, 2]}
        assert old.load_state("exp-2", "router") is None


def test_merged_sources_equal_one_source(tmp_path: Path) -> None:
    """An experiment whose split moved has one ledger per release; their sum is its outcomes."""
    events = [(200, 0.001, 1.0), (503, 0.2, 0.0), (200, 12.0, 1.0), (200, 100.0, 0.5)]
    first, second, both = tmp_path / "1.sqlite", tmp_path / "2.sqlite", tmp_path / "both.sqlite"
    with OutcomeLedger(first) as one, OutcomeLedger(second) as two, OutcomeLedger(both) as everything:
        for index, (status, seconds, reward) in enumerate(events):
            for ledger in (one if index % 2 else two, everything):
                ledger.record_request("exp-1", "a", status, seconds)
                ledger.record_feedback("exp-1", "a", reward)
    merged = read_outcomes(first, "exp-1")["a"].merged(read_outcomes(second, "exp-1")["a"])
    whole = read_outcomes(both, "exp-1")["a"]
    assert merged.latency_counts == whole.latency_counts
    assert (merged.requests, merged.errors, merged.feedback, merged.reward_sum) == (4, {503: 1}, 4, 2.5)
    assert merged.latency_quantile(0.99) == whole.latency_quantile(0.99) == 60.0  # +Inf: the top finite bound
    with pytest.raises(ValueError, match="arm 'b'"):
        merged.merged(replace(whole, arm="b"))


def test_refuses_what_would_poison_the_sums(tmp_path: Path) -> None:
    with OutcomeLedger(tmp_path / "outcomes.sqlite") as ledger:
        with pytest.raises(ValueError, match="finite"):
            ledger.record_feedback("exp-1", "a", math.nan)
        with pytest.raises(ValueError, match="finite"):
            ledger.record_feedback("exp-1", "a", math.inf)
        with pytest.raises(ValueError, match=">= 0"):
            ledger.record_request("exp-1", "a", 200, -0.001)
    with pytest.raises(LedgerError, match="no outcome ledger"):
        read_outcomes(tmp_path / "missing.sqlite", "exp-1")
    with pytest.raises(ValueError, match="flush_interval"):
        OutcomeLedger(tmp_path / "other.sqlite", flush_interval=5)


names = st.sampled_from(["exp-1", "exp-2"])
arms = st.sampled_from(["a", "b"])
operations = st.lists(st.one_of(
    st.tuples(st.just("request"), names, arms, st.sampled_from([200, 400, 404, 500, 503]),
              st.floats(min_value=0, max_value=120, allow_nan=False)),
    st.tuples(st.just("feedback"), names, arms, st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)),
    st.tuples(st.just("flush")),
), max_size=60)


@dataclass
class Totals:
    requests: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    latency: float = 0.0
    feedback: int = 0
    rewards: float = 0.0
    squares: float = 0.0


@settings(max_examples=60, deadline=None)
@given(operations)
def test_merged_totals_equal_the_recorded_values(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outcomes.sqlite"
        expected: dict[tuple[str, str], Totals] = {}
        with OutcomeLedger(path, flush_interval=1) as ledger:
            for kind, *args in ops:
                if kind == "flush":
                    ledger.flush()
                    continue
                experiment, arm, *values = args
                totals = expected.setdefault((experiment, arm), Totals())
                if kind == "request":
                    status, seconds = values
                    ledger.record_request(experiment, arm, status, seconds)
                    totals.requests += 1
                    totals.latency += seconds
                    if status >= 400:
                        totals.errors[status] = totals.errors.get(status, 0) + 1
                else:
                    (reward,) = values
                    ledger.record_feedback(experiment, arm, reward)
                    totals.feedback += 1
                    totals.rewards += reward
                    totals.squares += reward * reward
        for experiment in ("exp-1", "exp-2"):
            stored = read_outcomes(path, experiment)
            assert set(stored) == {arm for (e, arm) in expected if e == experiment}
            for arm, outcome in stored.items():
                totals = expected[(experiment, arm)]
                assert outcome.requests == totals.requests == sum(outcome.latency_counts)
                assert outcome.errors == totals.errors
                assert outcome.latency_sum == pytest.approx(totals.latency, rel=1e-9, abs=1e-9)
                assert outcome.feedback == totals.feedback
                assert outcome.reward_sum == pytest.approx(totals.rewards, rel=1e-9, abs=1e-6)
                assert outcome.reward_sum_squares == pytest.approx(totals.squares, rel=1e-9, abs=1e-6)
