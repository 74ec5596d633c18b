"""The evidence for the decision's statistics: simulated experiments, run by hand (not a test).

1. A/A experiments (both arms reward 1 with probability ``--p``): each is looked at ``--looks`` times,
   every ``--every`` feedbacks per arm, as a nightly schedule would. We count the experiments in which
   abflow's decision ever promoted (or ever rejected "no difference" either way), beside a naive
   fixed-horizon two-sided z-test asked at the same looks, which is what inflates. Goal: abflow's
   false-promotion rate <= alpha, with its 95 % Wilson interval.
2. Power: the champion earns ``--p``, the challenger ``--better``; looks every ``--power-every``
   feedbacks per arm up to ``--power-max``. How many feedbacks per arm until 80 % of the runs promoted.

Exits 1 when abflow's A/A rejection rate is above alpha beyond its confidence interval (the issue's
goal is <= alpha), 0 otherwise.

The random rewards are drawn with numpy, whole experiments at once; every look is judged by the real
``abflow.components.decision.decide`` (guardrails passing), so the numbers measure the code that ships.

    python bench/experiment_sim.py                      # defaults: 2000 experiments, 30 looks
    python bench/experiment_sim.py --experiments 500 --seed 3
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
from provenance import git_revision  # a sibling module, found because this runs as a script
from scipy.stats import norm

from abflow.components.decision import KEEP, PROMOTE, ArmSummary, Rules, decide


@dataclass(frozen=True)
class Stops:
    """Per experiment, the feedbacks per arm at the first look that promoted / kept on evidence
    (``inf``: never)."""

    promoted: np.ndarray
    kept: np.ndarray

    def promoted_by(self, n: float) -> np.ndarray:
        return self.promoted <= n

    def rejected_by(self, n: float) -> np.ndarray:
        return np.minimum(self.promoted, self.kept) <= n


def cumulative_successes(rng: np.random.Generator, p: float, experiments: int, looks: int, every: int) -> np.ndarray:
    """Rewards of 1 among the first ``every * (k + 1)`` feedbacks of each experiment, for each look k."""
    return rng.binomial(every, p, size=(experiments, looks)).cumsum(axis=1)


def abflow_stops(champion: np.ndarray, challenger: np.ndarray, every: int, rules: Rules) -> Stops:
    """Ask ``decide`` at every look of every experiment until it stops (a decision is final)."""
    experiments, looks = champion.shape
    promoted = np.full(experiments, np.inf)
    kept = np.full(experiments, np.inf)
    for e in range(experiments):
        for k in range(looks):
            n = every * (k + 1)
            # 0/1 rewards: the sum of squares is the sum. Guardrails see equal healthy arms.
            arms = [ArmSummary(name, "v", role, requests=n, errors=0, p99_seconds=0.01, feedback=n,
                               reward_sum=float(s), reward_sum_squares=float(s))
                    for name, role, s in (("a", "champion", champion[e, k]), ("b", "challenger", challenger[e, k]))]
            decision = decide(arms[0], arms[1], rules, elapsed_seconds=0.0).decision
            if decision == PROMOTE:
                promoted[e] = n
                break
            if decision == KEEP:
                kept[e] = n
                break
    return Stops(promoted, kept)


def naive_stops(champion: np.ndarray, challenger: np.ndarray, every: int, alpha: float) -> Stops:
    """A pooled two-proportion z-test at level ``alpha``, asked at every look as if each were the only one."""
    n = every * np.arange(1, champion.shape[1] + 1)
    pooled = (champion + challenger) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (challenger - champion) / n / se, 0.0)
    critical = norm.ppf(1 - alpha / 2)
    return Stops(_first(z > critical, n), _first(z < -critical, n))


def _first(hit: np.ndarray, n: np.ndarray) -> np.ndarray:
    looks = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), n[looks], np.inf)


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(hits: np.ndarray) -> str:
    k, n = int(hits.sum()), hits.size
    low, high = wilson(k, n)
    return f"{k}/{n} = {k / n:.2%} [{low:.2%}, {high:.2%}]"


def quantile_feedback(stops: np.ndarray, q: float) -> str:
    """The feedbacks per arm by which a share ``q`` of the runs stopped (``>`` the horizon if fewer did)."""
    value = float(np.quantile(stops, q))
    return f"{value:.0f}" if math.isfinite(value) else f"> {stops[np.isfinite(stops)].max(initial=0):.0f}"


def fixed_horizon_n(p: float, better: float, alpha: float, power: float) -> int:
    """Feedbacks per arm of a single-look two-sided z-test with this power: the usual textbook figure."""
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return math.ceil(z * z * (p * (1 - p) + better * (1 - better)) / (better - p) ** 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=2000, help="simulated experiments per scenario")
    parser.add_argument("--looks", type=int, default=30, help="looks per A/A experiment")
    parser.add_argument("--every", type=int, default=100, help="feedbacks per arm between A/A looks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=Rules.alpha)
    parser.add_argument("--tuned-for", type=int, default=Rules.tuned_for_feedback,
                        help="the decision's tuned_for_feedback (feedbacks per arm where the sequence is narrowest)")
    parser.add_argument("--p", type=float, default=0.90, help="the champion's reward probability")
    parser.add_argument("--better", type=float, default=0.95, help="the better challenger's reward probability")
    parser.add_argument("--power-every", type=int, default=50, help="feedbacks per arm between looks, power runs")
    parser.add_argument("--power-max", type=int, default=6000, help="feedbacks per arm at the last look, power runs")
    args = parser.parse_args(argv)

    rules = Rules(alpha=args.alpha, tuned_for_feedback=args.tuned_for)
    rng = np.random.default_rng(args.seed)
    started = time.monotonic()

    horizon = args.every * args.looks
    a_arm = cumulative_successes(rng, args.p, args.experiments, args.looks, args.every)
    b_arm = cumulative_successes(rng, args.p, args.experiments, args.looks, args.every)
    aa = {"abflow (anytime-valid)": abflow_stops(a_arm, b_arm, args.every, rules),
          "naive z-test at every look": naive_stops(a_arm, b_arm, args.every, args.alpha)}

    power_looks = args.power_max // args.power_every
    champion = cumulative_successes(rng, args.p, args.experiments, power_looks, args.power_every)
    challenger = cumulative_successes(rng, args.better, args.experiments, power_looks, args.power_every)
    power = {"abflow (anytime-valid)": abflow_stops(champion, challenger, args.power_every, rules),
             "naive z-test at every look": naive_stops(champion, challenger, args.power_every, args.alpha)}
    seconds = time.monotonic() - started

    print(f"## A/A: both arms p = {args.p}, {args.looks} looks every {args.every} feedbacks per arm "
          f"(up to {horizon}), alpha = {args.alpha}\n")
    print("| test | experiments that ever promoted (95 % Wilson CI) | ever rejected either way (95 % Wilson CI) |")
    print("|---|---|---|")
    for name, stops in aa.items():
        print(f"| {name} | {rate(stops.promoted_by(horizon))} | {rate(stops.rejected_by(horizon))} |")
    print(f"\n## Power: champion p = {args.p}, challenger p = {args.better}, looks every {args.power_every} "
          f"feedbacks per arm up to {args.power_max}\n")
    print("| test | promoted by the last look (95 % Wilson CI) | kept (wrong way) | feedbacks per arm: median "
          "to promote | 80 % of runs promoted by |")
    print("|---|---|---|---|---|")
    for name, stops in power.items():
        print(f"| {name} | {rate(stops.promoted_by(args.power_max))} | {int(np.isfinite(stops.kept).sum())} | "
              f"{quantile_feedback(stops.promoted, 0.5)} | {quantile_feedback(stops.promoted, 0.8)} |")
    print(f"\nFor scale: a single-look z-test needs {fixed_horizon_n(args.p, args.better, args.alpha, 0.8)} "
          f"feedbacks per arm for 80 % power, valid only if nobody looks before.")
    print(f"\nDecision: {rules}; savvi {version('savvi')}, numpy {np.__version__}")
    print(f"Command: python {shlex.join(['bench/experiment_sim.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"Revision: {git_revision(['components', 'bench'])}; {seconds:.0f} s")
    rejected = aa["abflow (anytime-valid)"].rejected_by(horizon)
    if wilson(int(rejected.sum()), rejected.size)[0] > args.alpha:
        print(f"MISSED: abflow's A/A rejection rate is above alpha = {args.alpha} beyond doubt", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
