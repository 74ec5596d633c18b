"""Load generators: ``hey`` for throughput under concurrency, one keep-alive connection for latency.

``hey`` (a Go binary) is the load generator for req/s and percentiles because a Python client on a
2-core machine would be the bottleneck long before the servers are. Per-request latency of a large
body is measured from Python over one persistent connection, so the number is the server's time plus
a loopback round trip, without connection set-up or a client's start-up in it.
"""

from __future__ import annotations

import http.client
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HeyResult:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]
    errors: int

    @property
    def non_200(self) -> int:
        return self.requests - self.statuses.get(200, 0) + self.errors


def hey_binary() -> str:
    found = shutil.which("hey")
    if not found:
        raise SystemExit("hey is not installed: apt-get install hey (Debian) or go install github.com/rakyll/hey")
    return found


def run_hey(url: str, body: Path, *, concurrency: int, seconds: float, headers: dict[str, str]) -> HeyResult:
    """POST ``body`` to ``url`` from ``concurrency`` keep-alive connections for ``seconds``."""
    command = [
        hey_binary(),
        "-z",
        f"{seconds}s",
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body),
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    return parse_hey(output)


def parse_hey(output: str) -> HeyResult:
    """Read hey's text summary: ``Requests/sec:``, the latency distribution (seconds) and the status
    code and error distributions."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise ValueError(f"no Requests/sec in hey's output:\n{output}")
    percentiles = {int(p): float(s) * 1000 for p, s in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", output, re.M)}
    statuses = {int(code): int(n) for code, n in re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", output, re.M)}
    errors_part = output.split("Error distribution:", 1)[1] if "Error distribution:" in output else ""
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", errors_part, re.M))
    return HeyResult(
        requests=sum(statuses.values()),
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles.get(50, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
        statuses=statuses,
        errors=errors,
    )


def keepalive_latencies_ms(
    url: str, body: bytes, *, headers: dict[str, str], requests: int, warmup: int
) -> list[float]:
    """Latency of each of ``requests`` POSTs sent one after another on one connection.

    http.client sends a bytes body in the same write as the headers, so neither side's Nagle delay
    can add the 40 ms a split write would cost."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    all_headers = {"Content-Type": "application/json", **headers}
    latencies = []
    try:
        for i in range(warmup + requests):
            began = time.perf_counter()
            connection.request("POST", parts.path, body=body, headers=all_headers)
            response = connection.getresponse()
            payload = response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}: {payload[:300]!r}")
            if i >= warmup:
                latencies.append(elapsed)
    finally:
        connection.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (1..99), interpolated between samples."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]
