"""One MODEL node as a server: ``python -m abflow.serving.modelserver --model URI --port P [--name NODE]``.

This is what the serving image runs on a cluster (one model per container, behind Seldon's
orchestrator), so its HTTP API is the Seldon microservice protocol itself: ``/api/v1.0/predictions``,
``/predict``, ``/send-feedback`` and the health endpoints. Under ``abflow serve`` it listens only on a
unix socket for the executor's binary frames (``abflow.serving.armlink``) and on no TCP port at all:
the executor in front is the graph's one door, and it is the one that checks the graph's OAuth
credentials, so an arm answering HTTP on its own port would be a way around them.

Kept lean on purpose: it imports the model runtime, numpy, aiohttp and prometheus_client, nothing
from the executor side, because every arm of a local graph is one of these processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from typing import Any

import orjson

from abflow.serving.armlink import ArmInfo, Rows, serve_frames
from abflow.serving.artifact import ALLOW_UNVERIFIED_ENV, ALLOW_UNVERIFIED_FLAG, allow_unverified_from_env
from abflow.serving.limits import EndpointLimits
from abflow.serving.metrics import ModelMetrics, SeldonLabels
from abflow.serving.model import LoadedModel, ModelLoadError, load_model, trust_decoded_input
from abflow.serving.oip import (
    BINARY_HEADER,
    OipError,
    decode_infer_request,
    encode_infer_response,
    error_body,
    model_metadata,
)
from abflow.serving.protocol import (
    INTERNAL_ERROR,
    MAX_BODY_BYTES,
    SeldonError,
    check_reward,
    decode_feedback,
    decode_prediction_request,
    encode_prediction_response,
    new_puid,
)
from abflow.serving.service import ROUTE_HEADER, Call, Reply, UrlDispatch, status_reply

PARENT_PID_ENV = "ABFLOW_PARENT_PID"
PR_SET_PDEATHSIG = 1


class ModelServer:
    """The Seldon microservice protocol for one loaded model, without HTTP.

    Its metrics count its own traffic, whether it came over HTTP or the executor's frames, and the
    feedback it is sent (Seldon's orchestrator posts each feedback to the model that served, on
    ``/send-feedback``; abflow's executor sends it over the frames), under Seldon's names and labels
    (``abflow.serving.metrics.SeldonLabels``: ``deployment``/``predictor`` are the local defaults the
    supervisor passes, Seldon's environment variables win on a cluster)."""

    def __init__(self, model: LoadedModel, name: str, *, image: str | None = None,
                 metrics: ModelMetrics | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 deployment: str = "", predictor: str = "", predictor_version: str = "",
                 max_abs_reward: float | None = None) -> None:
        self.model = model
        self.name = name
        version = model.metadata.version if model.metadata is not None else ""
        self.metrics = metrics or ModelMetrics(SeldonLabels.from_env(
            deployment=deployment, predictor=predictor, predictor_version=predictor_version, model=name,
            image=image or "", version=version))
        self.max_abs_reward = max_abs_reward if max_abs_reward is not None else EndpointLimits.from_env().max_abs_reward
        self.max_body_bytes = max_body_bytes
        self._request_path = {name: image or model.uri}
        self.routes = UrlDispatch()
        for path in ("/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"):
            self.routes.add("POST", path, self.predict)
        for path in ("/api/v1.0/feedback", "/send-feedback"):
            self.routes.add("POST", path, self.feedback)
        for path in ("/health/ping", "/live"):
            self.routes.add("GET", path, self.ping)
        for path in ("/ready", "/health/status"):
            self.routes.add("GET", path, self.status)
        for path in ("/metrics", "/prometheus"):  # /prometheus: Seldon's Python wrapper's path for them
            self.routes.add("GET", path, self.prometheus)
        # The Open Inference Protocol, this model under its node name.
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{name}/ready"):
            self.routes.add("GET", path, self.v2_ready)
        self.routes.add("GET", f"/v2/models/{name}", self.v2_metadata)
        self.routes.add("POST", f"/v2/models/{name}/infer", self.infer)

    async def handle(self, call: Call) -> Reply:
        return await self.routes.dispatch(call)

    def predict_rows(self, rows: Rows) -> Rows:
        return self.model.predict_proba(rows)

    async def predict(self, call: Call) -> Reply:
        started = time.perf_counter()
        try:
            request = decode_prediction_request(call.body, call.content_type, n_features=self.model.n_features)
            probabilities = self.model.predict_proba(request.features)
            reply = Reply(200, encode_prediction_response(
                request, probabilities, self.model.class_names, puid=request.puid or new_puid(), routing={},
                request_path=self._request_path))
        except SeldonError as exc:
            reply = Reply(exc.code, exc.body())
        except Exception as exc:  # noqa: BLE001 - a model bug answers 500 and the server keeps serving
            reply = status_reply(500, f"model {self.name!r} failed: {type(exc).__name__}: {exc}", INTERNAL_ERROR)
        seconds = time.perf_counter() - started
        self.metrics.observe(self.name, reply.status, seconds, None if reply.status == 200 else str(reply.status))
        self.metrics.observe_model(reply.status, seconds)
        return reply

    async def infer(self, call: Call) -> Reply:
        """``POST /v2/models/<name>/infer``: the same model, answered in the Open Inference Protocol."""
        started = time.perf_counter()
        version = self.metrics.labels.model_version
        try:
            request = decode_infer_request(call.body, call.content_type, n_features=self.model.n_features,
                                           binary_header=call.headers.get(BINARY_HEADER))
            probabilities = self.model.predict_proba(request.features)
            reply = Reply(200, encode_infer_response(request, probabilities, self.model.class_names,
                                                     model_name=self.name, model_version=version,
                                                     parameters={"arm": self.name}),
                          headers=((ROUTE_HEADER, f":{self.name}:"),))
        except OipError as exc:
            reply = Reply(exc.code, exc.body())
        except Exception as exc:  # noqa: BLE001 - a model bug answers 500 and the server keeps serving
            reply = Reply(500, error_body(f"model {self.name!r} failed: {type(exc).__name__}: {exc}"))
        seconds = time.perf_counter() - started
        self.metrics.observe(self.name, reply.status, seconds, None if reply.status == 200 else str(reply.status))
        self.metrics.observe_model(reply.status, seconds)
        return reply

    async def v2_ready(self, call: Call) -> Reply:
        """Live, ready and this model ready are one thing here: the model loaded before the server listened."""
        return Reply(200, orjson.dumps({"name": self.name, "ready": True, "live": True}))

    async def v2_metadata(self, call: Call) -> Reply:
        version = self.metrics.labels.model_version
        return Reply(200, model_metadata(self.name, versions=[version] if version else [],
                                         n_features=self.model.n_features, class_names=self.model.class_names))

    async def feedback(self, call: Call) -> Reply:
        """Seldon sends feedback to models too: counted (a reward of 0, or none, counts), though an
        sklearn classifier learns nothing from it."""
        try:
            feedback = decode_feedback(call.body, call.content_type, max_abs_reward=self.max_abs_reward)
        except SeldonError as exc:
            return Reply(exc.code, exc.body())
        self.metrics.model_feedback(feedback.reward)
        return Reply(200, orjson.dumps({"meta": {"puid": new_puid(), "tags": {}, "routing": {},
                                                 "requestPath": self._request_path}}))

    def control(self, message: dict[str, Any]) -> bytes | None:
        """The executor's control frames (``abflow.serving.armlink``): this server's exposition, or a
        feedback reward to count."""
        op = message.get("op")
        if op == "metrics":
            return self.metrics.exposition()
        if op == "feedback":
            self.metrics.model_feedback(check_reward(message.get("reward", 0.0), self.max_abs_reward))
            return None
        raise ValueError(f"unknown control op {op!r}: expected 'metrics' or 'feedback'")

    async def ping(self, call: Call) -> Reply:
        return Reply(200, b"pong", "text/plain")

    async def status(self, call: Call) -> Reply:
        return Reply(200, orjson.dumps({"status": "ok", "name": self.name, "uri": self.model.uri,
                                        "class_names": self.model.class_names,
                                        "n_features": self.model.n_features}))

    async def prometheus(self, call: Call) -> Reply:
        return Reply(200, self.metrics.exposition(), self.metrics.content_type)


def die_with_parent() -> None:
    """Make this process exit when the supervisor that started it dies, even by SIGKILL.

    Linux delivers SIGTERM on the parent's death (PR_SET_PDEATHSIG); elsewhere ``watch_parent`` polls.
    The getppid check closes the race where the parent died before prctl ran.
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if expected is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(expected):
        sys.exit(1)


async def watch_parent(stop: asyncio.Event) -> None:
    expected = os.environ.get(PARENT_PID_ENV)
    while expected is not None and not stop.is_set():
        if os.getppid() != int(expected):
            stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def run(args: argparse.Namespace, model: LoadedModel) -> None:
    server = ModelServer(model, args.name, image=args.image, deployment=args.deployment_name,
                         predictor=args.predictor_name, predictor_version=args.predictor_version)
    endpoint = None
    if args.port is not None:
        from abflow.serving.http import start_http

        endpoint = await start_http(server, args.host, args.port)
    labels = server.metrics.labels
    info = ArmInfo(name=args.name, uri=model.uri, class_names=model.class_names, n_features=model.n_features,
                   pid=os.getpid(), port=endpoint.port if endpoint else None, version=labels.model_version,
                   image=labels.model_image)
    frames = await serve_frames(args.socket, server.predict_rows, info, control=server.control,
                                observe=server.metrics.observe_model) if args.socket else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.ensure_future(watch_parent(stop))
    # One JSON line on stdout is the readiness handshake with the supervisor.
    print(orjson.dumps({"ready": True, "name": args.name, "port": info.port, "pid": os.getpid(),
                        "socket": args.socket}).decode(), flush=True)
    await stop.wait()
    if frames is not None:
        frames.close()
    if endpoint is not None:
        await endpoint.stop()
    watcher.cancel()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m abflow.serving.modelserver",
        description="Serve one scikit-learn model over the Seldon REST protocol "
                    "(POST /api/v1.0/predictions or /predict; GET /health/ping, /ready, /metrics).",
        epilog="example: python -m abflow.serving.modelserver --model models/iris/v1 --port 9000 --name classifier",
    )
    parser.add_argument("--model", required=True, metavar="URI",
                        help="model version folder with model.joblib + metadata.json, file://… or gs://…")
    parser.add_argument("--name", default="classifier", help="graph node name reported in meta.requestPath")
    parser.add_argument("--image", default=None, help="image reported in meta.requestPath instead of the URI")
    parser.add_argument("--deployment-name", default="", metavar="NAME",
                        help="the deployment_name label of this server's metrics when $SELDON_DEPLOYMENT_ID is "
                             "not set (abflow serve passes the graph's name)")
    parser.add_argument("--predictor-name", default="", metavar="NAME",
                        help="the predictor_name label of this server's metrics when $PREDICTOR_ID is not set "
                             "(abflow serve passes the graph's predictor)")
    parser.add_argument("--predictor-version", default="", metavar="VERSION",
                        help="the predictor_version label when $PREDICTOR_LABELS names no version (abflow serve "
                             "passes the experiment id)")
    parser.add_argument("--host", default=os.environ.get("ABFLOW_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1; 0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port (default $ABFLOW_PORT or 9000; 0 picks a free one); "
                             "with --socket and no --port, no HTTP at all")
    parser.add_argument("--socket", default=None, metavar="PATH",
                        help="accept abflow executor frames on this unix socket (what abflow serve uses)")
    parser.add_argument(ALLOW_UNVERIFIED_FLAG, action="store_true", default=allow_unverified_from_env(),
                        help="unpickle a model that no metadata.json (or no signature, with "
                             "ABFLOW_MODEL_SIGNING_KEY set) vouches for: a pickle runs code, so only for "
                             f"files you trust (default: ${ALLOW_UNVERIFIED_ENV}=1)")
    args = parser.parse_args(argv)
    if args.port is None and args.socket is None:
        args.port = int(os.environ.get("ABFLOW_PORT", "9000"))
    return args


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = parse_args(argv)
    try:
        model = load_model(args.model, allow_unverified=args.allow_unverified_model)
    except ModelLoadError as exc:
        print(f"abflow model server {args.name!r}: refusing to start: {exc}", file=sys.stderr)
        return 2
    if model.unverified is not None:
        print(f"abflow model server {args.name!r}: WARNING: serving an UNVERIFIED model "
              f"({ALLOW_UNVERIFIED_FLAG}): {model.unverified}", file=sys.stderr, flush=True)
    trust_decoded_input()
    try:
        asyncio.run(run(args, model))
    except OSError as exc:
        print(f"abflow model server {args.name!r}: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
