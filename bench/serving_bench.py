"""abflow's serving runtime against the servers its users would otherwise run, in one run, by hand.

Starts on 127.0.0.1, one at a time and with the same model file: abflow's A/B graph (the tutorial's
``ab_test.json``), abflow's single-model graph (``TMPL_deployment.json``), the Seldon Core Python
wrapper (``seldon-core-microservice IrisClassifier``) and MLServer with its sklearn runtime. For each
it measures the time from process start to the first 200 prediction, req/s and p50/p99 under ``hey``
at each concurrency, CPU per request and PSS over the whole process tree, and the p50 of a 1000-row
request on a keep-alive connection. It prints Markdown tables, the ratios the serving issue sets
targets for, and writes everything as JSON to ``bench/results/``.

Absolute numbers move with the machine and whatever else runs on it; the ratios between servers
measured in the same run are the result. That is why this is a script run by hand, never a test.

    bash bench/setup_peers.sh                      # once: the peers' venvs
    python bench/serving_bench.py --duration 10    # the full run (about 3 minutes)
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import resource
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load import keepalive_latencies_ms, percentile, run_hey
from proctree import ServerProcess, cpu_seconds, machine_busy_seconds, pss_bytes
from provenance import git_revision

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))  # run as a script from anywhere: abflow's own modules train the model

TUTORIAL = REPO / "tests" / "data" / "tutorial"
PEERS = BENCH_DIR / "peers"
VENVS = BENCH_DIR / ".venvs"
RESULTS = BENCH_DIR / "results"

FEATURE_NAMES = ["sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm"]
TUTORIAL_ROW = [5.1, 3.5, 1.4, 0.2]
BATCH_ROWS = 1000
BATCH_REQUESTS = 200
BATCH_WARMUP = 20
FIRST_200_TIMEOUT_S = 120.0
MIB = 1024 * 1024

# The serving issue's targets, all measured on the A/B graph.
TARGET_VS_SELDON_RPS = 5.0
TARGET_VS_MLSERVER_RPS = 2.0
TARGET_P99_VS_SELDON = 0.25
TARGET_PSS_MIB = 250.0
TARGET_FIRST_200_S = 2.0
TARGET_BATCH_P50_MS = 3.0


@dataclass(frozen=True)
class Target:
    """How to start one server and talk to it. ``batch_bodies`` maps an encoding name to a 1000-row
    request; ``rows_in`` reads a response and returns its probability rows, so a server answering
    with an error body is never benchmarked as if it worked."""

    key: str
    label: str
    command: list[str]
    cwd: Path
    env: dict[str, str]
    predict_url: str
    single_body: bytes
    batch_bodies: dict[str, bytes]
    rows_in: Callable[[dict[str, Any]], list[list[float]]]
    oauth: tuple[str, str, str] | None = None  # token URL, key, secret


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    non_200: int
    background_cores: float


@dataclass
class ServerResult:
    key: str
    label: str
    command: str
    first_200_s: float
    processes: int = 0
    pss_mib: float = 0.0
    load: list[LoadResult] = field(default_factory=list)
    batch_p50_ms: dict[str, float] = field(default_factory=dict)
    batch_p99_ms: dict[str, float] = field(default_factory=dict)

    def at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.load if r.concurrency == concurrency), None)


# --- requests and responses ------------------------------------------------------------------------


def iris_rows(count: int) -> list[list[float]]:
    """Real iris measurements, cycled to ``count`` rows, so every server does its usual arithmetic."""
    from sklearn.datasets import load_iris

    data = load_iris().data.tolist()
    return [data[i % len(data)] for i in range(count)]


def seldon_bodies(rows: list[list[float]]) -> dict[str, bytes]:
    flat = [value for row in rows for value in row]
    return {
        "tensor": json.dumps(
            {"data": {"names": FEATURE_NAMES, "tensor": {"shape": [len(rows), 4], "values": flat}}}
        ).encode(),
        "ndarray": json.dumps({"data": {"names": FEATURE_NAMES, "ndarray": rows}}).encode(),
    }


def v2_body(rows: list[list[float]]) -> bytes:
    """An Open Inference Protocol request that asks MLServer's sklearn runtime for ``predict_proba``
    (its default output is ``predict``, which would do less work than the others)."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "iris",
                    "shape": [len(rows), 4],
                    "datatype": "FP64",
                    "data": [value for row in rows for value in row],
                }
            ],
            "outputs": [{"name": "predict_proba"}],
        }
    ).encode()


