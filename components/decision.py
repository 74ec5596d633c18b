"""The experiment's decision, as one pure function: ``promote`` the challenger, ``keep`` the champion,
or ``continue`` collecting evidence.

Order of the checks, and why:

1. Guardrails, as Flagger's request-success-rate and request-duration checks: the challenger's 5xx
   rate may exceed the champion's by at most ``max_error_rate_increase`` (absolute), and its p99
   latency may be at most ``max_p99_ratio`` times the champion's plus ``p99_slack_seconds`` (the
   slack keeps a 1 ms vs 2 ms p99 from failing a ratio). A failed guardrail keeps the champion
   whatever the rewards say: a model that errs or stalls loses. Guardrails judge only arms with
   ``min_requests`` requests; until then they are pending, and a pending guardrail blocks a promotion.
2. Enough feedback: below ``min_feedback`` per arm the test is not asked (``continue``, or ``keep``
   once ``max_duration_seconds`` passed), and the reason says how many feedbacks are missing.
3. Mean reward, with an anytime-valid two-sided test at level ``alpha`` on the difference of means
   (challenger - champion). A nightly pipeline looks at the same experiment again and again; a
   fixed-horizon test looked at 30 times promotes an A/A challenger several times more often than
   ``alpha`` (``bench/experiment_sim.py`` measures it), while a confidence sequence holds at every
   look at once. The sequence above 0 promotes, below 0 keeps; containing 0, the experiment
   continues, or is kept when the maximum duration passed without evidence.

The test comes from savvi (Safe Anytime-Valid Inference, MIT, PyPI ``savvi``):
``savvi.linear_regression.LinearRegression``, the anytime-valid t-test confidence sequence for
regression coefficients of Lindon, Ham, Tingley and Bojinov, "Anytime-valid linear models and
regression adjusted causal inference in randomized experiments" (2024). The reward regressed on an
intercept and a challenger indicator has the difference of mean rewards as its second coefficient,
with the variance unknown and estimated from the data. We compared, on Python 3.11 here:

============================  =========  ============  =========================================================
package (version, released)   licence    installs      fit for "CS on a difference of means, unknown variance"
============================  =========  ============  =========================================================
savvi 0.3.1 (2024-10)         MIT        yes (wheels)  yes: mixture t-CS of a regression coefficient; needs numpy
                                                       >= 2.1; pulls cvxpy and its solvers (~230 MB), used only
                                                       by its multinomial test, never imported here
confseq 0.0.11 (2023-01)      MIT        no            normal-mixture boundaries (Howard et al.) to build one
                                                       from; sdist only: needs cmake, a C++ compiler and Boost
                                                       headers (absent here, build fails), and declares pytest,
                                                       matplotlib and pandas as run-time dependencies
spotify-confidence 4.1.0      Apache-2   yes (~65      group-sequential tests with alpha spending over a
(2026-02)                                packages)     planned final sample size: valid for the planned looks,
                                                       not for an open-ended nightly schedule; pulls bokeh,
                                                       ipywidgets, selenium, statsmodels, pandas < 3
gbstats 0.8.0 (2024-06)       MIT        only with     exactly the asymptotic CS (Waudby-Smith et al. 2023) from
                                         numpy < 2     sums; but it pins numpy < 2 and pandas < 2, which would
                                                       downgrade the whole project
============================  =========  ============  =========================================================

savvi's estimator is fed one observation at a time; we hold per-arm sums instead (the ledger's
feedback count, reward sum and sum of squares), which are exactly the regression's sufficient
statistics (X'X, X'y, y'y), so ``_savvi_model`` sets those documented attributes and asks savvi for
the interval; ``tests/components/test_decision.py`` checks the result against savvi's own update
loop, so an upgrade that changes its internals fails a test, not a decision. The t-test pools the
two arms' variance; with 0/1 rewards equal means imply equal variances, so under the null it is
exact in form, and it is the textbook test otherwise.

``tuned_for_feedback`` is savvi's mixture scale ``phi`` said in users' terms: the feedbacks per arm
at which the sequence is narrowest (phi = n_eff / (2 log(1/alpha) + log(1 + 2 log(1/alpha))), the
optimum of the Gaussian mixture, with n_eff = n/2 for two arms of n; the same tuning GrowthBook uses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from savvi.linear_regression import LinearRegression

PROMOTE = "promote"
KEEP = "keep"
CONTINUE = "continue"

TEST_NAME = "savvi.LinearRegression anytime-valid t-test confidence sequence (Lindon et al. 2024), two-sided"
ERROR_RATE = "error rate"
P99_LATENCY = "p99 latency"


@dataclass(frozen=True)
class Rewards:
    """One arm's rewards as sums: all the test needs, and what the ledger and Prometheus keep."""

    count: int
    total: float
    total_squares: float

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class ArmSummary:
    """One arm's outcomes as the decision sees them, wherever they were read from."""

    name: str
    version: str
    role: str
    requests: int
    errors: int
    """Server errors (5xx): what the arm is to blame for."""
    p99_seconds: float | None
    feedback: int
    reward_sum: float
    reward_sum_squares: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_reward(self) -> float | None:
        return self.rewards.mean

    @property
    def rewards(self) -> Rewards:
        return Rewards(self.feedback, self.reward_sum, self.reward_sum_squares)


