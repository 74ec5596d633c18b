"""``abflow traffic`` and ``abflow experiment status|decide``: feeding an A/B experiment and watching it.

``status`` and ``decide`` read the experiment record from the artifact store and its outcomes from
where the record says (the local endpoint's ledger file, or Prometheus), never from the endpoint, so
they work while it is down. ``decide`` computes the decision the next run's ``conclude`` step would
take, with the same function and parameters, and changes nothing. Heavy imports stay inside the
handlers so ``abflow --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from abflow.pipelines.local_commands import DEFAULT_DATA_DIR, DEFAULT_ENDPOINT, PARAMETER_HELP
from abflow.pipelines.parameters import pipeline_parameters

if TYPE_CHECKING:
    from abflow.components.decision import Decision, Rules
    from abflow.components.experiment import Experiment
    from abflow.serving.ledger import ArmOutcomes

EXPERIMENT_EXAMPLES = """\
examples:
  abflow experiment status
  abflow experiment status --json
  abflow experiment decide --html decision.html
  abflow experiment decide --data-dir /srv/abflow --model-name iris --min-feedback 500 --json
  abflow experiment status --artifact-root gs://my-bucket/abflow --experiment iris-20260102-220000-1a2b3c
"""

TRAFFIC_EXAMPLES = """\
examples:
  abflow traffic --requests 3000 --feedback
  abflow traffic --url http://127.0.0.1:8100 --data flowers.csv --requests 500 --feedback --rate 50
  abflow traffic --url http://127.0.0.1:8100 --token "$TOKEN" --requests 100
