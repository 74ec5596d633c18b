"""The A/B graph under a real load generator: ``hey`` (Debian package) drives the tutorial's
``ab_test.json`` on 127.0.0.1 with 16 concurrent keep-alive clients, and the executor's own
Prometheus counters must account for every request, per arm, in the configured split."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from scipy.stats import binomtest

from tests.fixtures.serving import TUTORIAL_PAYLOAD, ServedGraph

REQUESTS = 2000
ARMS = ("classifier-1", "classifier-2")


def served_per_arm(graph: ServedGraph) -> dict[str, float]:
    text = graph.session.get(f"{graph.url}/metrics", timeout=10).text
    counts = dict.fromkeys(ARMS, 0.0)
    for arm, code, value in re.findall(r'^abflow_requests_total\{arm="([^"]+)",code="(\d+)"\} (\S+)$', text, re.M):
        if code == "200" and arm in counts:
            counts[arm] += float(value)
    return counts


def test_every_request_under_concurrent_load_is_served_and_counted_per_arm(tutorial_ab: ServedGraph) -> None:
    hey = shutil.which("hey")
    assert hey, "the load generator `hey` is missing: run scripts/install-test-deps.sh"
    token = tutorial_ab.get_token()
    before = served_per_arm(tutorial_ab)
    result = subprocess.run(
        [hey, "-n", str(REQUESTS), "-c", "16", "-m", "POST", "-T", "application/json",
         "-H", f"Authorization: Bearer {token}", "-d", json.dumps(TUTORIAL_PAYLOAD),
         f"{tutorial_ab.url}/api/v1.0/predictions"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert re.search(rf"\[200\]\s+{REQUESTS} responses", result.stdout), result.stdout
    after = served_per_arm(tutorial_ab)
    served = {arm: after[arm] - before[arm] for arm in ARMS}
    assert sum(served.values()) == REQUESTS, served
    assert binomtest(int(served["classifier-1"]), REQUESTS, 0.5).pvalue >= 0.001, served
