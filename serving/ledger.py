"""The durable outcome ledger: what each arm of an experiment did (requests, errors, latency) and
earned (feedback rewards), kept where the next pipeline run can read it.

Why SQLite (the standard library's ``sqlite3``), in WAL mode with ``synchronous=NORMAL``:

- it is a real store with transactions, so a flush of many counters lands whole or not at all, and a
  process killed mid-write leaves the last committed state, never a torn file (WAL with NORMAL syncs
  at checkpoints, not at every commit: a committed transaction survives the process being killed;
  only a power loss can take back the last commits, which an A/B ledger can afford);
- WAL lets another process read a consistent snapshot while the endpoint writes, and the file stays
  readable after the endpoint stopped or died, so ``abflow experiment status`` and ``conclude``
  need no running server;
- several writers (an old and a new executor during a blue/green replace of the same experiment)
  serialise on SQLite's write lock, wait for each other through ``busy_timeout``, and add their
  deltas with UPSERTs, so their counts sum instead of overwriting each other;
- it adds no dependency, in the serving image or anywhere else.

The serving hot path only adds to in-memory counters under a lock; a daemon thread writes the
accumulated deltas in one transaction every ``flush_interval`` seconds (0.5 by default, at most 1), so
a SIGKILL loses at most the outcomes of the last interval. Latencies go into
fixed buckets, Prometheus-style (``le`` upper bounds), enough to estimate p99 without keeping samples.

Errors are counted by HTTP status for every status >= 400; ``error_rate`` counts only 5xx, as
Flagger's request-success-rate check does: a 4xx is the caller's fault, not the arm's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

LEDGER_FILE = "outcomes.sqlite"
"""The ledger's file name in a serving state directory (``abflow serve --experiment`` writes it there,
and an experiment record's ``ledger:<serving state dir>/outcomes.sqlite`` source names it)."""
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
"""How long a flush waits for another writer's transaction: far above any flush's duration."""

LATENCY_BUCKETS: tuple[float, ...] = (
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, math.inf,
)
"""Upper bounds (``le``) of the latency buckets. Neighbours differ by at most 1.5x, so an estimated
quantile is off by less than one bucket's width; Prometheus's default buckets (2.5x apart, nothing
below 5 ms) cannot tell a 2 ms p99 from a 4 ms one."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS arm_outcomes (
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    requests INTEGER NOT NULL,
    latency_sum REAL NOT NULL,
    feedback INTEGER NOT NULL,
    reward_sum REAL NOT NULL,
    reward_sum_squares REAL NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (experiment, arm)
)""",
    """CREATE TABLE IF NOT EXISTS arm_errors (
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    status INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (experiment, arm, status)
)""",
    """CREATE TABLE IF NOT EXISTS arm_latency (
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    le REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (experiment, arm, le)
)""",
    """CREATE TABLE IF NOT EXISTS experiment_state (
    experiment TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (experiment, key)
)""",
)