@dataclass(frozen=True)
class Rules:
    alpha: float = 0.05
    min_feedback: int = 100
    """Per arm, before the test is asked: below it a normal approximation of 0/1 rewards is poor."""
    min_requests: int = 100
    """Per arm, before a guardrail can fail or pass: one early 5xx must not end an experiment."""
    max_duration_seconds: float | None = None
    """After this long without evidence, keep the champion (``None``: wait for evidence forever)."""
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 1.2
    p99_slack_seconds: float = 0.005
    tuned_for_feedback: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.min_feedback < 2:
            raise ValueError(f"min_feedback must be at least 2 (the t-test estimates a variance), got "
                             f"{self.min_feedback}")
        if self.min_requests < 1:
            raise ValueError(f"min_requests must be at least 1, got {self.min_requests}")
        if self.max_duration_seconds is not None and self.max_duration_seconds <= 0:
            raise ValueError(f"max_duration_seconds must be positive (or None for no limit), got "
                             f"{self.max_duration_seconds}")
        if self.max_error_rate_increase < 0 or self.p99_slack_seconds < 0 or self.max_p99_ratio < 1:
            raise ValueError("guardrail margins must not demand the challenger beat the champion: "
                             f"max_error_rate_increase >= 0 (got {self.max_error_rate_increase}), "
                             f"max_p99_ratio >= 1 (got {self.max_p99_ratio}), "
                             f"p99_slack_seconds >= 0 (got {self.p99_slack_seconds})")
        if self.tuned_for_feedback < 2:
            raise ValueError(f"tuned_for_feedback must be at least 2, got {self.tuned_for_feedback}")


@dataclass(frozen=True)
class Bounds:
    """The confidence sequence's interval for challenger - champion mean reward at one look;
    infinite while the test has nothing to say (fewer than two rewards per arm, or none varied)."""

    difference: float | None
    lower: float
    upper: float


