"""The decision on seeded outcomes: guardrails first, then enough feedback, then the anytime-valid
test, each verdict with a reason that carries its numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from savvi.linear_regression import LinearRegression

from abflow.components.decision import (
    CONTINUE,
    KEEP,
    PROMOTE,
    ArmSummary,
    Rewards,
    Rules,
    Snapshot,
    confidence_sequence,
    decide,
    mixture_phi,
    sequence_over_time,
)

DAY = 86400.0


def arm(role: str, feedback: int, ones: int, *, requests: int | None = None, errors: int = 0,
        p99: float | None = 0.010) -> ArmSummary:
    """An arm with 0/1 rewards: ``ones`` rewards of 1 among ``feedback`` (the rest are 0s)."""
    name, version = ("classifier-1", "v1") if role == "champion" else ("classifier-2", "v2")
    return ArmSummary(name, version, role, requests=feedback if requests is None else requests, errors=errors,
                      p99_seconds=p99, feedback=feedback, reward_sum=float(ones), reward_sum_squares=float(ones))


def test_a_clearly_better_challenger_is_promoted() -> None:
    decision = decide(arm("champion", 2000, 1800), arm("challenger", 2000, 1920), elapsed_seconds=DAY)
    assert decision.decision == PROMOTE
    assert decision.bounds.lower > 0
    assert decision.reason.startswith("promote classifier-2 (v2): the challenger is better")
    assert "0.9600 (n=2000) vs champion 0.9000 (n=2000)" in decision.reason
    assert "guardrails passed" in decision.reason


def test_a_clearly_worse_challenger_is_kept() -> None:
    decision = decide(arm("champion", 2000, 1900), arm("challenger", 2000, 1700), elapsed_seconds=DAY)
    assert decision.decision == KEEP
    assert decision.bounds.upper < 0
    assert decision.reason.startswith("keep classifier-1 (v1): the champion is better")
    assert "difference -0.1000" in decision.reason


def test_an_error_rate_guardrail_failure_keeps_even_a_better_challenger() -> None:
    decision = decide(arm("champion", 2000, 1800, errors=2),
                      arm("challenger", 2000, 1950, errors=60), elapsed_seconds=DAY)
    assert decision.decision == KEEP
    assert "failed the error rate guardrail: challenger 3.00% 5xx (60 of 2000 requests) against a limit of 1.10%" \
        in decision.reason
    assert [(g.name, g.passed) for g in decision.guardrails] == [("error rate", False), ("p99 latency", True)]


def test_a_p99_guardrail_failure_keeps() -> None:
    decision = decide(arm("champion", 2000, 1800, p99=0.020), arm("challenger", 2000, 1950, p99=0.050),
                      elapsed_seconds=DAY)
    assert decision.decision == KEEP
    assert ("failed the p99 latency guardrail: challenger 50.0 ms against a limit of 29.0 ms "
            "(1.2 x champion 20.0 ms + 5 ms)") in decision.reason
    # Within the ratio plus the slack, a slower challenger passes.
    assert decide(arm("champion", 2000, 1800, p99=0.020), arm("challenger", 2000, 1950, p99=0.028),
                  elapsed_seconds=DAY).decision == PROMOTE


def test_too_few_feedbacks_continue_and_say_how_many_are_missing() -> None:
    decision = decide(arm("champion", 500, 450), arm("challenger", 63, 60, requests=500), elapsed_seconds=DAY)
    assert decision.decision == CONTINUE
    assert decision.reason == ("continue: the test needs 100 feedbacks per arm; missing 37 for challenger "
                               "classifier-2 (v2) (63 so far)")


def test_too_few_feedbacks_after_the_maximum_duration_keep() -> None:
    decision = decide(arm("champion", 500, 450), arm("challenger", 63, 60, requests=500),
                      Rules(max_duration_seconds=7 * DAY), elapsed_seconds=8 * DAY)
    assert decision.decision == KEEP
    assert "maximum duration 7 d passed with too little feedback" in decision.reason


def test_the_maximum_duration_without_evidence_keeps() -> None:
    champion, challenger = arm("champion", 1000, 900), arm("challenger", 1000, 905)
    rules = Rules(max_duration_seconds=7 * DAY)
    assert decide(champion, challenger, rules, elapsed_seconds=6 * DAY).decision == CONTINUE
    decision = decide(champion, challenger, rules, elapsed_seconds=7 * DAY)
    assert decision.decision == KEEP
    assert "maximum duration 7 d passed without evidence" in decision.reason
    assert decision.bounds.lower < 0 < decision.bounds.upper


def test_pending_guardrails_block_a_promotion() -> None:
    decision = decide(arm("champion", 2000, 1800, requests=50), arm("challenger", 2000, 1920, requests=50),
                      elapsed_seconds=DAY)
    assert decision.decision == CONTINUE
    assert "guardrails are pending" in decision.reason
    assert "100 requests per arm needed, champion has 50" in decision.reason


@pytest.mark.parametrize("seed", range(10))
def test_an_aa_stream_peeked_20_times_never_promotes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rewards = rng.binomial(1, 0.9, size=(2, 4000))
    decisions = []
    for look in range(1, 21):
        n = 200 * look
        champion, challenger = (arm(role, n, int(rewards[i, :n].sum())) for i, role in
                                enumerate(("champion", "challenger")))
        decisions.append(decide(champion, challenger, elapsed_seconds=look * DAY).decision)
    assert PROMOTE not in decisions


def test_rewards_of_zero_count() -> None:
    """A Seldon client's reward of 0 is a feedback: 850 ones among 1000 is a mean of 0.85, not 1."""
    decision = decide(arm("champion", 1000, 950), arm("challenger", 1000, 850), elapsed_seconds=DAY)
    assert decision.decision == KEEP
    assert decision.challenger.mean_reward == pytest.approx(0.85)
    assert "mean reward challenger 0.8500 (n=1000) vs champion 0.9500 (n=1000)" in decision.reason
    record = decision.to_dict()
    assert [(a["role"], a["feedback"], a["mean_reward"]) for a in record["arms"]] == [
        ("champion", 1000, pytest.approx(0.95)), ("challenger", 1000, pytest.approx(0.85))]


