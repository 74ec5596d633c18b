"""Routers choose which child of a router node serves a request, and learn from feedback.

A router only sees the decoded request, the request's assignment unit and the rewards, never HTTP, so
the same object routes in the local executor, behind Seldon's orchestrator and in tests.

Three policies:

* ``RandomABTest`` — Seldon's RANDOM_ABTEST, a fixed split. With a ``salt`` (the experiment id) it is
  *sticky*: a request that names its unit of assignment (a user id, say) draws its "random" number
  from a salted hash of that unit instead of the generator, so the same unit lands on the same arm on
  every request, after restarts, blue/green replaces and on every replica, and the share of units
  still follows ``ratioA`` because the hash is uniform. Requests without a unit fall back to the
  generator and are counted (``fallbacks``).
* ``EpsilonGreedy`` and ``ThompsonSampling`` — bandits that move traffic towards the arm with the
  better mean reward as feedback arrives. Their whole state is the per-arm feedback count and reward
  sum that the outcome ledger already keeps, so ``restore`` from the ledger is all a restart needs.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from abflow.serving.graph import (
    DEFAULT_EPSILON,
    EPSILON_GREEDY,
    RANDOM_ABTEST,
    THOMPSON_SAMPLING,
    GraphError,
    RouterNode,
    check_ratio,
)
from abflow.serving.ledger import ArmOutcomes

_HASH_SCALE = float(2**64)


@dataclass(frozen=True)
class ArmStats:
    """What one arm has seen. A reward of 0 is an observation like any other, so it raises ``feedback``."""

    routed: int = 0
    feedback: int = 0
    reward_sum: float = 0.0

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.feedback if self.feedback else None


class Router(Protocol):
    def route(self, request: object, unit: str | None = None) -> int:
        """The child for ``request`` (Seldon's or the Open Inference Protocol's, decoded: the policies
        here look only at ``unit``)."""

    def feedback(self, arm: int, reward: float) -> None: ...

    def check_feedback(self, arm: int, reward: float) -> None:
        """Raise ``ValueError`` saying why ``feedback(arm, reward)`` would be refused, before anything is counted."""

    def restore(self, stats: Sequence[ArmStats]) -> None: ...

    @property
    def stats(self) -> tuple[ArmStats, ...]: ...


def stats_from_outcomes(outcomes: Mapping[str, ArmOutcomes], arm_names: Sequence[str]) -> tuple[ArmStats, ...]:
    """Each arm's stats, in child order, from an experiment's outcome ledger (``read_outcomes``), so a
    restarted or replaced endpoint's bandit goes on from what the experiment has learned; an arm the
    ledger has not seen yet starts from nothing."""
    stats = []
    for name in arm_names:
        seen = outcomes.get(name)
        stats.append(ArmStats(seen.requests, seen.feedback, seen.reward_sum) if seen is not None else ArmStats())
    return tuple(stats)


def unit_draw(salt: str, unit: str) -> float:
    """A number in [0, 1) fixed by ``(salt, unit)``: the same unit draws the same number everywhere.

    BLAKE2b, not Python's ``hash``: the latter is salted per process, and assignment must survive
    restarts and agree across replicas.
    """
    digest = hashlib.blake2b(unit.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / _HASH_SCALE


def pinned_arm(route_header: str | None, arm_names: Sequence[str]) -> int | None:
    """The arm a client pinned by sending back the route header a previous response carried.

    The header names the arm (Seldon v2's ``x-seldon-route`` carries ``:name:`` segments; either form
    is accepted); an unknown name pins nothing rather than failing the prediction.
    """
    if not route_header:
        return None
    for name in (part.strip() for part in route_header.strip().split(":")):
        if name in arm_names:
            return arm_names.index(name)
    return None


class _Counters:
    """Per-arm routed / feedback / reward-sum counters shared by every policy, thread-safe."""

    def __init__(self, n_arms: int) -> None:
        self.n_arms = n_arms
        self.lock = threading.Lock()
        self.routed = [0] * n_arms
        self.feedback = [0] * n_arms
        self.reward_sum = [0.0] * n_arms

    def count_route(self, arm: int) -> int:
        with self.lock:
            self.routed[arm] += 1
        return arm

    def check(self, arm: int, reward: float, policy: str) -> None:
        if not 0 <= arm < self.n_arms:
            raise ValueError(f"{policy} has arms 0 to {self.n_arms - 1}, got feedback for arm {arm}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")

    def count_feedback(self, arm: int, reward: float, policy: str) -> None:
        self.check(arm, reward, policy)
        with self.lock:
            self.feedback[arm] += 1
            self.reward_sum[arm] += reward

    def restore(self, stats: Sequence[ArmStats]) -> None:
        if len(stats) != self.n_arms:
            raise ValueError(f"cannot restore {len(stats)} arms' state into a router of {self.n_arms}")
        with self.lock:
            for arm, arm_stats in enumerate(stats):
                self.routed[arm] = arm_stats.routed
                self.feedback[arm] = arm_stats.feedback
                self.reward_sum[arm] = arm_stats.reward_sum

    def snapshot(self) -> tuple[ArmStats, ...]:
        with self.lock:
            return tuple(ArmStats(self.routed[a], self.feedback[a], self.reward_sum[a]) for a in range(self.n_arms))


class RandomABTest:
    """Seldon's RANDOM_ABTEST: child 0 when the draw is below ``ratio_a``, else child 1.

    The strict ``<`` makes the edges exact: ratio 0 never picks child 0 and ratio 1 always does.
    With ``salt``, the draw for a request carrying a unit is ``unit_draw(salt, unit)`` (sticky).
    """

    n_arms = 2

    def __init__(self, ratio_a: float, rng: random.Random | None = None, *, salt: str | None = None) -> None:
        self.ratio_a = check_ratio(ratio_a)
        self.salt = salt
        self.fallbacks = 0
        self._random = (rng or random.Random()).random
        self._counters = _Counters(2)

    def route(self, request: object, unit: str | None = None) -> int:
        if self.salt is None:
            draw = self._random()
        elif unit is not None:
            draw = unit_draw(self.salt, unit)
        else:
            draw = self._random()
            with self._counters.lock:
                self.fallbacks += 1
        return self._counters.count_route(0 if draw < self.ratio_a else 1)

    def feedback(self, arm: int, reward: float) -> None:
        self._counters.count_feedback(arm, reward, RANDOM_ABTEST)

    def check_feedback(self, arm: int, reward: float) -> None:
        self._counters.check(arm, reward, RANDOM_ABTEST)

    def restore(self, stats: Sequence[ArmStats]) -> None:
        self._counters.restore(stats)

    @property
    def stats(self) -> tuple[ArmStats, ...]:
        return self._counters.snapshot()


class EpsilonGreedy:
    """With probability ``epsilon`` a uniformly random arm, otherwise the arm with the best mean reward.

    An arm without feedback yet counts as best, so each arm is tried before the policy settles; ties
    go to the lower index (the champion, arm 0).
    """

    def __init__(self, n_arms: int = 2, epsilon: float = DEFAULT_EPSILON, rng: random.Random | None = None) -> None:
        if math.isnan(epsilon) or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be between 0 and 1, got {epsilon}")
        self.epsilon = epsilon
        self._rng = rng or random.Random()
        self._counters = _Counters(n_arms)

    def route(self, request: object, unit: str | None = None) -> int:
        counters = self._counters
        if self._rng.random() < self.epsilon:
            return counters.count_route(self._rng.randrange(counters.n_arms))
        with counters.lock:
            means = [s / n if n else math.inf for s, n in zip(counters.reward_sum, counters.feedback, strict=True)]
        return counters.count_route(means.index(max(means)))

    def feedback(self, arm: int, reward: float) -> None:
        self._counters.count_feedback(arm, reward, EPSILON_GREEDY)

    def check_feedback(self, arm: int, reward: float) -> None:
        self._counters.check(arm, reward, EPSILON_GREEDY)

    def restore(self, stats: Sequence[ArmStats]) -> None:
        self._counters.restore(stats)

    @property
    def stats(self) -> tuple[ArmStats, ...]:
        return self._counters.snapshot()


class ThompsonSampling:
    """Beta-Bernoulli Thompson sampling: draw each arm's success rate from its posterior, pick the best.

    Rewards must lie in [0, 1]; a fractional reward updates the Beta posterior fractionally
    (alpha += r, beta += 1 - r), which for 0/1 rewards is the textbook update. The prior is Beta(1, 1).
    """

    def __init__(self, n_arms: int = 2, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._counters = _Counters(n_arms)

    def route(self, request: object, unit: str | None = None) -> int:
        counters = self._counters
        with counters.lock:
            posteriors = [(1.0 + s, 1.0 + n - s) for s, n in zip(counters.reward_sum, counters.feedback, strict=True)]
        draws = [self._rng.betavariate(alpha, beta) for alpha, beta in posteriors]
        return counters.count_route(draws.index(max(draws)))

    def feedback(self, arm: int, reward: float) -> None:
        self.check_feedback(arm, reward)
        self._counters.count_feedback(arm, reward, THOMPSON_SAMPLING)

    def check_feedback(self, arm: int, reward: float) -> None:
        if not 0.0 <= reward <= 1.0:
            raise ValueError(f"Thompson sampling learns from rewards between 0 and 1, got {reward}")
        self._counters.check(arm, reward, THOMPSON_SAMPLING)

    def restore(self, stats: Sequence[ArmStats]) -> None:
        self._counters.restore(stats)

    @property
    def stats(self) -> tuple[ArmStats, ...]:
        return self._counters.snapshot()


def make_router(node: RouterNode, rng: random.Random | None = None, *, salt: str | None = None) -> Router:
    """The router a graph node names; ``salt`` (the experiment id) makes RANDOM_ABTEST sticky."""
    if node.implementation == RANDOM_ABTEST:
        return RandomABTest(node.ratio_a, rng, salt=salt)
    if node.implementation == EPSILON_GREEDY:
        return EpsilonGreedy(len(node.children), node.epsilon, rng=rng)
    if node.implementation == THOMPSON_SAMPLING:
        return ThompsonSampling(len(node.children), rng=rng)
    raise GraphError(f"no router implements {node.implementation!r} (graph node {node.name!r})")