@dataclass(frozen=True)
class Guardrail:
    name: str
    passed: bool | None
    """``None``: pending, too few requests to judge."""
    challenger: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    champion: ArmSummary
    challenger: ArmSummary
    rules: Rules
    bounds: Bounds
    guardrails: tuple[Guardrail, ...]
    elapsed_seconds: float
    test: str = TEST_NAME

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no infinities: an unbounded side is ``None``), for the experiment record,
        ``--json`` and the KFP metrics."""
        return {
            "decision": self.decision,
            "reason": self.reason,
            "arms": [_arm_dict(self.champion), _arm_dict(self.challenger)],
            "difference": self.bounds.difference,
            "lower": _finite(self.bounds.lower),
            "upper": _finite(self.bounds.upper),
            "test": {"name": self.test, **asdict(self.rules),
                     "phi": mixture_phi(self.rules.alpha, self.rules.tuned_for_feedback)},
            "guardrails": [asdict(guardrail) for guardrail in self.guardrails],
            "elapsed_seconds": self.elapsed_seconds,
        }


@dataclass(frozen=True)
class Snapshot:
    """Cumulative rewards of both arms at one time (seconds, on whatever clock the caller uses)."""

    at: float
    champion: Rewards
    challenger: Rewards


@dataclass(frozen=True)
class SequencePoint:
    at: float
    champion_feedback: int
    challenger_feedback: int
    champion_mean: float | None
    challenger_mean: float | None
    bounds: Bounds


def decide(champion: ArmSummary, challenger: ArmSummary, rules: Rules = Rules(), *,
           elapsed_seconds: float) -> Decision:
    """Guardrails, then enough feedback, then the anytime-valid test (see the module docstring)."""
    guardrails = check_guardrails(champion, challenger, rules)
    bounds = confidence_sequence(champion.rewards, challenger.rewards, alpha=rules.alpha,
                                 tuned_for_feedback=rules.tuned_for_feedback)
    expired = rules.max_duration_seconds is not None and elapsed_seconds >= rules.max_duration_seconds

    def verdict(decision: str, reason: str) -> Decision:
        return Decision(decision, reason, champion, challenger, rules, bounds, guardrails, elapsed_seconds)

    failed = [guardrail.detail for guardrail in guardrails if guardrail.passed is False]
    if failed:
        return verdict(KEEP, f"keep {_label(champion)}: the challenger failed the {' and the '.join(failed)}")
    missing = [(arm, rules.min_feedback - arm.feedback) for arm in (challenger, champion)
               if arm.feedback < rules.min_feedback]
    if missing:
        short = " and ".join(f"{count} for {arm.role} {_label(arm)} ({arm.feedback} so far)" for arm, count in missing)
        if expired:
            return verdict(KEEP, f"keep {_label(champion)}: the maximum duration {_duration(rules)} passed with "
                                 f"too little feedback: {rules.min_feedback} per arm needed, missing {short}")
        return verdict(CONTINUE, f"continue: the test needs {rules.min_feedback} feedbacks per arm; missing {short}")
    evidence = _evidence(champion, challenger, bounds, rules.alpha)
    if bounds.upper < 0:
        return verdict(KEEP, f"keep {_label(champion)}: the champion is better: {evidence}, below 0")
    if bounds.lower > 0:
        pending = [guardrail.detail for guardrail in guardrails if guardrail.passed is None]
        if not pending:
            return verdict(PROMOTE, f"promote {_label(challenger)}: the challenger is better: {evidence}, above 0; "
                                    f"guardrails passed")
        if expired:
            return verdict(KEEP, f"keep {_label(champion)}: the maximum duration {_duration(rules)} passed before "
                                 f"the guardrails could be checked ({'; '.join(pending)}), though {evidence}")
        return verdict(CONTINUE, f"continue: {evidence}, above 0, but the guardrails are pending: "
                                 f"{'; '.join(pending)}")
    if expired:
        return verdict(KEEP, f"keep {_label(champion)}: the maximum duration {_duration(rules)} passed without "
                             f"evidence: {evidence}, contains 0")
    return verdict(CONTINUE, f"continue: no evidence yet: {evidence}, contains 0")


def check_guardrails(champion: ArmSummary, challenger: ArmSummary, rules: Rules) -> tuple[Guardrail, ...]:
    if min(champion.requests, challenger.requests) < rules.min_requests:
        pending = (f"{rules.min_requests} requests per arm needed, champion has {champion.requests}, "
                   f"challenger {challenger.requests}")
        return (Guardrail(ERROR_RATE, None, None, None, f"{ERROR_RATE} guardrail: {pending}"),
                Guardrail(P99_LATENCY, None, None, None, f"{P99_LATENCY} guardrail: {pending}"))
    error_limit = champion.error_rate + rules.max_error_rate_increase
    errors = Guardrail(
        ERROR_RATE, challenger.error_rate <= error_limit, challenger.error_rate, error_limit,
        f"{ERROR_RATE} guardrail: challenger {challenger.error_rate:.2%} 5xx ({challenger.errors} of "
        f"{challenger.requests} requests) against a limit of {error_limit:.2%} (champion "
        f"{champion.error_rate:.2%} + {rules.max_error_rate_increase:.2%})")
    if champion.p99_seconds is None or challenger.p99_seconds is None:
        latency = Guardrail(P99_LATENCY, None, challenger.p99_seconds, None,
                            f"{P99_LATENCY} guardrail: no latency histogram for "
                            f"{'the champion' if champion.p99_seconds is None else 'the challenger'}")
    else:
        p99_limit = champion.p99_seconds * rules.max_p99_ratio + rules.p99_slack_seconds
        latency = Guardrail(
            P99_LATENCY, challenger.p99_seconds <= p99_limit, challenger.p99_seconds, p99_limit,
            f"{P99_LATENCY} guardrail: challenger {challenger.p99_seconds * 1000:.1f} ms against a limit of "
            f"{p99_limit * 1000:.1f} ms ({rules.max_p99_ratio:g} x champion {champion.p99_seconds * 1000:.1f} ms "
            f"+ {rules.p99_slack_seconds * 1000:g} ms)")
    return errors, latency


def confidence_sequence(champion: Rewards, challenger: Rewards, *, alpha: float,
                        tuned_for_feedback: int) -> Bounds:
    """The anytime-valid interval for challenger - champion mean reward, from the arms' sums."""
    if champion.mean is None or challenger.mean is None:
        return Bounds(None, -math.inf, math.inf)
    difference = challenger.mean - champion.mean
    if min(champion.count, challenger.count) < 2 or _residual_squares(champion, challenger) <= 0:
        return Bounds(difference, -math.inf, math.inf)
    model = _savvi_model(champion, challenger, alpha, mixture_phi(alpha, tuned_for_feedback))
    with np.errstate(divide="ignore", invalid="ignore"):
        lower, upper = (float(bound) for bound in model.calculate_conf_int()[1])
    if math.isnan(lower) or math.isnan(upper):
        return Bounds(difference, -math.inf, math.inf)
    return Bounds(difference, lower, upper)


