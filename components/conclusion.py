"""The ``conclude`` step's logic: decide the running experiment of a model and act on the decision.

It is the first step of a run because what the run trains against depends on it: a promoted
challenger is the champion the new model has to beat. The actions:

- ``promote``: the challenger becomes champion (the registry's compare-and-swap on ``champion.json``),
  but only if the champion is still the one the challenger faced: promoting over a champion that
  changed meanwhile would rest on a comparison nobody made;
- ``keep``: the champion stays;
- ``continue`` (not enough evidence): with ``on_undecided="wait"`` the run stops here, successfully,
  retraining nothing, and the reason says what evidence is missing; with a ``ratio_schedule`` and
  every guardrail passed, the split first moves one step (Flagger's stepWeight pattern: more traffic
  for the challenger only once it has served some without harm). With ``on_undecided="replace"`` the
  experiment ends as ``keep`` and the run goes on to test a new challenger.

No running experiment (a first run, or the previous run deployed both arms with the same model) means
nothing to decide: the run goes on. Every decision, with its numbers, test, parameters and action,
is appended to the experiment record.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from abflow.components.decision import CONTINUE, KEEP, PROMOTE, Decision, Rules, decide
from abflow.components.experiment import (
    RUNNING,
    Experiment,
    ledger_source,
    move_traffic,
    next_ratio,
    record_decision,
    running_experiment,
    update_experiment,
)
from abflow.components.outcomes import arm_summaries, elapsed_seconds, read_experiment_outcomes
from abflow.components.registry import promote_version, read_champion
from abflow.serving.ledger import ArmOutcomes

WAIT = "wait"
REPLACE = "replace"
ON_UNDECIDED = (WAIT, REPLACE)

NOTHING = "nothing to decide"
PROMOTED = "promoted"
KEPT = "kept"
WAITING = "waiting"
MOVED = "moved traffic"
REPLACED = "replaced"
NOT_PROMOTED = "not promoted"


@dataclass(frozen=True)
class Conclusion:
    """What ``conclude`` found, decided and did. ``proceed``: whether the run goes on to train."""

    proceed: bool
    action: str
    summary: str
    experiment: Experiment | None = None
    decision: Decision | None = None
    outcomes: Mapping[str, ArmOutcomes] | None = None

    def as_metrics(self) -> dict[str, float]:
        """The numbers for KFP's ``Metrics`` (floats only; an unbounded side of the sequence is left out)."""
        metrics = {"proceed": float(self.proceed)}
        if self.decision is None:
            return {**metrics, "experiment_decided": 0.0}
        decision = self.decision
        metrics.update({
            "experiment_decided": 1.0,
            "decision_promote": float(decision.decision == PROMOTE),
            "decision_keep": float(decision.decision == KEEP),
            "decision_continue": float(decision.decision == CONTINUE),
            "alpha": decision.rules.alpha,
            "min_feedback": float(decision.rules.min_feedback),
            "elapsed_seconds": decision.elapsed_seconds,
        })
        for arm in (decision.champion, decision.challenger):
            metrics[f"{arm.role}_requests"] = float(arm.requests)
            metrics[f"{arm.role}_server_errors"] = float(arm.errors)
            metrics[f"{arm.role}_feedback"] = float(arm.feedback)
            if arm.mean_reward is not None:
                metrics[f"{arm.role}_mean_reward"] = arm.mean_reward
            if arm.p99_seconds is not None:
                metrics[f"{arm.role}_p99_seconds"] = arm.p99_seconds
        bounds = decision.bounds
        if bounds.difference is not None:
            metrics["reward_difference"] = bounds.difference
        for name, bound in (("sequence_lower", bounds.lower), ("sequence_upper", bounds.upper)):
            if math.isfinite(bound):
                metrics[name] = bound
        return metrics


