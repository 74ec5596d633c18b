"""``abflow serve | status | down``: run a SeldonDeployment graph on this machine.

Heavy imports (numpy, aiohttp, sklearn) stay inside the handlers so ``abflow --help`` stays instant
and so ``status``/``down`` never pay for a model runtime they do not use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from abflow.serving.artifact import ALLOW_UNVERIFIED_ENV, ALLOW_UNVERIFIED_FLAG, allow_unverified_from_env
from abflow.serving.graph import UNIT_ENV
from abflow.serving.limits import add_limit_arguments, export_limits

DEFAULT_STATE_DIR = Path("abflow-data") / "serving"
STATE_DIR_ENV = "ABFLOW_STATE_DIR"
EXPERIMENT_ENV = "ABFLOW_EXPERIMENT"
"""The fallback of ``abflow serve --experiment``."""

SERVE_EXAMPLES = """\
examples:
  # the tutorial's A/B graph, both arms serving the same model folder
  abflow serve ab_test.json --model classifier-1=models/iris/v1 --model classifier-2=models/iris/v2

  # the tutorial's single-model graph on another port, reachable from other hosts
  abflow serve TMPL_deployment.json --model sklearn-iris-classifier=models/iris/v1 \\
      --host 0.0.0.0 --port 9000

  # in the background (what the pipeline's local deploy step does); then status / down
  abflow serve ab_test.json --model classifier-1=m1 --model classifier-2=m2 --detach
  abflow status
  abflow down

  # then, from another shell
  curl -s localhost:8000/api/v1.0/predictions -H 'Content-Type: application/json' \\
      -d '{"data":{"tensor":{"shape":[1,4],"values":[5.1,3.5,1.4,0.2]}}}'