def abflow_v2_body(rows: list[list[float]]) -> bytes:
    """An Open Inference Protocol request as abflow serves it: one FP64 input, the probabilities out."""
    data = [value for row in rows for value in row]
    tensor = {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": data}
    return json.dumps({"inputs": [tensor], "outputs": [{"name": "probabilities"}]}).encode()


def abflow_v2_rows(response: dict[str, Any]) -> list[list[float]]:
    output = next(o for o in response["outputs"] if o["name"] == "probabilities")
    rows, width = output["shape"]
    return [output["data"][i * width : (i + 1) * width] for i in range(rows)]


def seldon_rows(response: dict[str, Any]) -> list[list[float]]:
    data = response["data"]
    if "ndarray" in data:
        return [list(row) for row in data["ndarray"]]
    shape, values = data["tensor"]["shape"], data["tensor"]["values"]
    return [values[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]


def v2_rows(response: dict[str, Any]) -> list[list[float]]:
    output = next(o for o in response["outputs"] if o["name"] == "predict_proba")
    rows, width = output["shape"]
    return [output["data"][i * width : (i + 1) * width] for i in range(rows)]


def check_probabilities(target: Target, body: bytes, expected_rows: int) -> None:
    rows = target.rows_in(json.loads(body))
    if len(rows) != expected_rows or any(len(r) != 3 or not math.isclose(sum(r), 1.0, abs_tol=1e-6) for r in rows):
        raise RuntimeError(f"{target.label} did not answer {expected_rows} rows of 3 probabilities: {body[:300]!r}")


# --- the four servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def abflow_executable() -> str:
    """The ``abflow`` script beside this interpreter (a version-manager shim in front of it would add
    its own start-up to the time to first 200)."""
    beside = Path(sys.executable).parent / "abflow"
    found = str(beside) if beside.exists() else shutil.which("abflow")
    if not found:
        raise SystemExit("abflow is not installed in this interpreter: pip install -e .")
    return found


def abflow_target(
    key: str, label: str, graph: Path, nodes: list[str], model_dir: Path, rows: list[list[float]], *, v2: bool = False
) -> Target:
    """``v2``: the same graph over the Open Inference Protocol, addressed as one model by its name."""
    port = free_port()
    document = json.loads(graph.read_text())
    spec = document["spec"]
    base = f"http://127.0.0.1:{port}"
    oauth = (f"{base}/oauth/token", spec["oauth_key"], spec["oauth_secret"]) if "oauth_key" in spec else None
    command = [abflow_executable(), "serve", str(graph), "--port", str(port)]
    for node in nodes:
        command += ["--model", f"{node}={model_dir}"]
    if v2:
        url = f"{base}/v2/models/{document['metadata']['name']}/infer"
        return Target(key, label, command, REPO, dict(os.environ), url, abflow_v2_body([TUTORIAL_ROW]),
                      {"v2": abflow_v2_body(rows)}, abflow_v2_rows, oauth)
    return Target(
        key,
        label,
        command,
        REPO,
        dict(os.environ),
        f"{base}/api/v1.0/predictions",
        seldon_bodies([TUTORIAL_ROW])["tensor"],
        seldon_bodies(rows),
        seldon_rows,
        oauth,
    )


def venv_executable(venv: str, name: str) -> Path:
    path = VENVS / venv / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `bash bench/setup_peers.sh` first (or leave it out with --only)")
    return path


def seldon_target(model_dir: Path, rows: list[list[float]]) -> Target:
    """The tutorial's wrapper with the wrapper's defaults: 1 gunicorn worker, 1 thread
    (``GUNICORN_WORKERS``/``GUNICORN_THREADS`` unset), plus its gRPC and metrics processes."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [
        str(venv_executable("seldon", "seldon-core-microservice")),
        "IrisClassifier",
        "--service-type",
        "MODEL",
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
    ]
    env = {**os.environ, "MODEL_PATH": str(model_dir)}
    return Target(
        "seldon",
        "Seldon Python wrapper 1.18.2",
        command,
        PEERS,
        env,
        f"http://127.0.0.1:{http}/api/v1.0/predictions",
        seldon_bodies([TUTORIAL_ROW])["tensor"],
        seldon_bodies(rows),
        seldon_rows,
    )


def mlserver_target(model_dir: Path, work: Path, rows: list[list[float]]) -> Target:
    """MLServer reads a model repository folder: ours is the peers' settings next to a copy of the
    model file, so ``model-settings.json`` can name it relatively."""
    repository = work / "mlserver"
    repository.mkdir(exist_ok=True)
    for name in ("settings.json", "model-settings.json"):
        shutil.copy(PEERS / name, repository / name)
    shutil.copy(model_dir / "model.joblib", repository / "model.joblib")
    http = free_port()
    env = {
        **os.environ,
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
    }
    command = [str(venv_executable("mlserver", "mlserver")), "start", str(repository)]
    return Target(
        "mlserver",
        "MLServer 1.7.1 (sklearn)",
        command,
        repository,
        env,
        f"http://127.0.0.1:{http}/v2/models/iris/infer",
        v2_body([TUTORIAL_ROW]),
        {"v2": v2_body(rows)},
        v2_rows,
    )


def build_targets(keys: list[str], model_dir: Path, work: Path) -> list[Target]:
    rows = iris_rows(BATCH_ROWS)
    builders: dict[str, Callable[[], Target]] = {
        "abflow-ab": lambda: abflow_target(
            "abflow-ab",
            "abflow A/B graph",
            TUTORIAL / "ab_test.json",
            ["classifier-1", "classifier-2"],
            model_dir,
            rows,
        ),
        "abflow-ab-v2": lambda: abflow_target(
            "abflow-ab-v2",
            "abflow A/B graph, Open Inference Protocol",
            TUTORIAL / "ab_test.json",
            ["classifier-1", "classifier-2"],
            model_dir,
            rows,
            v2=True,
        ),
        "abflow-single": lambda: abflow_target(
            "abflow-single",
            "abflow single model",
            TUTORIAL / "TMPL_deployment.json",
            ["sklearn-iris-classifier"],
            model_dir,
            rows,
        ),
        "seldon": lambda: seldon_target(model_dir, rows),
        "mlserver": lambda: mlserver_target(model_dir, work, rows),
    }
    return [builders[key]() for key in keys]


# --- measuring one server --------------------------------------------------------------------------


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def auth_headers(target: Target) -> dict[str, str]:
    """The tutorial's OAuth client-credentials flow when the graph asks for it (both tutorial graphs
    do), so abflow is measured with its bearer-token check on every request."""
    if target.oauth is None:
        return {}
    url, key, secret = target.oauth
    basic = base64.b64encode(f"{key}:{secret}".encode()).decode()
    form = urllib.parse.urlencode({"grant_type": "client_credentials"}).encode()
    request = urllib.request.Request(
        url,
        data=form,
        method="POST",
        headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return {"Authorization": f"Bearer {json.load(response)['access_token']}"}


def wait_first_200(target: Target, server: ServerProcess) -> tuple[float, dict[str, str]]:
    """Seconds from process start to the first 200 prediction, polling every 10 ms (token included)."""
    deadline = server.started + FIRST_200_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.exited() is not None:
            raise RuntimeError(f"{target.label} exited with {server.exited()}:\n{server.log_tail()}")
        try:
            headers = auth_headers(target)
            status, body = post(target.predict_url, target.single_body, headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status = 0
        if status == 200:
            elapsed = time.monotonic() - server.started
            check_probabilities(target, body, 1)
            return elapsed, headers
        time.sleep(0.01)
    raise RuntimeError(f"{target.label} gave no 200 within {FIRST_200_TIMEOUT_S}s:\n{server.log_tail()}")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_load(
    target: Target,
    server: ServerProcess,
    body_file: Path,
    headers: dict[str, str],
    concurrency: int,
    args: argparse.Namespace,
) -> LoadResult:
    if args.warmup > 0:
        run_hey(target.predict_url, body_file, concurrency=concurrency, seconds=args.warmup, headers=headers)
    tree = server.tree()
    cpu_before, busy_before, hey_before = cpu_seconds(tree), machine_busy_seconds(), children_cpu_seconds()
    began = time.monotonic()
    result = run_hey(target.predict_url, body_file, concurrency=concurrency, seconds=args.duration, headers=headers)
    wall = time.monotonic() - began
    tree = server.tree()  # a server may fork workers under load; count them too
    server_cpu = cpu_seconds(tree) - cpu_before
    background = machine_busy_seconds() - busy_before - server_cpu - (children_cpu_seconds() - hey_before)
    return LoadResult(
        concurrency=concurrency,
        requests=result.requests,
        requests_per_second=result.requests_per_second,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_ms_per_request=server_cpu * 1000 / max(result.requests, 1),
        non_200=result.non_200,
        background_cores=max(background, 0.0) / wall,
    )


def measure(target: Target, work: Path, args: argparse.Namespace, running: list[ServerProcess]) -> ServerResult:
    body_file = work / f"{target.key}-single.json"
    body_file.write_bytes(target.single_body)
    print(f"## {target.label}: {' '.join(target.command)}", file=sys.stderr)
    server = ServerProcess(target.command, env=target.env, cwd=target.cwd, log_path=work / f"{target.key}.log")
    running.append(server)
    try:
        first_200, headers = wait_first_200(target, server)
        print(f"   first 200 after {first_200:.2f}s", file=sys.stderr)
        result = ServerResult(target.key, target.label, " ".join(target.command), first_200)
        for encoding, body in target.batch_bodies.items():
            status, answer = post(target.predict_url, body, headers, timeout=30)
            if status != 200:
                raise RuntimeError(
                    f"{target.label} answered {status} to a {BATCH_ROWS}-row {encoding} request: {answer[:300]!r}"
                )
            check_probabilities(target, answer, BATCH_ROWS)
        for concurrency in args.concurrency:
            load = measure_load(target, server, body_file, headers, concurrency, args)
            print(
                f"   c={concurrency}: {load.requests_per_second:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
                f"p99 {load.p99_ms:.2f} ms, {load.cpu_ms_per_request:.3f} CPU ms/req",
                file=sys.stderr,
            )
            result.load.append(load)
        for encoding, body in target.batch_bodies.items():
            latencies = keepalive_latencies_ms(
                target.predict_url, body, headers=headers, requests=BATCH_REQUESTS, warmup=BATCH_WARMUP
            )
            result.batch_p50_ms[encoding] = percentile(latencies, 50)
            result.batch_p99_ms[encoding] = percentile(latencies, 99)
        tree = server.tree()
        result.processes, result.pss_mib = len(tree), pss_bytes(tree) / MIB
        return result
    finally:
        server.stop()
        running.remove(server)


# --- report ----------------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def checks(results: dict[str, ServerResult], top: int) -> list[dict[str, Any]]:
    """The serving issue's targets, each as {what, value, target, passed}; a check whose peer was not
    measured in this run is left out rather than guessed."""
    ab = results.get("abflow-ab")
    if ab is None:
        return []
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float, target: str, passed: bool) -> None:
        rows.append({"what": what, "value": round(value, 3), "target": target, "passed": passed})

    ab_top = ab.at(top)
    for peer, minimum in (("seldon", TARGET_VS_SELDON_RPS), ("mlserver", TARGET_VS_MLSERVER_RPS)):
        other = results.get(peer)
        if ab_top and other and other.at(top):
            value = ratio(ab_top.requests_per_second, other.at(top).requests_per_second)  # type: ignore[union-attr]
            add(f"A/B req/s ÷ {other.label} req/s at c={top}", value, f"≥ {minimum:g}×", value >= minimum)
    seldon = results.get("seldon")
    if ab_top and seldon and seldon.at(top):
        value = ratio(ab_top.p99_ms, seldon.at(top).p99_ms)  # type: ignore[union-attr]
        add(
            f"A/B p99 ÷ Seldon wrapper p99 at c={top}",
            value,
            f"≤ {TARGET_P99_VS_SELDON:g}×",
            value <= TARGET_P99_VS_SELDON,
        )
    add("A/B graph PSS after load (MiB)", ab.pss_mib, f"≤ {TARGET_PSS_MIB:g}", ab.pss_mib <= TARGET_PSS_MIB)
    add(
        "A/B first 200 after start (s)",
        ab.first_200_s,
        f"≤ {TARGET_FIRST_200_S:g}",
        ab.first_200_s <= TARGET_FIRST_200_S,
    )
    for encoding, p50 in ab.batch_p50_ms.items():
        add(f"A/B {BATCH_ROWS}-row {encoding} p50 (ms)", p50, f"≤ {TARGET_BATCH_P50_MS:g}", p50 <= TARGET_BATCH_P50_MS)
    return rows


def markdown(results: dict[str, ServerResult], check_rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | c | req/s | p50 ms | p99 ms | server CPU ms/req | non-200 | background cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results.values():
        for load in result.load:
            lines.append(
                f"| {result.label} | {load.concurrency} | {load.requests_per_second:,.0f} | "
                f"{load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.cpu_ms_per_request:.3f} | "
                f"{load.non_200} | {load.background_cores:.2f} |"
            )
    lines += [
        "",
        f"| server | first 200 s | PSS MiB (processes) | {BATCH_ROWS}-row p50 ms | {BATCH_ROWS}-row p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results.values():
        p50 = ", ".join(f"{v:.2f} ({k})" for k, v in result.batch_p50_ms.items())
        p99 = ", ".join(f"{v:.2f} ({k})" for k, v in result.batch_p99_ms.items())
        lines.append(
            f"| {result.label} | {result.first_200_s:.2f} | {result.pss_mib:.0f} ({result.processes}) | {p50} | {p99} |"
        )
    if check_rows:
        lines += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
        lines += [
            f"| {c['what']} | {c['value']:g} | {c['target']} | {'pass' if c['passed'] else 'FAIL'} |"
            for c in check_rows
        ]
    return "\n".join(lines)


def write_model(folder: Path) -> Path:
    """Train the model with the pipeline's own train step and publish it with its store step, into the
    artifact layout every server reads (abflow checks its sha256 and versions against metadata.json)."""
    from urllib.parse import unquote

    from abflow.components.registry import publish_model
    from abflow.components.training import train_iris

    published = publish_model(str(folder), "iris", train_iris(), run_id="bench", version="bench")
    return Path(unquote(urllib.parse.urlparse(published.uri).path))


# --- main ------------------------------------------------------------------------------------------

SERVERS = ["abflow-ab", "abflow-ab-v2", "abflow-single", "seldon", "mlserver"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python bench/serving_bench.py --duration 10 --concurrency 1 8 32\n"
        "         python bench/serving_bench.py --only abflow-ab seldon --duration 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per level (default 10)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="hey connection counts; ratios use the largest (default 1 8 32)",
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of unmeasured load before each level (default 2; 0 skips)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SERVERS,
        default=SERVERS,
        metavar="SERVER",
        help=f"servers to measure, in this order (default: all: {' '.join(SERVERS)})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = RESULTS / f"serving-{stamp}"
    work.mkdir(parents=True)
    model_dir = write_model(work / "model")
    targets = build_targets(args.only, model_dir, work)
    load_before = os.getloadavg()

    running: list[ServerProcess] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C does
    results: dict[str, ServerResult] = {}
    try:
        for target in targets:
            results[target.key] = measure(target, work, args, running)
    finally:
        for server in running:
            server.stop()

    top = max(args.concurrency)
    check_rows = checks(results, top)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "started": stamp,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "abflow_revision": git_revision(("serving",)),
        "settings": {
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "warmup_s": args.warmup,
            "batch_rows": BATCH_ROWS,
            "batch_requests": BATCH_REQUESTS,
        },
        "servers": {key: asdict(result) for key, result in results.items()},
        "checks": check_rows,
    }
    json_path = RESULTS / f"serving-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2))
    print(markdown(results, check_rows))
    print(
        f"\n`{report['command']}` on {os.cpu_count()} CPUs, load average before "
        f"{load_before[0]:.2f}, after {report['load_average_after'][0]:.2f}; abflow {report['abflow_revision']}; "
        f"JSON and server logs: {json_path.relative_to(REPO)}, {work.relative_to(REPO)}/"
    )
    return 0 if all(c["passed"] for c in check_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
