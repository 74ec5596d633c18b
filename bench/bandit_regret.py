"""Cumulative regret of abflow's routers on simulated arms with known reward rates, run by hand (not a test).

Each scenario is two arms with Bernoulli rewards at known rates. Every router faces the same traffic:
for each run, the reward each arm *would* give at each step is drawn once (seeded), and every
router's choice at step t is paid with that draw, so the routers differ only in what they chose.
Regret at step t is the best rate minus the rate of the arm chosen (expected regret, which has less
noise than realised regret); the table reports its sum over the horizon, mean and standard deviation
over the runs, and the share of the last 10 % of traffic on the better arm.

The routers are abflow's own (``abflow.serving.routers``), learning from feedback as the executor and
the router server feed them, so the numbers measure the code that ships; RANDOM_ABTEST at ratioA 0.5
is the baseline a fixed A/B test pays.

    python bench/bandit_regret.py                       # defaults: 20 runs of 10 000 requests each
    python bench/bandit_regret.py --runs 50 --horizon 20000 --seed 3
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from collections.abc import Callable

import numpy as np
from provenance import git_revision  # a sibling module, found because this runs as a script

from abflow.serving.protocol import PredictionRequest
from abflow.serving.routers import EpsilonGreedy, RandomABTest, Router, ThompsonSampling

SCENARIOS: tuple[tuple[float, float], ...] = ((0.5, 0.5), (0.5, 0.55), (0.5, 0.6), (0.3, 0.7), (0.05, 0.08))
REQUEST = PredictionRequest(features=np.zeros((1, 4)), encoding="tensor")
ROUTERS: dict[str, Callable[[random.Random], Router]] = {
    "RANDOM_ABTEST (0.5)": lambda rng: RandomABTest(0.5, rng),
    "EPSILON_GREEDY (0.1)": lambda rng: EpsilonGreedy(epsilon=0.1, rng=rng),
    "THOMPSON_SAMPLING": lambda rng: ThompsonSampling(rng=rng),
}


def run_once(make: Callable[[random.Random], Router], rates: tuple[float, float], rewards: np.ndarray,
             seed: int) -> tuple[float, float]:
    """One router over one traffic: its cumulative expected regret and its late share on the better arm."""
    router = make(random.Random(seed))
    best = max(rates)
    better = rates.index(best)
    horizon = rewards.shape[0]
    chosen = np.empty(horizon, dtype=np.int8)
    for t in range(horizon):
        arm = router.route(REQUEST)
        router.feedback(arm, float(rewards[t, arm]))
        chosen[t] = arm
    regret = float(np.sum(best - np.asarray(rates)[chosen]))
    late = chosen[-max(1, horizon // 10):]
    return regret, float(np.mean(late == better))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="simulated runs per scenario (default 20)")
    parser.add_argument("--horizon", type=int, default=10_000, help="requests per run (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the rewards and the routers (default 1)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"`python bench/bandit_regret.py {shlex.join(argv if argv is not None else sys.argv[1:])}` "
          f"at {git_revision(['serving', 'bench'])}: {args.runs} runs x {args.horizon} requests per scenario, "
          f"seed {args.seed}\n")
    print("| arms' reward rates | router | cumulative regret (mean ± sd) | vs RANDOM_ABTEST | "
          "last 10 % on the better arm |")
    print("|---|---|---|---|---|")
    for scenario, rates in enumerate(SCENARIOS):
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ROUTERS}
        for run in range(args.runs):
            rng = np.random.default_rng([args.seed, scenario, run])
            rewards = (rng.random((args.horizon, 2)) < np.asarray(rates)).astype(np.float64)
            for name, make in ROUTERS.items():
                results[name].append(run_once(make, rates, rewards, seed=args.seed * 1_000_003 + run))
        baseline = float(np.mean([regret for regret, _ in results["RANDOM_ABTEST (0.5)"]]))
        for name, outcomes in results.items():
            regrets = np.array([regret for regret, _ in outcomes])
            share = f"{np.mean([late for _, late in outcomes]):.0%}" if rates[0] != rates[1] else "—"
            ratio = f"{regrets.mean() / baseline:.2g}x" if baseline > 0 else "n/a (no better arm)"
            print(f"| {rates[0]:g} / {rates[1]:g} | {name} | {regrets.mean():.1f} ± {regrets.std(ddof=1):.1f} | "
                  f"{ratio} | {share} |")
    print(f"\n{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