def check_on_undecided(on_undecided: str) -> str:
    if on_undecided not in ON_UNDECIDED:
        raise ValueError(f"on_undecided must be {WAIT} (end the run while the experiment lacks evidence) or "
                         f"{REPLACE} (end the experiment as keep and test a new challenger), got {on_undecided!r}")
    return on_undecided


def rules_from(alpha: float, min_feedback: int, max_duration_hours: float, p99_slack_ms: float) -> Rules:
    """The decision's parameters as the pipeline takes them: ``max_duration_hours`` 0 means no limit;
    ``p99_slack_ms`` is the latency guardrail's slack (a loaded machine's tail latency is noisy)."""
    if max_duration_hours < 0:
        raise ValueError(f"max_duration_hours must be >= 0 (0: no limit), got {max_duration_hours}")
    return Rules(alpha=alpha, min_feedback=min_feedback,
                 max_duration_seconds=max_duration_hours * 3600 if max_duration_hours else None,
                 p99_slack_seconds=p99_slack_ms / 1000)


def conclude_experiment(artifact_root: str, model_name: str, *, on_undecided: str, rules: Rules, run_id: str,
                        local_state_dir: str, namespace: str = "", now: float | None = None) -> Conclusion:
    """Find the running experiment of ``model_name``, decide it with ``rules`` and act (module docstring).
    A moved split is redeployed under ``local_state_dir`` (local target) or in ``namespace`` (seldon)."""
    check_on_undecided(on_undecided)
    experiment = running_experiment(artifact_root, model_name)
    if experiment is None:
        return Conclusion(True, NOTHING, f"no running experiment of {model_name}: nothing to decide")
    if experiment.champion.version == experiment.challenger.version:
        return Conclusion(True, NOTHING, f"experiment {experiment.id} serves {experiment.champion.version} on both "
                                         "arms: not an experiment, nothing to decide")
    outcomes = read_experiment_outcomes(experiment, now=now)
    champion, challenger = arm_summaries(experiment, outcomes)
    decision = decide(champion, challenger, rules, elapsed_seconds=elapsed_seconds(experiment, now=now))
    facts = {"on_undecided": on_undecided}
    if decision.decision == PROMOTE:
        action, note = _promote(artifact_root, model_name, experiment, run_id)
        return _conclude(artifact_root, experiment, decision, outcomes, facts, action, note, run_id,
                         proceed=True, ends_it=True)
    if decision.decision == KEEP:
        return _conclude(artifact_root, experiment, decision, outcomes, facts, KEPT,
                         f"champion stays {experiment.champion.version}", run_id, proceed=True, ends_it=True)
    if on_undecided == REPLACE:
        kept = replace(decision, decision=KEEP, reason=f"keep {experiment.champion.name} "
                                                       f"({experiment.champion.version}): on_undecided=replace ends "
                                                       f"the undecided experiment; {decision.reason}")
        return _conclude(artifact_root, experiment, kept, outcomes, {**facts, "undecided": True}, REPLACED,
                         f"champion stays {experiment.champion.version}; a new challenger replaces "
                         f"{experiment.challenger.version}", run_id, proceed=True, ends_it=True)
    ratio = next_ratio(experiment)
    if ratio is None or not all(guardrail.passed for guardrail in decision.guardrails):
        why = ("" if ratio is None else
               f"; the split stays at {experiment.ratio_a:g} until every guardrail has passed")
        return _conclude(artifact_root, experiment, decision, outcomes, facts, WAITING,
                         f"the run stops here and retrains nothing{why}", run_id, proceed=False, ends_it=False)
    source, why_not = _move_split(experiment, ratio, local_state_dir, namespace)
    if source is None:
        return _conclude(artifact_root, experiment, decision, outcomes, facts, WAITING,
                         f"the run stops here and retrains nothing; {why_not}", run_id, proceed=False,
                         ends_it=False)
    return _conclude(artifact_root, experiment, decision, outcomes, {**facts, "ratio_a": ratio}, MOVED,
                     f"guardrails passed: the champion's share moves from {experiment.ratio_a:g} to {ratio:g}; "
                     "the run stops here and retrains nothing", run_id, proceed=False, ends_it=False,
                     moved_to=(ratio, source))