_ADD_OUTCOMES = """
INSERT INTO arm_outcomes (experiment, arm, requests, latency_sum, feedback, reward_sum, reward_sum_squares,
                          first_at, last_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (experiment, arm) DO UPDATE SET
    requests = requests + excluded.requests,
    latency_sum = latency_sum + excluded.latency_sum,
    feedback = feedback + excluded.feedback,
    reward_sum = reward_sum + excluded.reward_sum,
    reward_sum_squares = reward_sum_squares + excluded.reward_sum_squares,
    first_at = min(first_at, excluded.first_at),
    last_at = max(last_at, excluded.last_at)
"""
_ADD_ERRORS = """
INSERT INTO arm_errors (experiment, arm, status, count) VALUES (?, ?, ?, ?)
ON CONFLICT (experiment, arm, status) DO UPDATE SET count = count + excluded.count
"""
_ADD_LATENCY = """
INSERT INTO arm_latency (experiment, arm, le, count) VALUES (?, ?, ?, ?)
ON CONFLICT (experiment, arm, le) DO UPDATE SET count = count + excluded.count
"""
_SAVE_STATE = """
INSERT INTO experiment_state (experiment, key, value, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (experiment, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""


class LedgerError(RuntimeError):
    """The ledger cannot be read or written; the message names the file and what to do."""


@dataclass(frozen=True)
class ArmOutcomes:
    """Everything one arm of one experiment did, as committed to the ledger."""

    experiment: str
    arm: str
    requests: int
    errors: Mapping[int, int]
    """Responses with status >= 400, by status."""
    latency_buckets: tuple[float, ...]
    """Upper bounds (``le``), ascending, the last one infinite."""
    latency_counts: tuple[int, ...]
    """Requests per bucket (not cumulative; see ``cumulative_latency_counts``)."""
    latency_sum: float
    feedback: int
    reward_sum: float
    reward_sum_squares: float
    first_at: float
    """Unix time of the first outcome recorded for this arm."""
    last_at: float

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.errors.items() if status >= 500)

    @property
    def error_rate(self) -> float:
        """5xx responses per request (0 before any request)."""
        return self.server_errors / self.requests if self.requests else 0.0

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.feedback if self.feedback else None

    @property
    def reward_variance(self) -> float | None:
        """The sample variance of the rewards (n - 1 in the denominator); ``None`` below two."""
        if self.feedback < 2:
            return None
        squares = self.reward_sum_squares - self.reward_sum * self.reward_sum / self.feedback
        return max(squares, 0.0) / (self.feedback - 1)

    def cumulative_latency_counts(self) -> tuple[int, ...]:
        """Prometheus's ``_bucket`` series: requests at or below each bound."""
        total = 0
        cumulative = []
        for count in self.latency_counts:
            total += count
            cumulative.append(total)
        return tuple(cumulative)

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile estimated as Prometheus's ``histogram_quantile`` does: linear inside
        the bucket that holds it, and the highest finite bound when it falls in the ``+Inf`` bucket."""
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile must be between 0 and 1, got {q}")
        if not self.requests:
            return None
        rank = q * self.requests
        below = 0
        lower = 0.0
        for bound, count in zip(self.latency_buckets, self.latency_counts, strict=True):
            if count and below + count >= rank:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / count
            below += count
            if not math.isinf(bound):
                lower = bound
        return lower

    def merged(self, other: ArmOutcomes) -> ArmOutcomes:
        """This arm's outcomes plus ``other``'s: one experiment whose split moved has one ledger per
        release, and its outcomes are their sum."""
        if other.arm != self.arm:
            raise ValueError(f"cannot add outcomes of arm {other.arm!r} to arm {self.arm!r}")
        errors = dict(self.errors)
        for status, count in other.errors.items():
            errors[status] = errors.get(status, 0) + count
        mine = dict(zip(self.latency_buckets, self.latency_counts, strict=True))
        theirs = dict(zip(other.latency_buckets, other.latency_counts, strict=True))
        bounds = tuple(sorted(mine.keys() | theirs.keys()))
        return ArmOutcomes(
            experiment=self.experiment, arm=self.arm, requests=self.requests + other.requests, errors=errors,
            latency_buckets=bounds, latency_counts=tuple(mine.get(b, 0) + theirs.get(b, 0) for b in bounds),
            latency_sum=self.latency_sum + other.latency_sum, feedback=self.feedback + other.feedback,
            reward_sum=self.reward_sum + other.reward_sum,
            reward_sum_squares=self.reward_sum_squares + other.reward_sum_squares,
            first_at=min(self.first_at, other.first_at), last_at=max(self.last_at, other.last_at),
        )


@dataclass
class _Delta:
    """What one arm did since the last flush."""

    first_at: float
    last_at: float
    requests: int = 0
    latency_sum: float = 0.0
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    errors: dict[int, int] = field(default_factory=dict)
    feedback: int = 0
    reward_sum: float = 0.0
    reward_sum_squares: float = 0.0

    def absorb(self, older: _Delta) -> None:
        """Take back a delta whose flush failed, so the next flush writes it."""
        self.requests += older.requests
        self.latency_sum += older.latency_sum
        self.latency_counts = [a + b for a, b in zip(self.latency_counts, older.latency_counts, strict=True)]
        for status, count in older.errors.items():
            self.errors[status] = self.errors.get(status, 0) + count
        self.feedback += older.feedback
        self.reward_sum += older.reward_sum
        self.reward_sum_squares += older.reward_sum_squares
        self.first_at = min(self.first_at, older.first_at)
        self.last_at = max(self.last_at, older.last_at)


class OutcomeLedger:
    """The writing side, one per serving process. Record calls are cheap and thread-safe; a daemon
    thread flushes every ``flush_interval`` seconds; ``close()`` (or leaving the ``with`` block)
    flushes the rest."""

    def __init__(self, path: str | os.PathLike[str], flush_interval: float = 0.5) -> None:
        if not 0 < flush_interval <= 1:
            raise ValueError(f"flush_interval must be in (0, 1] seconds so a crash loses at most a second of "
                             f"outcomes, got {flush_interval}")
        self.path = Path(path)
        _create_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with _transaction(self._db):
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise LedgerError(f"{self.path} has ledger schema {version}, this abflow writes "
                                      f"{SCHEMA_VERSION}: serve with the abflow version that created it")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as error:
            raise LedgerError(f"cannot open the outcome ledger {self.path}: {error}") from error
        self._pending: dict[tuple[str, str], _Delta] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._interval = flush_interval
        self._closing = threading.Event()
        self._closed = False
        self._flusher = threading.Thread(target=self._flush_forever, name=f"ledger-flush:{self.path.name}",
                                         daemon=True)
        self._flusher.start()

    def record_request(self, experiment: str, arm: str, status: int, latency_seconds: float) -> None:
        if not (math.isfinite(latency_seconds) and latency_seconds >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {latency_seconds}")
        bucket = bisect_left(LATENCY_BUCKETS, latency_seconds)
        now = time.time()
        with self._lock:
            delta = self._delta(experiment, arm, now)
            delta.requests += 1
            delta.latency_sum += latency_seconds
            delta.latency_counts[bucket] += 1
            if status >= 400:
                delta.errors[status] = delta.errors.get(status, 0) + 1

    def record_feedback(self, experiment: str, arm: str, reward: float) -> None:
        if not math.isfinite(reward):
            raise ValueError(f"a reward must be a finite number, got {reward}")
        now = time.time()
        with self._lock:
            delta = self._delta(experiment, arm, now)
            delta.feedback += 1
            delta.reward_sum += reward
            delta.reward_sum_squares += reward * reward

    def flush(self) -> None:
        """Write everything recorded so far in one transaction. On failure the deltas are kept for
        the next flush and the error is raised."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return
            try:
                self._write(pending)
            except sqlite3.Error as error:
                with self._lock:
                    for key, older in pending.items():
                        newer = self._pending.setdefault(key, older)
                        if newer is not older:
                            newer.absorb(older)
                raise LedgerError(f"could not write outcomes to {self.path}: {error}") from error

    def save_state(self, experiment: str, key: str, value: Any) -> None:
        """Keep a small JSON-serialisable value for ``experiment`` (e.g. a bandit router's posterior),
        written at once: state is saved rarely and must not wait for a flush."""
        text = json.dumps(value, allow_nan=False)
        with self._flush_lock, _transaction(self._db):
            self._db.execute(_SAVE_STATE, (experiment, key, text, time.time()))

    def load_state(self, experiment: str, key: str) -> Any:
        """The value last saved under ``key`` by any process, or ``None``."""
        with self._flush_lock:
            row = self._db.execute("SELECT value FROM experiment_state WHERE experiment = ? AND key = ?",
                                   (experiment, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def close(self) -> None:
        if self._closed:
            return
        self._closing.set()
        self._flusher.join()
        try:
            self.flush()
        finally:
            self._closed = True
            self._db.close()

    def __enter__(self) -> OutcomeLedger:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _delta(self, experiment: str, arm: str, now: float) -> _Delta:
        delta = self._pending.get((experiment, arm))
        if delta is None:
            delta = self._pending[(experiment, arm)] = _Delta(first_at=now, last_at=now)
        else:
            delta.last_at = now
        return delta

    def _write(self, pending: dict[tuple[str, str], _Delta]) -> None:
        outcomes: list[tuple[str, str, int, float, int, float, float, float, float]] = []
        errors: list[tuple[str, str, int, int]] = []
        latency: list[tuple[str, str, float, int]] = []
        for (experiment, arm), d in pending.items():
            outcomes.append((experiment, arm, d.requests, d.latency_sum, d.feedback, d.reward_sum,
                             d.reward_sum_squares, d.first_at, d.last_at))
            errors.extend((experiment, arm, status, count) for status, count in d.errors.items())
            latency.extend((experiment, arm, bound, count)
                           for bound, count in zip(LATENCY_BUCKETS, d.latency_counts, strict=True) if count)
        with _transaction(self._db):
            self._db.executemany(_ADD_OUTCOMES, outcomes)
            self._db.executemany(_ADD_ERRORS, errors)
            self._db.executemany(_ADD_LATENCY, latency)

    def _flush_forever(self) -> None:
        while not self._closing.wait(self._interval):
            try:
                self.flush()
            except LedgerError as error:
                log.warning("%s; keeping the outcomes in memory and retrying in %ss", error, self._interval)


def read_outcomes(path: str | os.PathLike[str], experiment: str) -> dict[str, ArmOutcomes]:
    """Every arm's committed outcomes in ``experiment``, by arm name, from one consistent snapshot.

    Opens the file read-only, so it works while an endpoint writes it and after the endpoint stopped
    or was killed (SQLite replays the committed part of the WAL); outcomes still in a live writer's
    memory appear after its next flush."""
    location = Path(path)
    if not location.is_file():
        raise LedgerError(f"no outcome ledger at {location}: has an endpoint served this experiment here?")
    try:
        db = sqlite3.connect(f"{location.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            with _transaction(db, "BEGIN"):
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version != SCHEMA_VERSION:
                    raise LedgerError(f"{location} has ledger schema {version}, this abflow reads {SCHEMA_VERSION}")
                arms = db.execute("SELECT arm, requests, latency_sum, feedback, reward_sum, reward_sum_squares, "
                                  "first_at, last_at FROM arm_outcomes WHERE experiment = ? ORDER BY arm",
                                  (experiment,)).fetchall()
                error_rows = db.execute("SELECT arm, status, count FROM arm_errors WHERE experiment = ?",
                                        (experiment,)).fetchall()
                latency_rows = db.execute("SELECT arm, le, count FROM arm_latency WHERE experiment = ?",
                                          (experiment,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error as error:
        raise LedgerError(f"cannot read the outcome ledger {location}: {error}") from error
    errors: dict[str, dict[int, int]] = {}
    for arm, status, count in error_rows:
        errors.setdefault(arm, {})[status] = count
    latency: dict[str, dict[float, int]] = {}
    for arm, bound, count in latency_rows:
        latency.setdefault(arm, {})[bound] = count
    outcomes = {}
    for arm, requests, latency_sum, feedback, reward_sum, reward_sum_squares, first_at, last_at in arms:
        counts = latency.get(arm, {})
        # Bounds a different abflow version wrote stay in place rather than being dropped.
        bounds = tuple(sorted(set(LATENCY_BUCKETS) | counts.keys()))
        outcomes[arm] = ArmOutcomes(
            experiment=experiment, arm=arm, requests=requests, errors=errors.get(arm, {}),
            latency_buckets=bounds, latency_counts=tuple(counts.get(bound, 0) for bound in bounds),
            latency_sum=latency_sum, feedback=feedback, reward_sum=reward_sum,
            reward_sum_squares=reward_sum_squares, first_at=first_at, last_at=last_at,
        )
    return outcomes


@contextmanager
def _transaction(db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error): a writer takes the write lock up
    front, so two writers queue on ``busy_timeout`` instead of failing to upgrade a read lock."""
    db.execute(begin)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _create_private(path: Path) -> None:
    """Make the folder (0700) and an empty database file (0600) ourselves, so neither is ever readable
    by other users, whatever the umask; SQLite gives the -wal and -shm files the database's mode."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
