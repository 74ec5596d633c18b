"""An experiment's outcomes, wherever its endpoint keeps them, and as the decision sees them.

An experiment record lists every outcome source it has had (``ledger:<path>`` for a local endpoint,
``prometheus:<url>`` for a cluster): a split moved by ``ratio_schedule`` redeploys the experiment as
a new release, and a new local release writes a new ledger. Its outcomes are the sum over all of
them, arm by arm (a ledger not written yet counts nothing). The Prometheus reader is imported only
when a record names Prometheus, so a laptop never imports an HTTP client for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from abflow.components.decision import ArmSummary
from abflow.components.experiment import LEDGER, PROMETHEUS, Experiment, ExperimentError
from abflow.serving.ledger import ArmOutcomes, read_outcomes

P99 = 0.99


def read_experiment_outcomes(experiment: Experiment, *, now: float | None = None) -> dict[str, ArmOutcomes]:
    """Every arm's outcomes in ``experiment``, by arm name, summed over all its sources. Prometheus is
    asked for the window from the experiment's start to its end (``now`` while it runs)."""
    totals: dict[str, ArmOutcomes] = {}
    for source in experiment.outcomes:
        for arm, outcomes in _read_source(experiment, source, now).items():
            totals[arm] = totals[arm].merged(outcomes) if arm in totals else outcomes
    return totals


def arm_summaries(experiment: Experiment,
                  outcomes: Mapping[str, ArmOutcomes]) -> tuple[ArmSummary, ArmSummary]:
    """(champion, challenger) as ``decision.decide`` takes them; an arm with no outcome yet counts
    zero of everything."""
    def summary(name: str, version: str, role: str) -> ArmSummary:
        arm = outcomes.get(name)
        if arm is None:
            return ArmSummary(name=name, version=version, role=role, requests=0, errors=0, p99_seconds=None,
                              feedback=0, reward_sum=0.0, reward_sum_squares=0.0)
        return ArmSummary(name=name, version=version, role=role, requests=arm.requests, errors=arm.server_errors,
                          p99_seconds=arm.latency_quantile(P99), feedback=arm.feedback, reward_sum=arm.reward_sum,
                          reward_sum_squares=arm.reward_sum_squares)

    champion, challenger = experiment.champion, experiment.challenger
    return (summary(champion.name, champion.version, champion.role),
            summary(challenger.name, challenger.version, challenger.role))


def elapsed_seconds(experiment: Experiment, *, now: float | None = None) -> float:
    """How long ``experiment`` has run: from its start to its end, or to ``now`` while it runs."""
    start, end = _window(experiment, now)
    return max(end - start, 0.0)


def _read_source(experiment: Experiment, source: str, now: float | None) -> dict[str, ArmOutcomes]:
    if source.startswith(LEDGER):
        path = Path(source[len(LEDGER):])
        # An endpoint creates its ledger when it starts; none yet is no outcome yet, and the decision
        # then says how much evidence is missing, rather than failing every run until traffic comes.
        return read_outcomes(path, experiment.id) if path.exists() else {}
    if source.startswith(PROMETHEUS):
        from abflow.components.prometheus_outcomes import read_prometheus_outcomes

        start, end = _window(experiment, now)
        return read_prometheus_outcomes(source[len(PROMETHEUS):], experiment.id,
                                        [arm.name for arm in experiment.arms], start, end)
    raise ExperimentError(f"experiment {experiment.id!r} names the outcome source {source!r}, which abflow cannot "
                          f"read: a source is {LEDGER}<path of outcomes.sqlite> or {PROMETHEUS}<Prometheus URL>; "
                          "fix the record's 'outcomes' list")


def _window(experiment: Experiment, now: float | None) -> tuple[float, float]:
    start = _unix(experiment.started_at, "started_at", experiment)
    end = _unix(experiment.ended_at, "ended_at", experiment) if experiment.ended_at else (
        time.time() if now is None else now)
    return start, end


def _unix(stamp: str, field: str, experiment: Experiment) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        raise ExperimentError(f"experiment {experiment.id!r} has {field} {stamp!r}, not an ISO 8601 time such as "
                              "2026-01-31T22:00:00+00:00; fix the record") from None