def sequence_over_time(snapshots: Sequence[Snapshot], *, alpha: float = Rules.alpha,
                       tuned_for_feedback: int = Rules.tuned_for_feedback) -> list[SequencePoint]:
    """The confidence sequence at each snapshot, for the report's chart: valid at every point at
    once, so a reader may look at the whole curve, not only its end."""
    return [SequencePoint(snapshot.at, snapshot.champion.count, snapshot.challenger.count, snapshot.champion.mean,
                          snapshot.challenger.mean,
                          confidence_sequence(snapshot.champion, snapshot.challenger, alpha=alpha,
                                              tuned_for_feedback=tuned_for_feedback))
            for snapshot in snapshots]


def _savvi_model(champion: Rewards, challenger: Rewards, alpha: float, phi: float) -> Any:
    """savvi's regression of reward on [1, is_challenger] in the state its row-by-row updates would
    reach on these rewards: n, X'y, y'y, the OLS coefficients and (X'X)^-1."""
    model = LinearRegression(alpha=alpha, p=2, phi=phi)
    n = champion.count + challenger.count
    xtx = np.array([[n, challenger.count], [challenger.count, challenger.count]], dtype=float)
    model.n = n
    model.yty = champion.total_squares + challenger.total_squares
    model.Xty = np.array([champion.total + challenger.total, challenger.total])
    model.covariance = np.linalg.inv(xtx)
    model.beta = model.covariance @ model.Xty
    return model


def _residual_squares(champion: Rewards, challenger: Rewards) -> float:
    return sum(arm.total_squares - arm.total * arm.total / arm.count for arm in (champion, challenger))


def mixture_phi(alpha: float, tuned_for_feedback: int) -> float:
    """savvi's ``phi`` whose sequence is narrowest at ``tuned_for_feedback`` feedbacks per arm."""
    spend = 2 * math.log(1 / alpha)
    return (tuned_for_feedback / 2) / (spend + math.log(1 + spend))


def _evidence(champion: ArmSummary, challenger: ArmSummary, bounds: Bounds, alpha: float) -> str:
    unvaried = " (no reward has varied yet, so the noise cannot be sized)" if math.isinf(bounds.lower) else ""
    return (f"mean reward challenger {_mean(challenger)} (n={challenger.feedback}) vs champion {_mean(champion)} "
            f"(n={champion.feedback}), difference {bounds.difference:+.4f}; the {1 - alpha:.0%} confidence "
            f"sequence for challenger - champion is [{bounds.lower:+.4f}, {bounds.upper:+.4f}]{unvaried}")


def _mean(arm: ArmSummary) -> str:
    return "none" if arm.mean_reward is None else f"{arm.mean_reward:.4f}"


def _label(arm: ArmSummary) -> str:
    return f"{arm.name} ({arm.version})"


def _duration(rules: Rules) -> str:
    seconds = rules.max_duration_seconds or 0.0
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _arm_dict(arm: ArmSummary) -> dict[str, Any]:
    return {**asdict(arm), "error_rate": arm.error_rate, "mean_reward": arm.mean_reward}


def _finite(bound: float) -> float | None:
    return bound if math.isfinite(bound) else None
