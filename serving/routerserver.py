"""One router node as a Seldon router microservice: what a bandit or a sticky split runs on a cluster.

Seldon v1's orchestrator drives a ``type: ROUTER`` node through two calls, and this server answers
them with abflow's routers (``abflow.serving.routers``), so the very policy that routes under
``abflow serve`` routes behind the real orchestrator:

* ``POST /route`` with the prediction request (a SeldonMessage) answers the child index as Seldon's
  router API does, ``{"data": {"ndarray": [[index]]}}``; the orchestrator then calls that child and
  records the choice in ``meta.routing``;
* ``POST /send-feedback`` with the feedback (``request``, ``response`` with ``meta.routing``,
  ``reward``) teaches the router: the arm is ``response.meta.routing[<this node>]``, a missing reward
  is 0 and counts.

State: a bandit's whole state is each arm's feedback count and reward sum. With ``--state-dir`` and
an experiment id the server records each feedback in an outcome ledger there
(``abflow.serving.ledger``) and restores from it at start, so a restarted pod goes on from what the
experiment learned. The renderer runs the router as one replica (see ``docs/architecture.md``: one
replica sees every feedback, so there is one state, not several that drift apart).

``python -m abflow.serving.routerserver --node '<router node JSON>' --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path

import orjson

from abflow.serving.cli import EXPERIMENT_ENV
from abflow.serving.graph import HEADER_UNIT, GraphError, RouterNode, parse_router_node
from abflow.serving.ledger import LEDGER_FILE, OutcomeLedger, read_outcomes
from abflow.serving.limits import MAX_ABS_REWARD
from abflow.serving.metrics import ServingMetrics
from abflow.serving.protocol import MAX_BODY_BYTES, SeldonError, decode_feedback, decode_prediction_request
from abflow.serving.routers import make_router, stats_from_outcomes
from abflow.serving.service import Call, Reply, UrlDispatch, status_reply

ROUTE_PATH = "/route"
FEEDBACK_PATH = "/send-feedback"
DEPLOYMENT_ENV = "SELDON_DEPLOYMENT_ID"
"""Set by Seldon's operator in every container: the SeldonDeployment's name, the salt without an experiment."""


class RouterServer:
    """Seldon's router microservice protocol over one abflow router, without HTTP."""

    def __init__(self, node: RouterNode, *, salt: str, experiment: str | None = None,
                 ledger: OutcomeLedger | None = None, rng: random.Random | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, max_abs_reward: float = MAX_ABS_REWARD) -> None:
        if ledger is not None and not experiment:
            raise ValueError("an outcome ledger needs the experiment id its outcomes belong to")
        self.node = node
        self.arm_names = tuple(child.name for child in node.children)
        self.router = make_router(node, rng, salt=salt if node.unit is not None else None)
        self.experiment = experiment
        self.ledger = ledger
        if ledger is not None and experiment:
            self.router.restore(stats_from_outcomes(read_outcomes(ledger.path, experiment), self.arm_names))
        self.metrics = ServingMetrics()
        self.max_body_bytes = max_body_bytes
        self.max_abs_reward = max_abs_reward
        self._unit = node.unit_source
        self.routes = UrlDispatch(max_body_bytes)
        self.routes.add("POST", ROUTE_PATH, self.route)
        self.routes.add("POST", FEEDBACK_PATH, self.send_feedback)
        for path in ("/health/ping", "/live", "/ready"):
            self.routes.add("GET", path, self.ping)
        self.routes.add("GET", "/health/status", self.status)
        self.routes.add("GET", "/metrics", self.prometheus)

    async def handle(self, call: Call) -> Reply:
        return await self.routes.dispatch(call)

    async def route(self, call: Call) -> Reply:
        try:
            request = decode_prediction_request(call.body, call.content_type)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        unit = None
        if self._unit is not None:
            kind, key = self._unit
            raw = call.headers.get(key) if kind == HEADER_UNIT else request.tags.get(key)
            unit = str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) and raw != "" else None
            if unit is None:
                self.metrics.sticky_fallback(self.node.name)
        index = self.router.route(request, unit)
        return Reply(200, orjson.dumps({"data": {"names": [], "ndarray": [[index]]}, "meta": {"tags": {}}}))

    async def send_feedback(self, call: Call) -> Reply:
        try:
            feedback = decode_feedback(call.body, call.content_type, max_abs_reward=self.max_abs_reward)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        index = (feedback.routing or {}).get(self.node.name)
        if not isinstance(index, int) or not 0 <= index < len(self.arm_names):
            return status_reply(400, f"response.meta.routing must name router {self.node.name!r} with child 0 or 1 "
                                     f"(send back the prediction response), got {feedback.routing!r}")
        try:
            self.router.feedback(index, feedback.reward)
        except ValueError as exc:
            return status_reply(400, f"{exc} (router {self.node.name!r}); nothing was counted")
        arm = self.arm_names[index]
        self.metrics.feedback(arm, feedback.reward)
        if self.ledger is not None and self.experiment:
            self.ledger.record_feedback(self.experiment, arm, feedback.reward)
        return Reply(200, orjson.dumps({"meta": {"tags": {}}}))

    async def ping(self, call: Call) -> Reply:
        return Reply(200, b"pong", "text/plain")

    async def status(self, call: Call) -> Reply:
        arms = [{"name": name, "routed": s.routed, "feedback": s.feedback, "mean_reward": s.mean_reward}
                for name, s in zip(self.arm_names, self.router.stats, strict=True)]
        return Reply(200, orjson.dumps({"status": "ok", "router": self.node.name,
                                        "implementation": self.node.implementation, "arms": arms}))

    async def prometheus(self, call: Call) -> Reply:
        return Reply(200, self.metrics.exposition(), self.metrics.content_type)


