"""An experiment's outcomes read from real ledgers (SQLite files written by ``OutcomeLedger``), summed
over every source the record names, and turned into what the decision takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from abflow.components import prometheus_outcomes
from abflow.components.experiment import CHALLENGER, CHAMPION, Arm, Experiment, ExperimentError
from abflow.components.outcomes import arm_summaries, elapsed_seconds, read_experiment_outcomes
from abflow.serving.ledger import ArmOutcomes, LedgerError, OutcomeLedger

ARMS = (Arm("classifier-1", "v1", "file:///m/v1", CHAMPION), Arm("classifier-2", "v2", "file:///m/v2", CHALLENGER))


def experiment(*sources: str) -> Experiment:
    return Experiment(id="iris-1", model_name="iris", status="running", target="local", deployment_name="iris-ab",
                      endpoint="http://127.0.0.1:1", arms=ARMS, ratio_a=0.5, started_at="2026-01-31T22:00:00+00:00",
                      started_by="run-1", outcomes=sources)


def write_ledger(path: Path, experiment_id: str, arm: str, *, requests: int, errors: dict[int, int],
                 rewards: Sequence[float]) -> None:
    with OutcomeLedger(path) as ledger:
        for status, count in errors.items():
            for _ in range(count):
                ledger.record_request(experiment_id, arm, status, 0.2)
        for _ in range(requests - sum(errors.values())):
            ledger.record_request(experiment_id, arm, 200, 0.002)
        for reward in rewards:
            ledger.record_feedback(experiment_id, arm, reward)


def test_outcomes_of_every_ledger_the_experiment_had_are_summed_per_arm(tmp_path: Path) -> None:
    first, second = tmp_path / "r1" / "outcomes.sqlite", tmp_path / "r2" / "outcomes.sqlite"
    write_ledger(first, "iris-1", "classifier-1", requests=10, errors={500: 1}, rewards=[1, 0, 1])
    write_ledger(first, "iris-1", "classifier-2", requests=4, errors={}, rewards=[1])
    write_ledger(first, "other-experiment", "classifier-2", requests=99, errors={}, rewards=[1] * 50)
    write_ledger(second, "iris-1", "classifier-1", requests=5, errors={503: 2, 400: 1}, rewards=[0.5])

    outcomes = read_experiment_outcomes(experiment(f"ledger:{first}", f"ledger:{second}"))

    assert set(outcomes) == {"classifier-1", "classifier-2"}
    champion, challenger = outcomes["classifier-1"], outcomes["classifier-2"]
    assert (champion.requests, champion.feedback, champion.reward_sum) == (15, 4, 2.5)
    assert dict(champion.errors) == {500: 1, 503: 2, 400: 1}
    assert (challenger.requests, challenger.feedback, challenger.reward_sum) == (4, 1, 1.0)


def test_summaries_carry_versions_roles_5xx_and_p99_and_count_a_silent_arm_as_zero(tmp_path: Path) -> None:
    ledger = tmp_path / "outcomes.sqlite"
    write_ledger(ledger, "iris-1", "classifier-1", requests=200, errors={500: 3, 404: 5}, rewards=[1, 0, 1, 1])
    record = experiment(f"ledger:{ledger}")

    champion, challenger = arm_summaries(record, read_experiment_outcomes(record))

    assert (champion.name, champion.version, champion.role) == ("classifier-1", "v1", CHAMPION)
    assert (champion.requests, champion.errors, champion.feedback) == (200, 3, 4)
    assert (champion.reward_sum, champion.reward_sum_squares) == (3.0, 3.0)
    # 8 of 200 requests took 0.2 s: the 99th percentile falls among them.
    assert champion.p99_seconds is not None and 0.15 < champion.p99_seconds <= 0.2
    assert (challenger.name, challenger.version, challenger.role) == ("classifier-2", "v2", CHALLENGER)
    assert (challenger.requests, challenger.feedback, challenger.p99_seconds) == (0, 0, None)


def test_a_prometheus_source_is_asked_for_the_experiments_arms_and_window(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str, list[str], float, float]] = []

    def read_prometheus_outcomes(url: str, experiment_id: str, arms: Sequence[str], start: float,
                                 end: float) -> dict[str, ArmOutcomes]:
        asked.append((url, experiment_id, list(arms), start, end))
        return {}

    monkeypatch.setattr(prometheus_outcomes, "read_prometheus_outcomes", read_prometheus_outcomes)
    started = 1769896800.0  # 2026-01-31T22:00:00Z

    assert read_experiment_outcomes(experiment("prometheus:http://127.0.0.1:9090"), now=started + 60) == {}
    assert asked == [("http://127.0.0.1:9090", "iris-1", ["classifier-1", "classifier-2"], started, started + 60)]
    ended = replace(experiment("prometheus:http://127.0.0.1:9090"), ended_at="2026-01-31T23:00:00+00:00")
    read_experiment_outcomes(ended, now=started + 99999)
    assert asked[-1][3:] == (started, started + 3600)
    assert elapsed_seconds(ended) == 3600


def test_an_unknown_source_is_an_error_that_says_what_to_fix() -> None:
    with pytest.raises(ExperimentError, match=r"cannot read: a source is ledger:<path of outcomes.sqlite> or "
                                              r"prometheus:<Prometheus URL>"):
        read_experiment_outcomes(experiment("s3://bucket/outcomes"))


def test_a_ledger_not_written_yet_counts_nothing_and_a_broken_one_fails(tmp_path: Path) -> None:
    written = tmp_path / "r1" / "outcomes.sqlite"
    write_ledger(written, "iris-1", "classifier-1", requests=3, errors={}, rewards=[1])
    absent = tmp_path / "r2" / "outcomes.sqlite"
    outcomes = read_experiment_outcomes(experiment(f"ledger:{written}", f"ledger:{absent}"))
    assert {arm: o.requests for arm, o in outcomes.items()} == {"classifier-1": 3}
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database")
    with pytest.raises(LedgerError, match="cannot read the outcome ledger .*broken.sqlite"):
        read_experiment_outcomes(experiment(f"ledger:{broken}"))