def test_the_record_is_strict_json() -> None:
    decision = decide(arm("champion", 10, 9), arm("challenger", 10, 9), elapsed_seconds=0.0)
    record = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert record["decision"] == CONTINUE
    assert record["lower"] is None and record["upper"] is None  # nothing is known yet
    assert record["test"]["alpha"] == 0.05 and record["test"]["name"].startswith("savvi.LinearRegression")
    assert {a["name"] for a in record["arms"]} == {"classifier-1", "classifier-2"}


def test_constant_rewards_give_no_evidence_rather_than_a_crash() -> None:
    decision = decide(arm("champion", 500, 500), arm("challenger", 500, 500), elapsed_seconds=DAY)
    assert decision.decision == CONTINUE
    assert math.isinf(decision.bounds.lower) and math.isinf(decision.bounds.upper)
    assert "no reward has varied yet" in decision.reason


def test_the_sums_give_savvis_own_interval() -> None:
    """We hand savvi sufficient statistics instead of rows; its own row-by-row updates must agree."""
    rng = np.random.default_rng(11)
    champion, challenger = rng.normal(0.5, 0.3, 240), rng.normal(0.6, 0.4, 90)
    rules = Rules(tuned_for_feedback=300)
    model = LinearRegression(alpha=rules.alpha, p=2, phi=mixture_phi(rules.alpha, rules.tuned_for_feedback))
    for reward, is_challenger in [*((y, 0.0) for y in champion), *((y, 1.0) for y in challenger)]:
        model.update(np.array([reward, 1.0, is_challenger]))
    expected = model.calculate_conf_int()[1]
    bounds = confidence_sequence(Rewards(240, float(champion.sum()), float((champion ** 2).sum())),
                                 Rewards(90, float(challenger.sum()), float((challenger ** 2).sum())),
                                 alpha=rules.alpha, tuned_for_feedback=rules.tuned_for_feedback)
    assert (bounds.lower, bounds.upper) == pytest.approx(tuple(expected), rel=1e-6)
    assert bounds.difference == pytest.approx(challenger.mean() - champion.mean())


def test_the_sequence_over_time_covers_the_truth_and_narrows() -> None:
    rng = np.random.default_rng(5)
    rewards = rng.binomial(1, [[0.90], [0.95]], size=(2, 5000))
    snapshots = [Snapshot(at=hour * 3600.0,
                          champion=Rewards(n, float(rewards[0, :n].sum()), float(rewards[0, :n].sum())),
                          challenger=Rewards(n, float(rewards[1, :n].sum()), float(rewards[1, :n].sum())))
                 for hour, n in enumerate(range(0, 5001, 500))]
    points = sequence_over_time(snapshots)
    assert [p.at for p in points] == [s.at for s in snapshots]
    assert points[0].bounds.difference is None and math.isinf(points[0].bounds.lower)
    widths = [p.bounds.upper - p.bounds.lower for p in points[1:]]
    assert widths == sorted(widths, reverse=True)
    assert all(p.bounds.lower <= 0.05 <= p.bounds.upper for p in points)
    assert points[-1].bounds.lower > 0
    assert (points[-1].champion_feedback, points[-1].challenger_feedback) == (5000, 5000)


def test_rules_refuse_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="alpha must be between 0 and 1, got 5"):
        Rules(alpha=5)
    with pytest.raises(ValueError, match="min_feedback must be at least 2"):
        Rules(min_feedback=1)
    with pytest.raises(ValueError, match="max_p99_ratio >= 1"):
        Rules(max_p99_ratio=0.5)