"""


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=None, metavar="DIR",
        help=f"where a detached endpoint records its pid, URL and log (default: ${STATE_DIR_ENV} "
             f"or ./{DEFAULT_STATE_DIR}); e.g. --state-dir /tmp/abflow-serving",
    )


def add_commands(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run a SeldonDeployment graph (model servers + A/B router) on this machine",
        description=(
            "Run the graph of a SeldonDeployment (JSON or YAML, e.g. the tutorial's ab_test.json,\n"
            "unchanged): one model-server process per MODEL node and an executor in front that\n"
            "speaks the Seldon REST protocol, routes RANDOM_ABTEST traffic and reports the chosen\n"
            "arm in meta.routing. Runs in the foreground until Ctrl-C/SIGTERM, which drains\n"
            "in-flight requests and stops the model servers. Progress goes to stderr."
        ),
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("graph", type=Path, metavar="GRAPH",
                       help="SeldonDeployment file (.json, .yaml or .yml), e.g. ab_test.json")
    serve.add_argument(
        "--model", action="append", default=[], metavar="NODE=URI",
        help="model for a MODEL node: a version folder with model.joblib + metadata.json (as the store "
             "step writes it), file://... or gs://...; repeat per node, e.g. --model classifier-1=models/iris/v3. "
             "Nodes with implementation SKLEARN_SERVER may use their own modelUri instead",
    )
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000,
                       help="executor port (default 8000), the graph's only port: its model servers listen "
                            "on unix sockets")
    serve.add_argument("--detach", action="store_true",
                       help="start in the background, wait until ready, record it in --state-dir, exit")
    serve.add_argument("--ready-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="with --detach: how long to wait for /ready (default 30)")
    serve.add_argument(ALLOW_UNVERIFIED_FLAG, action="store_true", default=allow_unverified_from_env(),
                       help="also serve models that no metadata.json vouches for (a bare .joblib, or unsigned "
                            "metadata while ABFLOW_MODEL_SIGNING_KEY is set); a pickle runs code, so only for "
                            f"files you trust; warned about on every start (default: ${ALLOW_UNVERIFIED_ENV}=1)")
    serve.add_argument("--unit", default=os.environ.get(UNIT_ENV) or None, metavar="header:NAME|tag:KEY",
                       help="make the A/B split sticky: the same value of this request header or meta.tags key "
                            "always gets the same arm (a salted hash; requests without it are split at random "
                            "and counted in /metrics); overrides the router's unit parameter, e.g. "
                            f"--unit header:X-User-Id (default: ${UNIT_ENV})")
    serve.add_argument("--experiment", default=os.environ.get(EXPERIMENT_ENV) or None, metavar="ID",
                       help="the experiment this endpoint serves: every prediction's status, latency and arm and "
                            "every feedback is recorded in the durable ledger <state dir>/outcomes.sqlite (what "
                            "abflow experiment status and the pipeline's conclude step read) "
                            f"(default: ${EXPERIMENT_ENV})")
    serve.add_argument("--ready-file", type=Path, default=None, help=argparse.SUPPRESS)
    _add_state_dir(serve)
    add_limit_arguments(serve)
    serve.set_defaults(handler=_serve)

    status = subparsers.add_parser(
        "status", help="show the detached endpoint recorded in the state dir",
        description="Show the detached endpoint: its URL, release, since when it runs, and each arm's model "
                    "version, role (A gets ratioA of the traffic), state and traffic. Exit 0 when it is running, "
                    "1 otherwise. Example: abflow status; abflow status --json for scripts",
    )
    _add_state_dir(status)
    status.add_argument("--json", action="store_true",
                        help="print the raw record as JSON: pid, URL, models, per-arm health")
    status.set_defaults(handler=_status)

    down = subparsers.add_parser(
        "down", help="stop the detached endpoint recorded in the state dir",
        description="Stop the detached endpoint (SIGTERM, then SIGKILL after a grace period) and wait "
                    "until its port is free. Example: abflow down --state-dir /tmp/abflow-serving",
    )
    _add_state_dir(down)
    down.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                      help="grace period before SIGKILL (default 10)")
    down.set_defaults(handler=_down)


def _models(options: list[str]) -> dict[str, str]:
    from abflow.serving.graph import parse_model_option

    models: dict[str, str] = {}
    for option in options:
        node, uri = parse_model_option(option)
        models[node] = uri
    return models


def _serve(args: argparse.Namespace) -> int:
    from abflow.serving.graph import GraphError
    from abflow.serving.ledger import LedgerError

    export_limits(args)  # the serving process, detached or not, reads them as ABFLOW_<NAME>
    if args.unit:
        os.environ[UNIT_ENV] = args.unit
    try:
        models = _models(args.model)
        if args.detach:
            from abflow.serving.daemon import DetachError, start_detached

            state_dir = args.state_dir or default_state_dir()
            try:
                info = start_detached(args.graph, models, host=args.host, port=args.port,
                                      state_dir=state_dir, ready_timeout=args.ready_timeout,
                                      allow_unverified=args.allow_unverified_model, experiment=args.experiment)
            except DetachError as exc:
                print(f"abflow serve: {exc}", file=sys.stderr)
                return 1
            print(f"abflow serve: running in the background at {info.url} (pid {info.pid}); "
                  f"log {info.log_path}; stop it with: abflow down --state-dir {state_dir}",
                  file=sys.stderr)
            print(info.url)
            return 0
        from abflow.serving.supervisor import serve_foreground

        return serve_foreground(args.graph, models, host=args.host, port=args.port, ready_file=args.ready_file,
                                allow_unverified=args.allow_unverified_model, experiment=args.experiment,
                                state_dir=args.state_dir or default_state_dir())
    except (GraphError, OSError, LedgerError) as exc:
        print(f"abflow serve: {exc}", file=sys.stderr)
        return 2


def _status(args: argparse.Namespace) -> int:
    from abflow.serving.daemon import endpoint_status

    state_dir = args.state_dir or default_state_dir()
    status = endpoint_status(state_dir)
    if status is None:
        print(f"abflow status: no endpoint recorded in {state_dir}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        from abflow.serving.status import render_status

        print(render_status(status))
    return 0 if status.get("running") else 1


def _down(args: argparse.Namespace) -> int:
    from abflow.serving.daemon import stop_detached

    state_dir = args.state_dir or default_state_dir()
    stopped = stop_detached(state_dir, timeout=args.timeout)
    print(f"abflow down: {'stopped the endpoint' if stopped else 'nothing was running'} ({state_dir})",
          file=sys.stderr)
    return 0
