"""The A/B endpoint under abuse and faults, by hand: does one bad client cost the others anything?

Starts the tutorial's ``ab_test.json`` (OAuth on, both arms the pipeline's own iris model) with
``abflow serve`` on 127.0.0.1 and measures, in one run:

* a normal client's p50/p99 (one keep-alive connection, tutorial request, bearer token) at idle, and
  while, from a separate process, (a) 4 clients post 8 MiB token bodies without credentials in a loop,
  (b) 40 connections, with a valid token, each send 7 of a declared 8 MiB prediction body and hold
  (reconnecting 0.1 s after the server refuses or closes them), (c) 500 connections trickle their
  headers one byte a second (reconnecting when cut off);
* the executor's (supervisor's) RSS growth: the peak during each abuse, and 10 s after it stops;
* failed requests of 8 keep-alive clients while an arm is SIGKILLed, while an arm is SIGSTOPped (until
  the supervisor has replaced it) and while the executor gets SIGTERM. A failed request is a non-200
  or an error on a request sent on an open connection; after a ``Connection: close`` answer a client
  stops (it would reconnect to a successor; here there is none).

Goals (issue 8): normal-client p50 under each abuse ≤ 2× idle; RSS growth ≤ 64 MiB and back (within
16 MiB of where it started) within 10 s; 0 failed requests on SIGTERM, arm SIGKILL and arm SIGSTOP
with failover on (the default). Exits 1 when a goal is missed.

    python bench/abuse.py                  # about 2 minutes
    python bench/abuse.py --duration 5    # seconds of normal-client measurement per phase
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from load import percentile
from proctree import ServerProcess, cpu_seconds
from provenance import git_revision
from serving_bench import RESULTS, TUTORIAL, abflow_executable, free_port, write_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.fixtures.arms reads the graph's arms from /proc

from tests.fixtures.arms import graph_arms  # noqa: E402 - after the path it needs

MIB = 1024 * 1024
PAYLOAD = json.dumps({"data": {"names": ["sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm"],
                               "tensor": {"shape": [1, 4], "values": [5.1, 3.5, 1.4, 0.2]}}}).encode()
PREDICT = "/api/v1.0/predictions"
FAULT_CLIENTS = 8
RSS_SAMPLE_S = 0.2
SETTLE_S = 10.0
RSS_BACK_MIB = 16.0
TARGET_P50_RATIO = 2.0
TARGET_RSS_MIB = 64.0


# --- the abusers (run in their own process, so they do not share the normal client's interpreter) --


async def token_bodies(port: int, clients: int = 4, size: int = 8 * MIB) -> None:
    """(a): POST /oauth/token with an 8 MiB form and no credentials, again as soon as it is answered."""
    head = (f"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    chunk = b"grant_type=client_credentials&pad=" + b"x" * (256 * 1024 - 34)

    async def client() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                answer = asyncio.ensure_future(reader.read(65536))
                sent = 0
                while sent < size and not answer.done():
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
                await answer
                writer.close()
            except OSError:
                continue

    await asyncio.gather(*(client() for _ in range(clients)))


async def partial_bodies(port: int, token: str, connections: int = 40, declared: int = 8 * MIB,
                         sent: int = 7 * MIB) -> None:
    """(b): a valid token, 7 MiB of a declared 8 MiB body, then silence until the server lets go."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {declared}\r\n\r\n").encode()
    chunk = b'{"data":' + b" " * (256 * 1024 - 8)

    async def holder() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head)
                answer = asyncio.ensure_future(reader.read(65536))
                written = 0
                while written < sent and not answer.done():
                    writer.write(chunk)
                    await writer.drain()
                    written += len(chunk)
                await answer  # held until the server answers (503 at once, or 408 after its body timeout)
                writer.close()
            except OSError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.gather(*(holder() for _ in range(connections)))


async def trickled_headers(port: int, connections: int = 500) -> None:
    """(c): a request line, then one header byte a second, reconnecting when cut off."""

    async def trickler(first_delay: float) -> None:
        await asyncio.sleep(first_delay)
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
                answer = asyncio.ensure_future(reader.read(65536))
                while not answer.done():
                    writer.write(b"x")
                    await asyncio.wait([answer], timeout=1.0)
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(trickler(i / connections) for i in range(connections)))


def run_abuser(kind: str, port: int, token: str) -> None:
    coroutine = {"a": lambda: token_bodies(port), "b": lambda: partial_bodies(port, token),
                 "c": lambda: trickled_headers(port)}[kind]
    asyncio.run(coroutine())


# --- measuring -------------------------------------------------------------------------------------