"""


def add_commands(subparsers: Any) -> None:
    add_traffic_command(subparsers)
    add_experiment_commands(subparsers)


def add_traffic_command(subparsers: Any) -> None:
    # The data defaults are the pipeline's, read from its compiled YAML: importing the datasets module
    # here would load numpy into every `abflow --help`.
    parameters = pipeline_parameters()
    traffic = subparsers.add_parser(
        "traffic",
        help="replay labelled rows as prediction requests, with Seldon-style feedback",
        description=(
            "Send --requests predictions of labelled rows (scikit-learn's iris, or a CSV) to an endpoint.\n"
            "With --feedback, each answer's most probable class is compared with the row's label and the\n"
            "reward (1 right, 0 wrong) is posted to /api/v1.0/feedback exactly as Seldon's Python client\n"
            "posts it: request and response included, a reward of 0 sent with no 'reward' key.\n"
            "A progress bar goes to stderr, a per-arm summary to stdout; exit 1 when anything failed."
        ),
        epilog=TRAFFIC_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    traffic.add_argument("--url", default=DEFAULT_ENDPOINT, help="endpoint base URL (default: %(default)s)")
    traffic.add_argument("--token", help="OAuth bearer token, when the graph requires one")
    traffic.add_argument("--data", default=parameters["data_uri"].default, metavar="iris|PATH",
                         help="labelled rows: iris (scikit-learn's bundled copy) or a CSV path, file:// or gs:// "
                              "URI (default: %(default)s)")
    traffic.add_argument("--feature-columns", default=parameters["feature_columns"].default,
                         help="the CSV's four measurement columns (default: %(default)s)")
    traffic.add_argument("--label-column", default=parameters["label_column"].default,
                         help="the CSV's class column (default: %(default)s)")
    traffic.add_argument("--requests", type=int, required=True, metavar="N", help="number of predictions to send")
    traffic.add_argument("--feedback", action="store_true", help="send feedback (the reward) for every answer")
    traffic.add_argument("--rate", type=float, default=None, metavar="R",
                         help="at most R requests per second (default: as fast as the endpoint answers)")
    traffic.add_argument("--seed", type=int, default=0, help="seed of the order the rows are drawn in")
    traffic.set_defaults(handler=traffic_command)


def traffic_command(args: argparse.Namespace) -> int:
    from abflow.components.datasets import DataError, load_labelled_rows
    from abflow.pipelines.traffic import replay

    try:
        rows = load_labelled_rows(args.data, feature_columns=args.feature_columns, label_column=args.label_column)
        summary = replay(args.url, rows, requests=args.requests, feedback=args.feedback, rate=args.rate,
                         token=args.token, seed=args.seed)
    except (DataError, ValueError) as error:
        print(f"abflow traffic: {error}", file=sys.stderr)
        return 2
    print(summary.table())
    print(f"{summary.sent} of {args.requests} predictions sent in {summary.seconds:.1f}s", file=sys.stderr)
    if summary.failed:
        print("abflow traffic: some requests failed (see above); is the endpoint up? `abflow status` tells",
              file=sys.stderr)
        return 1
    return 0


def add_experiment_commands(subparsers: Any) -> None:
    parameters = pipeline_parameters()
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                       help="the folder `abflow run --data-dir` used; the default artifact root (default: %(default)s)")
    where.add_argument("--artifact-root", default=None,
                       help=f"{PARAMETER_HELP['artifact_root']}, as given to `abflow run` (default: <data-dir>)")
    where.add_argument("--model-name", default=parameters["model_name"].default,
                       help=f"{PARAMETER_HELP['model_name']} (default: %(default)s)")
    where.add_argument("--experiment", metavar="ID", default=None,
                       help="an experiment id (default: the running experiment, else the latest one)")
    where.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    for name, kind in (("alpha", float), ("min_feedback", int), ("max_duration_hours", float),
                       ("p99_slack_ms", float)):
        where.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=kind(parameters[name].default),
                           help=f"{PARAMETER_HELP[name]} (default: %(default)s, as `abflow run`)")

    experiment = subparsers.add_parser(
        "experiment",
        help="see the running A/B experiment and the decision its evidence supports",
        description=(
            "An experiment is one deployment of the champion (arm A) against a challenger (arm B). Its record\n"
            "is in the artifact store, its outcomes in the endpoint's ledger (read from the file, so these\n"
            "commands work while the endpoint is down) or in Prometheus on a cluster."
        ),
        epilog=EXPERIMENT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = experiment.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", parents=[where], help="the experiment's arms, traffic, feedback and rewards as a table",
        description="Show the experiment's arms (version, role, share), their requests, 5xx, p99, feedback and "
                    "mean reward, and the decision the evidence supports now. Exit 1 when there is no experiment.",
        epilog=EXPERIMENT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.set_defaults(handler=status_command)
    decide = actions.add_parser(
        "decide", parents=[where], help="the decision (promote | keep | continue) and why, without acting on it",
        description="Decide the experiment as the next run's conclude step would (guardrails, then the anytime-valid "
                    "test on mean reward), and change nothing: `abflow run` acts on it. Exit 1 when there is no "
                    "experiment.",
        epilog=EXPERIMENT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decide.add_argument("--html", type=Path, metavar="PATH", default=None,
                        help="also write the decision's HTML report (arms, traffic, the confidence sequence over "
                             "time, guardrails) to PATH")
    decide.set_defaults(handler=decide_command)


def status_command(args: argparse.Namespace) -> int:
    looked = _look(args, "status")
    if looked is None:
        return 1
    experiment, outcomes, decision = looked
    print(json.dumps(_as_json(experiment, decision), indent=2) if args.json else _status_table(experiment, decision))
    return 0


def decide_command(args: argparse.Namespace) -> int:
    looked = _look(args, "decide")
    if looked is None:
        return 1
    experiment, outcomes, decision = looked
    if args.html is not None:
        from abflow.components.experiment_report import render_experiment_report

        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_experiment_report(experiment, outcomes, decision), encoding="utf-8")
        print(f"abflow experiment decide: report in {args.html.resolve()}", file=sys.stderr)
    if args.json:
        print(json.dumps(_as_json(experiment, decision), indent=2))
        return 0
    print(decision.reason)
    for guardrail in decision.guardrails:
        verdict = "pending" if guardrail.passed is None else "passed" if guardrail.passed else "FAILED"
        print(f"  {verdict}: {guardrail.detail}")
    print(f"  test: {decision.test}")
    print("nothing was changed: the next `abflow run` decides again and acts (its conclude step)", file=sys.stderr)
    return 0


def _look(args: argparse.Namespace, command: str) -> tuple[Experiment, dict[str, ArmOutcomes], Decision] | None:
    """The experiment, its outcomes and the decision they support, or ``None`` with the reason printed."""
    from abflow.components.decision import decide
    from abflow.components.experiment import ExperimentError
    from abflow.components.outcomes import arm_summaries, elapsed_seconds, read_experiment_outcomes
    from abflow.components.prometheus_outcomes import PrometheusError
    from abflow.serving.ledger import LedgerError
    from abflow.serving.store import StoreError

    root = _artifact_root(args)
    try:
        rules = _rules(args)
        experiment = _find_experiment(root, args.model_name, args.experiment)
        if experiment is None:
            print(f"abflow experiment {command}: no experiment of model {args.model_name!r} in {root}: a run starts "
                  "one when its challenger is a different version than the champion (`abflow run` twice, the "
                  "second with other parameters); pass --artifact-root or --data-dir if the runs used another",
                  file=sys.stderr)
            return None
        outcomes = read_experiment_outcomes(experiment)
    except (ExperimentError, LedgerError, PrometheusError, StoreError, ValueError) as error:
        print(f"abflow experiment {command}: {error}", file=sys.stderr)
        return None
    champion, challenger = arm_summaries(experiment, outcomes)
    return experiment, outcomes, decide(champion, challenger, rules, elapsed_seconds=elapsed_seconds(experiment))


def _artifact_root(args: argparse.Namespace) -> str:
    """As ``abflow run`` resolves it: ``--artifact-root`` (a ``gs://`` URI or a path), else ``--data-dir``."""
    root: str = args.artifact_root or str(args.data_dir)
    return root if root.startswith("gs://") else str(Path(root).resolve())


def _rules(args: argparse.Namespace) -> Rules:
    from abflow.components.conclusion import rules_from

    return rules_from(args.alpha, args.min_feedback, args.max_duration_hours, args.p99_slack_ms)


def _find_experiment(root: str, model_name: str, experiment_id: str | None) -> Experiment | None:
    from abflow.components.experiment import list_experiments, read_experiment, running_experiment

    if experiment_id:
        return read_experiment(root, model_name, experiment_id)
    running = running_experiment(root, model_name)
    if running is not None:
        return running
    every = list_experiments(root, model_name)
    return every[-1] if every else None


def _as_json(experiment: Experiment, decision: Decision) -> dict[str, Any]:
    """``decision.to_dict()`` (``decision``, ``reason``, ``arms`` with name, version, role, requests,
    feedback, mean_reward and more) with the experiment it is about."""
    shares = {experiment.champion.name: experiment.ratio_a, experiment.challenger.name: 1 - experiment.ratio_a}
    body = decision.to_dict()
    for arm in body["arms"]:
        arm["share"] = shares.get(arm["name"])
    body["experiment"] = {key: value for key, value in experiment.to_dict().items() if key != "decisions"}
    body["experiment"]["decisions_on_record"] = len(experiment.decisions)
    return body


def _status_table(experiment: Experiment, decision: Decision) -> str:
    from abflow.components.experiment import CHAMPION

    running = experiment.status == "running"
    when = f"since {experiment.started_at}" if running else f"{experiment.started_at} to {experiment.ended_at}"
    lines = [
        f"experiment {experiment.id} of {experiment.model_name}: {experiment.status} {when} "
        f"({_duration(decision.elapsed_seconds)})"
        + (f", concluded {experiment.conclusion}" if experiment.conclusion else ""),
        f"endpoint   {experiment.endpoint} ({experiment.target}, {experiment.deployment_name})",
        f"outcomes   {', '.join(experiment.outcomes)}",
    ]
    arms = (decision.champion, decision.challenger)
    name_width = max(len("arm"), *(len(arm.name) for arm in arms))
    version_width = max(len("version"), *(len(arm.version) for arm in arms))
    lines += ["", f"{'role':<10}  {'arm':<{name_width}}  {'version':<{version_width}}  {'share':>5}  {'requests':>8}  "
                  f"{'5xx':>5}  {'p99':>9}  {'feedback':>8}  {'mean reward':>11}"]
    for arm in arms:
        share = experiment.ratio_a if arm.role == CHAMPION else 1 - experiment.ratio_a
        p99 = "-" if arm.p99_seconds is None else f"{arm.p99_seconds * 1000:.1f} ms"
        mean = "-" if arm.mean_reward is None else f"{arm.mean_reward:.4f}"
        lines.append(f"{arm.role:<10}  {arm.name:<{name_width}}  {arm.version:<{version_width}}  {share:>5.0%}  "
                     f"{arm.requests:>8}  {arm.errors:>5}  {p99:>9}  {arm.feedback:>8}  {mean:>11}")
    lines += ["", f"decision now: {decision.reason}"]
    if experiment.decisions:
        last = experiment.decisions[-1]
        lines.append(f"last recorded: {last.get('decision')} at {last.get('at')} by {last.get('by')} "
                     f"({len(experiment.decisions)} on record)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