async def run(server: RouterServer, host: str, port: int, ready_file: Path | None) -> None:
    from abflow.serving.http import start_http

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    endpoint = await start_http(server, host, port)
    print(f"abflow router {server.node.name!r} ({server.node.implementation}) listening on {host}:{endpoint.port}",
          file=sys.stderr, flush=True)
    if ready_file is not None:
        ready_file.write_text(json.dumps({"port": endpoint.port, "pid": os.getpid()}))
    await stop.wait()
    await endpoint.stop()
    if server.ledger is not None:
        server.ledger.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m abflow.serving.routerserver",
        description="Serve one router node (RANDOM_ABTEST, sticky or not, EPSILON_GREEDY, THOMPSON_SAMPLING) over "
                    "Seldon's router microservice API: POST /route, POST /send-feedback.",
        epilog="example: python -m abflow.serving.routerserver --port 9000 --node "
               "'{\"name\":\"bandit\",\"implementation\":\"THOMPSON_SAMPLING\",\"children\":"
               "[{\"name\":\"a\",\"type\":\"MODEL\"},{\"name\":\"b\",\"type\":\"MODEL\"}]}'",
    )
    parser.add_argument("--node", required=True, metavar="JSON", help="the router node, as in the SeldonDeployment")
    parser.add_argument("--experiment", default=os.environ.get(EXPERIMENT_ENV) or None, metavar="ID",
                        help=f"the experiment id: salts a sticky split and names the ledger's rows (${EXPERIMENT_ENV})")
    parser.add_argument("--graph-name", default=os.environ.get(DEPLOYMENT_ENV) or "", metavar="NAME",
                        help=f"the salt when there is no experiment (default ${DEPLOYMENT_ENV})")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="keep the learned state in DIR/outcomes.sqlite (needs --experiment), e.g. a volume")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0: inside a pod)")
    parser.add_argument("--port", type=int, default=9000, help="HTTP port (default 9000, Seldon's; 0 picks one)")
    parser.add_argument("--ready-file", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        node = parse_router_node(json.loads(args.node), "--node")
    except (json.JSONDecodeError, GraphError) as exc:
        print(f"abflow router: --node is not a router node: {exc}", file=sys.stderr)
        return 2
    if args.state_dir is not None and not args.experiment:
        print("abflow router: --state-dir needs --experiment (or $ABFLOW_EXPERIMENT): the ledger keeps "
              "outcomes per experiment", file=sys.stderr)
        return 2
    ledger = None
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        ledger = OutcomeLedger(args.state_dir / LEDGER_FILE)
    server = RouterServer(node, salt=args.experiment or args.graph_name or node.name, experiment=args.experiment,
                          ledger=ledger)
    try:
        asyncio.run(run(server, args.host, args.port, args.ready_file))
    except OSError as exc:
        print(f"abflow router: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
