"""``abflow traffic`` and ``abflow experiment status|decide``: watching and feeding an A/B experiment.

Heavy imports stay inside the handlers so ``abflow --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from abflow.pipelines.local_commands import DEFAULT_ENDPOINT
from abflow.pipelines.parameters import pipeline_parameters

TRAFFIC_EXAMPLES = """\
examples:
  abflow traffic --requests 3000 --feedback
  abflow traffic --url http://127.0.0.1:8100 --data flowers.csv --requests 500 --feedback --rate 50
  abflow traffic --url http://127.0.0.1:8100 --token "$TOKEN" --requests 100
"""


def add_commands(subparsers: Any) -> None:
    add_traffic_command(subparsers)


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
    print(f"{args.requests} requests in {summary.seconds:.1f}s", file=sys.stderr)
    if summary.failed:
        print("abflow traffic: some requests failed (see above); is the endpoint up? `abflow status` tells",
              file=sys.stderr)
        return 1
    return 0
