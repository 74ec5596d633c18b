"""What the smoke test of a shadow deployment adds: did the shadow get its copies, answer them, and
agree with the champion?

The served traffic of a shadow deployment is the champion's alone, so ``run_smoke`` checks it as a
one-arm graph; the shadow is seen only through the executor's ``/health/status``, whose counts say
how many served requests were mirrored, answered, failed or dropped and how often the shadow's most
probable class matched the served one. The smoke test fails only when the shadow answered none of
its copies (it is down or cannot serve the rows): agreement is what the user deployed a shadow to
learn, not a pass mark. On a cluster Seldon mirrors through Istio, which discards the shadow's
answers before anything compares them, so there the summary says so instead of inventing a number.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import requests

from abflow.components.smoke import SmokeReport, endpoint_base, run_smoke
from abflow.serving.graph import DEFAULT_ARM_NAMES

HEALTH_PATH = "/health/status"
CATCH_UP_SECONDS = 30.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class ShadowSummary:
    name: str
    fraction: float
    mirrored: int
    answered: int
    errors: int
    dropped: int
    agreement: float | None
    measured: bool = True


def unmeasured(name: str, fraction: float) -> ShadowSummary:
    return ShadowSummary(name, fraction, 0, 0, 0, 0, None, measured=False)


def observe_shadow(endpoint_url: str, served: int, *, catch_up: float = CATCH_UP_SECONDS,
                   timeout: float = 10.0) -> tuple[ShadowSummary | None, str | None]:
    """The shadow's counts once it has accounted for ``served`` requests (or ``catch_up`` seconds
    passed), and the failure to report, if any."""
    url = endpoint_base(endpoint_url) + HEALTH_PATH
    deadline = time.monotonic() + catch_up
    while True:
        try:
            shadow: Any = requests.get(url, timeout=timeout).json().get("shadow")
        except (requests.RequestException, ValueError) as exc:
            return None, f"smoke: cannot read the shadow's counts from {url}: {exc}"
        if not isinstance(shadow, dict):
            return None, (f"smoke: {url} reports no shadow although the deployment is a shadow one: "
                          "redeploy with deploy_mode=shadow, or check the graph (`abflow status`)")
        accounted = sum(int(shadow.get(key, 0)) for key in ("answered", "error", "dropped", "not_mirrored"))
        if accounted >= served or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    summary = ShadowSummary(
        name=str(shadow.get("name")), fraction=float(shadow.get("fraction", 1.0)),
        mirrored=accounted - int(shadow.get("not_mirrored", 0)), answered=int(shadow.get("answered", 0)),
        errors=int(shadow.get("error", 0)), dropped=int(shadow.get("dropped", 0)),
        agreement=shadow.get("agreement"),
    )
    if summary.mirrored and not summary.answered:
        return summary, (f"smoke: the shadow {summary.name} answered none of the {summary.mirrored} requests "
                         f"mirrored to it ({summary.errors} errors, {summary.dropped} dropped): check that it "
                         "is up and serves these rows (`abflow status`, the serve log)")
    return summary, None


def with_shadow(report: SmokeReport, summary: ShadowSummary | None, failure: str | None) -> SmokeReport:
    """``report`` with the shadow's summary and, when there is one, its failure."""
    failures = [*report.failures, *([failure] if failure else [])]
    return dataclasses.replace(report, failures=failures, passed=not failures,
                               shadow=dataclasses.asdict(summary) if summary is not None else None)


def smoke_shadow_deployment(endpoint_url: str, record_json: str, *, requests: int,
                            p99_budget_ms: float) -> SmokeReport:
    """The smoke test of a ``deploy_mode=shadow`` deployment: the champion answers every request
    (a one-arm graph), then the shadow's counts, measured on the local target."""
    record = json.loads(record_json)
    report = run_smoke(endpoint_url, requests=requests, ratio_a=1.0, router_name=None,
                       arm_names=DEFAULT_ARM_NAMES[:1], p99_budget_ms=p99_budget_ms)
    if record.get("target") != "local":
        fraction = float(record.get("details", {}).get("shadow_fraction") or 1.0)
        return with_shadow(report, unmeasured(DEFAULT_ARM_NAMES[1], fraction), None)
    return with_shadow(report, *observe_shadow(endpoint_url, report.requests))
