"""Routers choose which child of a router node serves a request, and learn from feedback.

A router only sees the decoded request and the rewards, never HTTP, so the same object routes in the
local executor and in tests, and a bandit can later replace ``RandomABTest`` without touching
the server.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from typing import Protocol

from abflow.serving.graph import RANDOM_ABTEST, GraphError, RouterNode
from abflow.serving.protocol import PredictionRequest


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
    def route(self, request: PredictionRequest) -> int: ...

    def feedback(self, arm: int, reward: float) -> None: ...

    @property
    def stats(self) -> tuple[ArmStats, ...]: ...


class RandomABTest:
    """Seldon's RANDOM_ABTEST: child 0 when ``rng.random() < ratio_a``, else child 1.

    The strict ``<`` makes the edges exact: ratio 0 never picks child 0 and ratio 1 always does.
    """

    n_arms = 2

    def __init__(self, ratio_a: float, rng: random.Random | None = None) -> None:
        if math.isnan(ratio_a) or not 0.0 <= ratio_a <= 1.0:
            raise ValueError(f"ratioA must be between 0 and 1, got {ratio_a}")
        self.ratio_a = float(ratio_a)
        self._random = (rng or random.Random()).random
        self._lock = threading.Lock()
        self._routed = [0, 0]
        self._feedback = [0, 0]
        self._reward_sum = [0.0, 0.0]

    def route(self, request: PredictionRequest) -> int:
        arm = 0 if self._random() < self.ratio_a else 1
        with self._lock:
            self._routed[arm] += 1
        return arm

    def feedback(self, arm: int, reward: float) -> None:
        if arm not in (0, 1):
            raise ValueError(f"RANDOM_ABTEST has arms 0 and 1, got feedback for arm {arm}")
        if not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward}")
        with self._lock:
            self._feedback[arm] += 1
            self._reward_sum[arm] += reward

    @property
    def stats(self) -> tuple[ArmStats, ...]:
        with self._lock:
            return tuple(ArmStats(self._routed[arm], self._feedback[arm], self._reward_sum[arm]) for arm in (0, 1))


def make_router(node: RouterNode, rng: random.Random | None = None) -> Router:
    if node.implementation == RANDOM_ABTEST:
        return RandomABTest(node.ratio_a, rng)
    raise GraphError(f"no router implements {node.implementation!r} (graph node {node.name!r})")