def _promote(artifact_root: str, model_name: str, experiment: Experiment, run_id: str) -> tuple[str, str]:
    current = read_champion(artifact_root, model_name)
    if current is not None and current.version == experiment.challenger.version:
        return PROMOTED, f"champion is already {current.version} (promoted by {current.run_id or 'an earlier run'})"
    if current is not None and current.version != experiment.champion.version:
        return NOT_PROMOTED, (f"not promoted: the champion is {current.version} now, not {experiment.champion.version} "
                              f"whom {experiment.challenger.version} faced; the experiment ends without a promotion")
    champion = promote_version(artifact_root, model_name, experiment.challenger.version, run_id=run_id)
    return PROMOTED, f"champion is now {champion.version}"


def _move_split(experiment: Experiment, ratio: float, local_state_dir: str,
                namespace: str) -> tuple[str | None, str]:
    """Redeploy the experiment's endpoint with the champion's share ``ratio``; returns where the
    outcomes of the new release are read, or ``None`` and why the split could not move."""
    if experiment.target == "seldon":
        from abflow.components.seldon_deploy import SplitNotMoved, move_split_seldon

        try:
            move_split_seldon(name=experiment.deployment_name, namespace=namespace, ratio_a=ratio,
                              experiment_id=experiment.id)
        except SplitNotMoved as why:
            return None, f"{why}; the split stays at {experiment.ratio_a:g}"
        return experiment.outcomes[-1], ""  # Prometheus, whatever the split: the same source
    from abflow.components.local_target import current_deployment, deploy_local

    state_root = Path(local_state_dir)
    current = current_deployment(state_root)
    if current is None or current.experiment_id != experiment.id:
        serving = "nothing" if current is None else f"experiment {current.experiment_id or '(none)'}"
        return None, (f"the endpoint under {state_root} serves {serving}, not experiment {experiment.id}: the split "
                      f"stays at {experiment.ratio_a:g}")
    moved = deploy_local(model_a_uri=current.model_a_uri, model_b_uri=current.model_b_uri, ratio_a=ratio,
                         state_root=state_root, port=current.port, name=current.name, host=current.host,
                         experiment_id=experiment.id)
    return ledger_source(moved.serving_state_dir), ""


def _conclude(artifact_root: str, experiment: Experiment, decision: Decision, outcomes: Mapping[str, ArmOutcomes],
              facts: dict[str, Any], action: str, note: str, run_id: str, *, proceed: bool, ends_it: bool,
              moved_to: tuple[float, str] | None = None) -> Conclusion:
    entry = {**decision.to_dict(), **facts, "action": action, "note": note}

    def change(stored: Experiment) -> Experiment:
        if moved_to is not None:
            stored = move_traffic(stored, ratio_a=moved_to[0], outcomes=moved_to[1], run_id=run_id)
        # A run that concluded it meanwhile keeps its conclusion; this decision is still on record.
        return record_decision(stored, entry, run_id=run_id, ends_it=ends_it and stored.status == RUNNING)

    recorded = update_experiment(artifact_root, experiment.model_name, experiment.id, change)
    summary = f"experiment {experiment.id}: {decision.reason}; {note}"
    return Conclusion(proceed, action, summary, recorded, decision, dict(outcomes))


def report_html(conclusion: Conclusion) -> str:
    """The step's HTML output: the experiment report for a decision, else one line saying why there
    was nothing to decide (KFP expects the output file either way)."""
    if conclusion.experiment is not None and conclusion.decision is not None:
        from abflow.components.experiment_report import render_experiment_report

        return render_experiment_report(conclusion.experiment, conclusion.outcomes or {}, conclusion.decision)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>abflow conclude</title></head>"
            f"<body><h1>abflow conclude: {html.escape(conclusion.action)}</h1>"
            f"<p>{html.escape(conclusion.summary)}</p></body></html>")
