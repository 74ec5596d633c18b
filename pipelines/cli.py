"""The ``abflow`` command line: one parser, subcommands contributed by the modules that own them.

Each module in ``COMMAND_MODULES`` exposes ``add_commands(subparsers)`` and sets a ``handler`` default
on each parser it adds; heavy imports stay inside the handlers so ``abflow --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "abflow.pipelines.local_commands",
    "abflow.pipelines.experiment_commands",
    "abflow.pipelines.cluster_commands",
    "abflow.serving.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abflow",
        description=(
            "Train an sklearn iris classifier, store it, build its serving image, deploy it behind a "
            "Seldon-style A/B router and smoke-test it: one Kubeflow Pipelines v2 DAG, run locally "
            "or on a cluster."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
