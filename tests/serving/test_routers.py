"""RANDOM_ABTEST's split, its exact edges, and feedback counting."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from abflow.serving.graph import GraphError, ModelNode, RouterNode
from abflow.serving.protocol import PredictionRequest
from abflow.serving.routers import ArmStats, RandomABTest, make_router

REQUEST = PredictionRequest(features=np.zeros((1, 4)), encoding="tensor")
ratios = st.floats(min_value=0.0, max_value=1.0)
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=200, deadline=None)
@given(ratios, seeds)
def test_route_always_picks_one_of_the_two_children(ratio: float, seed: int) -> None:
    router = RandomABTest(ratio, random.Random(seed))
    arms = [router.route(REQUEST) for _ in range(50)]
    assert set(arms) <= {0, 1}
    assert [s.routed for s in router.stats] == [arms.count(0), arms.count(1)]


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_ratio_zero_and_one_are_deterministic(seed: int) -> None:
    never_a = RandomABTest(0.0, random.Random(seed))
    always_a = RandomABTest(1.0, random.Random(seed))
    assert {never_a.route(REQUEST) for _ in range(200)} == {1}
    assert {always_a.route(REQUEST) for _ in range(200)} == {0}


class Fixed(random.Random):
    """An rng that returns one value, to pin the comparison at the boundary."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_child_zero_only_when_the_draw_is_strictly_below_ratio() -> None:
    assert RandomABTest(0.5, Fixed(0.4999)).route(REQUEST) == 0
    assert RandomABTest(0.5, Fixed(0.5)).route(REQUEST) == 1
    assert RandomABTest(0.0, Fixed(0.0)).route(REQUEST) == 1


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.floats(min_value=0.05, max_value=0.95), seeds)
def test_share_of_arm_zero_matches_ratio(ratio: float, seed: int) -> None:
    router = RandomABTest(ratio, random.Random(seed))
    routes = 2000
    arm_zero = sum(router.route(REQUEST) == 0 for _ in range(routes))
    assert binomtest(arm_zero, routes, ratio).pvalue >= 0.001


def test_feedback_is_counted_per_arm_and_zero_rewards_count() -> None:
    router = RandomABTest(0.5, random.Random(1))
    router.feedback(0, 1.0)
    router.feedback(0, 0.0)
    router.feedback(1, 0.0)
    router.feedback(1, 0.5)
    router.feedback(1, -0.25)
    assert router.stats == (
        ArmStats(routed=0, feedback=2, reward_sum=1.0),
        ArmStats(routed=0, feedback=3, reward_sum=0.25),
    )
    assert router.stats[0].mean_reward == 0.5
    assert ArmStats().mean_reward is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.floats(-1e6, 1e6)), max_size=40))
def test_feedback_totals_add_up(events: list[tuple[int, float]]) -> None:
    router = RandomABTest(0.5)
    for arm, reward in events:
        router.feedback(arm, reward)
    for arm, stats in enumerate(router.stats):
        rewards = [reward for a, reward in events if a == arm]
        assert stats.feedback == len(rewards)
        assert math.isclose(stats.reward_sum, math.fsum(rewards), abs_tol=1e-6)


def test_stats_are_a_frozen_snapshot() -> None:
    router = RandomABTest(1.0)
    before = router.stats
    router.route(REQUEST)
    assert before[0].routed == 0 and router.stats[0].routed == 1
    with pytest.raises(AttributeError):
        before[0].routed = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("arm", "reward", "message"), [(2, 1.0, "arm 2"), (-1, 1.0, "arm -1"), (0, math.nan, "finite")]
)
def test_feedback_for_a_missing_arm_or_a_non_finite_reward_is_refused(arm: int, reward: float, message: str) -> None:
    router = RandomABTest(0.5)
    with pytest.raises(ValueError, match=message):
        router.feedback(arm, reward)
    assert all(s.feedback == 0 for s in router.stats)


@pytest.mark.parametrize("ratio", [-0.1, 1.1, math.nan])
def test_an_impossible_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratioA must be between 0 and 1"):
        RandomABTest(ratio)


def arms() -> tuple[ModelNode, ModelNode]:
    return (ModelNode("a", None, None, None), ModelNode("b", None, None, None))


def test_make_router_builds_the_graph_nodes_router() -> None:
    router = make_router(RouterNode("split", "RANDOM_ABTEST", 1.0, arms()), random.Random(3))
    assert isinstance(router, RandomABTest) and router.ratio_a == 1.0
    assert router.route(REQUEST) == 0


def test_make_router_refuses_an_implementation_it_does_not_have() -> None:
    with pytest.raises(GraphError, match="no router implements 'EPSILON_GREEDY' \\(graph node 'split'\\)"):
        make_router(RouterNode("split", "EPSILON_GREEDY", 0.5, arms()))