def get_token(port: int) -> str:
    basic = base64.b64encode(b"oauth-key:oauth-secret").decode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/oauth/token", data=b"grant_type=client_credentials",
                                     headers={"Authorization": f"Basic {basic}"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.load(response)["access_token"]
    return token


def normal_client(port: int, token: str, seconds: float) -> dict[str, Any]:
    """Tutorial predictions one after another on one keep-alive connection for ``seconds``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    latencies, errors = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        try:
            connection.request("POST", PREDICT, body=PAYLOAD, headers=headers)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok = False
        latencies.append((time.perf_counter() - began) * 1000)
        errors += not ok
    connection.close()
    return {"requests": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99)}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mib(pid)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, rss_mib(self.pid))

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def abuse_phase(kind: str, label: str, server: ServerProcess, port: int, token: str, seconds: float) -> dict[str, Any]:
    before = rss_mib(server.pid)
    cpu_before = cpu_seconds([server.pid])
    sampler = RssSampler(server.pid)
    sampler.start()
    abuser = multiprocessing.Process(target=run_abuser, args=(kind, port, token), daemon=True)
    abuser.start()
    time.sleep(1.5)  # the abuse reaches its steady state (connections open, budgets taken)
    measured = normal_client(port, token, seconds)
    abuser_cpu = cpu_seconds([abuser.pid]) if abuser.pid else 0.0
    cpu_during = cpu_seconds([server.pid]) - cpu_before
    abuser.terminate()
    abuser.join()
    peak = sampler.stop()
    back_after = None
    settle_end = time.monotonic() + SETTLE_S
    started = time.monotonic()
    while time.monotonic() < settle_end:
        if rss_mib(server.pid) - before <= RSS_BACK_MIB:
            back_after = time.monotonic() - started
            break
        time.sleep(RSS_SAMPLE_S)
    after = rss_mib(server.pid)
    return {"phase": label, **measured, "rss_before_mib": before, "rss_growth_peak_mib": peak - before,
            "rss_growth_after_mib": after - before, "rss_back_after_s": back_after,
            "executor_cpu_s": cpu_during, "abuser_cpu_s": abuser_cpu}


class SteadyClient(threading.Thread):
    """Predictions back to back on one keep-alive connection, counting failures, until stopped or
    until the server answers with ``Connection: close``."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.token = token
        self.stopping = threading.Event()
        self.requests = 0
        self.failures: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
        while not self.stopping.is_set():
            try:
                connection.request("POST", PREDICT, body=PAYLOAD, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                return
            self.requests += 1
            if response.status != 200:
                self.failures.append(f"{response.status}: {body[:200]!r}")
            if (response.getheader("Connection") or "").lower() == "close":
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/status", timeout=5) as response:
            report: dict[str, Any] = json.load(response)
            return report
    except OSError:
        return {}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def fault_phase(label: str, server: ServerProcess, port: int, token: str, fault: Callable[[], Callable[[], bool]],
                ) -> dict[str, Any]:
    """Load from ``FAULT_CLIENTS`` clients, then ``fault()``, which returns when the fault is over."""
    clients = [SteadyClient(port, token) for _ in range(FAULT_CLIENTS)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    began = sum(c.requests for c in clients)
    started = time.monotonic()
    over = fault()
    wait_for(over, 90, f"the end of {label}")
    duration = time.monotonic() - started
    for client in clients:
        client.stop()
    failures = [failure for c in clients for failure in c.failures]
    return {"phase": label, "requests_during": sum(c.requests for c in clients) - began, "failed": len(failures),
            "first_failures": failures[:3], "seconds": duration}


def arm_fault(server: ServerProcess, port: int, signum: signal.Signals) -> Callable[[], Callable[[], bool]]:
    def fault() -> Callable[[], bool]:
        victim = graph_arms(server.pid, 2)[1]
        os.kill(victim, signum)

        def replaced() -> bool:
            return health(port).get("status") == "ok" and graph_arms(server.pid, 2)[1] != victim

        def over() -> bool:
            if not replaced():
                return False
            if signum == signal.SIGSTOP:
                with suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGCONT)
            return True

        return over

    return fault


def sigterm_fault(server: ServerProcess) -> Callable[[], Callable[[], bool]]:
    def fault() -> Callable[[], bool]:
        server.process.send_signal(signal.SIGTERM)
        return lambda: server.exited() is not None

    return fault


def start_graph(model_dir: Path, work: Path) -> tuple[ServerProcess, int, str]:
    port = free_port()
    command = [abflow_executable(), "serve", str(TUTORIAL / "ab_test.json"), "--port", str(port),
               "--model", f"classifier-1={model_dir}", "--model", f"classifier-2={model_dir}"]
    server = ServerProcess(command, env=dict(os.environ), cwd=REPO, log_path=work / f"serve-{port}.log")
    deadline = time.monotonic() + 120
    while True:
        if server.exited() is not None:
            raise RuntimeError(f"abflow serve exited:\n{server.log_tail()}")
        try:
            return server, port, get_token(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- report ----------------------------------------------------------------------------------------


def markdown(idle: dict[str, Any], abuses: list[dict[str, Any]], faults: list[dict[str, Any]]) -> str:
    lines = ["| phase | normal p50 ms | normal p99 ms | ÷ idle p50 | normal errors | executor RSS growth peak / "
             "after MiB | back within 10 s | executor CPU s | abuser CPU s |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|",
             f"| idle | {idle['p50_ms']:.2f} | {idle['p99_ms']:.2f} | 1.00× | {idle['errors']} | – | – | – | – |"]
    for row in abuses:
        back = f"yes, {row['rss_back_after_s']:.1f} s" if row["rss_back_after_s"] is not None else "no"
        lines.append(f"| {row['phase']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['p50_ms'] / idle['p50_ms']:.2f}× | {row['errors']} | "
                     f"{row['rss_growth_peak_mib']:.1f} / {row['rss_growth_after_mib']:.1f} | {back} | "
                     f"{row['executor_cpu_s']:.2f} | {row['abuser_cpu_s']:.2f} |")
    lines += ["", "| fault under load (8 keep-alive clients) | requests during | failed | seconds |",
              "|---|---:|---:|---:|"]
    lines += [f"| {row['phase']} | {row['requests_during']} | {row['failed']} | {row['seconds']:.1f} |"
              for row in faults]
    return "\n".join(lines)


def checks(idle: dict[str, Any], abuses: list[dict[str, Any]], faults: list[dict[str, Any]]) -> list[str]:
    missed = []
    for row in abuses:
        if row["p50_ms"] > TARGET_P50_RATIO * idle["p50_ms"]:
            missed.append(f"{row['phase']}: p50 {row['p50_ms']:.2f} ms > {TARGET_P50_RATIO}× idle")
        if row["rss_growth_peak_mib"] > TARGET_RSS_MIB:
            missed.append(f"{row['phase']}: RSS grew {row['rss_growth_peak_mib']:.1f} MiB > {TARGET_RSS_MIB}")
        if row["rss_back_after_s"] is None:
            missed.append(f"{row['phase']}: RSS not back within {SETTLE_S:g} s")
    missed += [f"{row['phase']}: {row['failed']} failed requests" for row in faults if row["failed"]]
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds of normal-client measurement per phase (default 8)")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = RESULTS / f"abuse-{stamp}"
    work.mkdir(parents=True)
    model_dir = write_model(work / "model")
    load_before = os.getloadavg()[0]
    server, port, token = start_graph(model_dir, work)
    try:
        normal_client(port, token, 1.0)  # warm-up
        idle = {"phase": "idle", **normal_client(port, token, args.duration)}
        print(f"idle: p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms", flush=True)
        abuses = []
        for kind, label in [("a", "(a) 4 clients posting 8 MiB token bodies without credentials"),
                            ("b", "(b) 40 connections holding 7 of 8 MiB prediction bodies (valid token)"),
                            ("c", "(c) 500 connections trickling headers")]:
            row = abuse_phase(kind, label, server, port, token, args.duration)
            print(f"{label}: p50 {row['p50_ms']:.2f} ms, RSS +{row['rss_growth_peak_mib']:.1f} MiB", flush=True)
            abuses.append(row)
        faults = [fault_phase("arm SIGKILL", server, port, token, arm_fault(server, port, signal.SIGKILL)),
                  fault_phase("arm SIGSTOP (until replaced)", server, port, token,
                              arm_fault(server, port, signal.SIGSTOP)),
                  fault_phase("executor SIGTERM", server, port, token, sigterm_fault(server))]
    finally:
        server.stop()
    revision = git_revision(["serving"])
    table = markdown(idle, abuses, faults)
    print(table)
    print(f"\n`python bench/abuse.py --duration {args.duration:g}` on {os.cpu_count()} CPUs, load average before "
          f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}; abflow {revision}; results: {work}.json")
    missed = checks(idle, abuses, faults)
    print("\n" + ("all goals met" if not missed else "missed:\n" + "\n".join(f"- {m}" for m in missed)))
    (work.parent / f"{work.name}.json").write_text(json.dumps(
        {"revision": revision, "idle": idle, "abuses": abuses, "faults": faults, "missed": missed}, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
