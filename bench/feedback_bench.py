"""Feedback throughput with the durable outcome ledger on, beside prediction throughput, by hand.

Serves the tutorial's A/B graph with ``abflow serve --experiment`` (so every prediction and every
feedback is recorded in the SQLite ledger) and measures, with ``hey`` at each concurrency, predictions
and then feedback as Seldon's client sends it (the prediction response, carrying ``meta.routing``,
and a reward). Each feedback body names no puid, so every one is counted (none is a repeat): this is
the counting path, ledger write included. Goal: feedback req/s ≥ 50 % of prediction req/s.

    python bench/feedback_bench.py --duration 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from load import run_hey
from serving_bench import REPO, TUTORIAL_ROW, abflow_executable, free_port, seldon_bodies, write_model

from abflow.serving.ledger import LEDGER_FILE, read_outcomes

EXPERIMENT = "feedback-bench"
GRAPH = REPO / "tests" / "data" / "tutorial" / "ab_test.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per measurement (default 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32], help="hey connection counts (default 32)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="abflow-feedback-bench-") as folder:
        work = Path(folder)
        graph = json.loads(GRAPH.read_text())
        del graph["spec"]["oauth_key"], graph["spec"]["oauth_secret"]  # measure the ledger, not OAuth
        graph_path = work / "ab.json"
        graph_path.write_text(json.dumps(graph))
        model = write_model(work / "model")
        port = free_port()
        command = [abflow_executable(), "serve", str(graph_path), "--port", str(port), "--experiment", EXPERIMENT,
                   "--state-dir", str(work / "state"), "--model", f"classifier-1={model}",
                   "--model", f"classifier-2={model}"]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            prediction_body = seldon_bodies([TUTORIAL_ROW])["tensor"]
            response = _wait_for_prediction(f"{url}/api/v1.0/predictions", prediction_body, server)
            bodies = {"predictions": work / "prediction.json", "feedback": work / "feedback.json"}
            bodies["predictions"].write_bytes(prediction_body)
            response["meta"].pop("puid")
            bodies["feedback"].write_text(json.dumps({"response": response, "reward": 1}))
            headers = {"Content-Type": "application/json"}
            print(f"{'concurrency':>11} {'predictions/s':>14} {'feedback/s':>11} {'ratio':>6} {'errors':>7}")
            for concurrency in args.concurrency:
                results = {path: run_hey(f"{url}/api/v1.0/{path}", body, concurrency=concurrency,
                                         seconds=args.duration, headers=headers)
                           for path, body in bodies.items()}
                predicted, fed = results["predictions"], results["feedback"]
                print(f"{concurrency:>11} {predicted.requests_per_second:>14.0f} {fed.requests_per_second:>11.0f} "
                      f"{fed.requests_per_second / predicted.requests_per_second:>6.2f} "
                      f"{predicted.errors + fed.errors:>7}")
        finally:
            server.terminate()
            server.wait(30)
        outcomes = read_outcomes(work / "state" / LEDGER_FILE, EXPERIMENT)
        print("ledger:", {arm: {"requests": o.requests, "feedback": o.feedback} for arm, o in outcomes.items()})
    return 0


def _wait_for_prediction(url: str, body: bytes, server: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"abflow serve exited with {server.returncode}")
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                parsed: dict[str, object] = json.loads(answer.read())
                return parsed
        except OSError:
            time.sleep(0.1)
    raise SystemExit("abflow serve answered no prediction within 60 s")


if __name__ == "__main__":
    sys.exit(main())
