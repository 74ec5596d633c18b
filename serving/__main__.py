"""``python -m serving serve|status|down``: the serving commands without the pipeline package.

The serving image and detached endpoints run this entry point, so it must not import ``pipelines``
(which pulls in kfp).
"""

from __future__ import annotations

import argparse
import sys

from abflow.serving.cli import add_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving",
                                     description="Run a SeldonDeployment graph on this machine.")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
