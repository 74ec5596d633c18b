"""RANDOM_ABTEST's split, its exact edges, and feedback counting."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, kstest

from abflow.serving.graph import GraphError, ModelNode, RouterNode
from abflow.serving.ledger import ArmOutcomes
from abflow.serving.protocol import PredictionRequest
from abflow.serving.routers import (
    ArmStats,
    EpsilonGreedy,
    RandomABTest,
    Router,
    ThompsonSampling,
    make_router,
    pinned_arm,
    stats_from_outcomes,
    unit_draw,
)

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
    with pytest.raises(GraphError, match="no router implements 'UCB1' \\(graph node 'split'\\)"):
        make_router(RouterNode("split", "UCB1", 0.5, arms()))


@pytest.mark.parametrize(
    ("implementation", "policy"), [("EPSILON_GREEDY", EpsilonGreedy), ("THOMPSON_SAMPLING", ThompsonSampling)]
)
def test_make_router_builds_the_bandits(implementation: str, policy: type) -> None:
    router = make_router(RouterNode("split", implementation, 0.5, arms()), random.Random(3))
    assert isinstance(router, policy) and len(router.stats) == 2


# --- sticky assignment ---------------------------------------------------------------------------

units = st.text(min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(units, st.floats(min_value=0.0, max_value=1.0), seeds, seeds)
def test_a_unit_gets_the_same_arm_from_any_router_with_the_same_salt(
    unit: str, ratio: float, seed_a: int, seed_b: int
) -> None:
    """Two routers with different generators stand for two replicas, or one before and after a restart."""
    first = RandomABTest(ratio, random.Random(seed_a), salt="experiment-7")
    second = RandomABTest(ratio, random.Random(seed_b), salt="experiment-7")
    assert {first.route(REQUEST, unit) for _ in range(5)} == {second.route(REQUEST, unit)}
    assert first.fallbacks == 0


def test_the_share_of_units_follows_ratio_a() -> None:
    router = RandomABTest(0.3, random.Random(0), salt="experiment-7")
    users = 5000
    arm_zero = sum(router.route(REQUEST, f"user-{i}") == 0 for i in range(users))
    assert binomtest(arm_zero, users, 0.3).pvalue >= 0.001


def test_the_salt_decides_the_assignment() -> None:
    users = [f"user-{i}" for i in range(400)]
    one = [RandomABTest(0.5, salt="experiment-1").route(REQUEST, u) for u in users]
    other = [RandomABTest(0.5, salt="experiment-2").route(REQUEST, u) for u in users]
    assert one != other, "a new experiment must reshuffle who sees which arm"


def test_requests_without_a_unit_fall_back_to_the_random_split_and_are_counted() -> None:
    router = RandomABTest(0.5, random.Random(4), salt="experiment-7")
    arms_seen = {router.route(REQUEST) for _ in range(100)}
    assert arms_seen == {0, 1} and router.fallbacks == 100


def test_unit_draw_is_uniform_in_the_unit_interval() -> None:
    draws = np.array([unit_draw("s", str(i)) for i in range(20000)])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert kstest(draws, "uniform").pvalue >= 0.001


@pytest.mark.parametrize(
    ("header", "expected"),
    [("classifier-2", 1), (":classifier-1:", 0), ("nope", None), (None, None), ("", None), (" :classifier-2: ", 1)],
)
def test_a_client_is_pinned_by_the_route_header_it_sends_back(header: str | None, expected: int | None) -> None:
    assert pinned_arm(header, ("classifier-1", "classifier-2")) == expected


# --- bandits -------------------------------------------------------------------------------------


def simulate(router: Router, rates: tuple[float, float], steps: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(steps):
        arm = router.route(REQUEST)
        router.feedback(arm, float(rng.random() < rates[arm]))
        chosen.append(arm)
    return chosen


@pytest.mark.parametrize(
    "make", [lambda: EpsilonGreedy(epsilon=0.1, rng=random.Random(5)), lambda: ThompsonSampling(rng=random.Random(5))]
)
def test_a_bandit_sends_most_late_traffic_to_the_better_arm(make: Callable[[], Router]) -> None:
    chosen = simulate(make(), (0.5, 0.8), 3000, seed=11)
    assert chosen[-1000:].count(1) > 800


@pytest.mark.parametrize(
    "make", [lambda: EpsilonGreedy(rng=random.Random(5)), lambda: ThompsonSampling(rng=random.Random(5))]
)
def test_zero_rewards_count_as_feedback(make: Callable[[], Router]) -> None:
    router = make()
    router.feedback(0, 0.0)
    router.feedback(0, 0.0)
    assert router.stats[0] == ArmStats(routed=0, feedback=2, reward_sum=0.0)


def test_a_restored_bandit_remembers_what_it_learned() -> None:
    learned = ThompsonSampling(rng=random.Random(1))
    simulate(learned, (0.2, 0.9), 500, seed=3)
    restarted = ThompsonSampling(rng=random.Random(2))
    restarted.restore(learned.stats)
    assert restarted.stats == learned.stats
    assert [restarted.route(REQUEST) for _ in range(200)].count(1) > 180


def test_thompson_refuses_rewards_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="between 0 and 1, got 2.0"):
        ThompsonSampling().feedback(0, 2.0)


def test_restoring_the_wrong_number_of_arms_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot restore 1 arms"):
        EpsilonGreedy().restore([ArmStats()])


def test_epsilon_greedy_tries_every_arm_before_settling() -> None:
    router = EpsilonGreedy(epsilon=0.0, rng=random.Random(0))
    first = router.route(REQUEST)
    router.feedback(first, 0.0)
    assert router.route(REQUEST) != first


# --- what mutation testing found unasserted ----------------------------------------------------------


def test_a_fresh_router_has_seen_nothing_on_each_of_its_two_arms() -> None:
    assert ArmStats() == ArmStats(routed=0, feedback=0, reward_sum=0.0)
    assert ArmStats().mean_reward is None and ArmStats(routed=3, feedback=2, reward_sum=1.0).mean_reward == 0.5
    assert RandomABTest(0.5).stats == (ArmStats(), ArmStats())


def test_stats_from_outcomes_take_the_ledgers_numbers_and_start_an_unseen_arm_from_nothing() -> None:
    seen = ArmOutcomes(experiment="e", arm="classifier-2", requests=40, errors={}, latency_buckets=(math.inf,),
                       latency_counts=(40,), latency_sum=0.4, feedback=30, reward_sum=21.0, reward_sum_squares=21.0,
                       first_at=1.0, last_at=2.0)
    assert stats_from_outcomes({"classifier-2": seen}, ["classifier-1", "classifier-2"]) == (
        ArmStats(), ArmStats(routed=40, feedback=30, reward_sum=21.0))


def test_a_salt_longer_than_blake2bs_key_is_cut_to_its_first_64_bytes() -> None:
    long_salt = "x" * 64 + "anything after the 64th byte"
    assert unit_draw(long_salt, "user-1") == unit_draw("x" * 64, "user-1")


def test_refused_feedback_says_which_arms_exist_and_why() -> None:
    router = RandomABTest(0.5)
    with pytest.raises(ValueError, match=r"^RANDOM_ABTEST has arms 0 to 1, got feedback for arm 2$"):
        router.feedback(2, 1.0)
    with pytest.raises(ValueError, match=r"^reward must be a finite number, got nan$"):
        router.feedback(0, math.nan)
    with pytest.raises(ValueError, match=r"^cannot restore 3 arms' state into a router of 2$"):
        router.restore([ArmStats()] * 3)
