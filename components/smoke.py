"""Post-deploy smoke test of an A/B endpoint: does it answer like the Seldon graph users deployed?

The pipeline runs this right after ``deploy_ab`` and rolls back when it fails, so every check here is
one a user would otherwise discover in production: errors, a response that breaks their client
(schema, class names, probabilities), a router that hides which arm served (``meta.routing``), an arm
that never gets traffic, a split that is not the ``ratio_a`` they asked for, or a slow tail. Each
failure names what to do next, because the person reading it is looking at a failed pipeline run.

Plain logic, no KFP import: the KFP component is a thin wrapper that logs ``SmokeReport.as_metrics()``
and writes ``render_html_report`` to an ``Output[HTML]``.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from requests import RequestException, Session, Timeout, get, post
from scipy.stats import binomtest

from abflow.serving.artifact import DEFAULT_CLASS_NAMES, DEFAULT_FEATURE_NAMES
from abflow.serving.graph import DEFAULT_ARM_NAMES, DEFAULT_ROUTER_NAME, check_ratio

PREDICTIONS_PATH = "/api/v1.0/predictions"
OAUTH_TOKEN_PATH = "/oauth/token"
PROBABILITY_TOLERANCE = 1e-6
# Fixed (not data-driven) edges so histograms from different runs can be compared by eye.
LATENCY_EDGES_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
UNROUTED = "unrouted"

# Real rows of the iris data set, a few per species, so both arms see the feature ranges they were
# trained on and a model that only handles one species still gets exercised on all three.
IRIS_ROWS: tuple[tuple[float, float, float, float], ...] = (
    (5.1, 3.5, 1.4, 0.2),
    (4.9, 3.0, 1.4, 0.2),
    (5.4, 3.7, 1.5, 0.2),
    (4.8, 3.1, 1.6, 0.2),
    (5.0, 3.5, 1.3, 0.3),
    (7.0, 3.2, 4.7, 1.4),
    (5.0, 2.0, 3.5, 1.0),
    (5.9, 3.2, 4.8, 1.8),
    (5.5, 2.4, 3.8, 1.1),
    (5.5, 2.6, 4.4, 1.2),
    (6.3, 3.3, 6.0, 2.5),
    (6.5, 3.2, 5.1, 2.0),
    (6.9, 3.2, 5.7, 2.3),
    (7.4, 2.8, 6.1, 1.9),
    (6.7, 3.1, 5.6, 2.4),
)

# Problem categories a single response can have; each maps to one failure line with its own advice.
NOT_JSON = "not-json"
SCHEMA = "schema"
CLASS_NAMES = "class-names"
PROBABILITIES = "probabilities"
ROUTING = "routing"


class SmokeFailed(RuntimeError):
    """The endpoint answered, but not the way the deployed graph promises; the message lists why."""


@dataclass(frozen=True)
class LatencyHistogram:
    """Latency counts per arm. Bucket ``i`` holds ``edges_ms[i-1] <= ms < edges_ms[i]``; bucket 0 starts
    at 0 and the last bucket is open-ended, so ``len(counts[arm]) == len(edges_ms) + 1``."""

    edges_ms: list[float]
    counts: dict[str, list[int]]


@dataclass(frozen=True)
class SmokeReport:
    """Everything one smoke run saw; JSON-serialisable via ``to_dict`` so it can travel as an artifact."""

    passed: bool
    failures: list[str]
    endpoint_url: str
    requests: int
    valid_responses: int
    ratio_a: float
    router_name: str | None
    arm_names: list[str]
    arm_counts: dict[str, int]
    arm_a_share: float | None
    p_value: float | None
    min_p_value: float
    latency_ms: dict[str, float]
    p99_budget_ms: float
    errors_by_status: dict[str, int]
    histogram: LatencyHistogram
    duration_s: float
    shadow: dict[str, Any] | None = None
    """A shadow deployment's ``ShadowSummary`` (``abflow.components.shadow_smoke``), as a dict."""
    failovers: int = 0
    """Requests the executor moved off their routed arm (down or too slow) during the test."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def as_metrics(self) -> dict[str, float]:
        """Scalars for a KFP ``Output[Metrics]`` (which accepts numbers only)."""
        values: dict[str, float] = {
            "smoke_passed": 1.0 if self.passed else 0.0,
            "smoke_requests": float(self.requests),
            "smoke_valid_responses": float(self.valid_responses),
            "smoke_errors": float(sum(self.errors_by_status.values())),
            "smoke_latency_p50_ms": self.latency_ms["p50"],
            "smoke_latency_p90_ms": self.latency_ms["p90"],
            "smoke_latency_p99_ms": self.latency_ms["p99"],
        }
        for index, name in enumerate(self.arm_names):
            values[f"smoke_arm_{index}_count"] = float(self.arm_counts.get(name, 0))
        if self.arm_a_share is not None:
            values["smoke_arm_a_share"] = self.arm_a_share
        if self.p_value is not None:
            values["smoke_split_p_value"] = self.p_value
        if self.shadow is not None and self.shadow["measured"]:
            values["smoke_shadow_mirrored"] = float(self.shadow["mirrored"])
            values["smoke_shadow_answered"] = float(self.shadow["answered"])
            if self.shadow["agreement"] is not None:
                values["smoke_shadow_agreement"] = float(self.shadow["agreement"])
        return values

    def describe(self) -> str:
        """One line for a step's log: the split and the tail latency a reader checks first."""
        arms = ", ".join(f"{name} {self.arm_counts.get(name, 0)}" for name in self.arm_names)
        p_value = f"{self.p_value:.2g}" if self.p_value is not None else "n/a"
        shadow = f"; {_shadow_words(self.shadow)}" if self.shadow is not None else ""
        moved = f"; {self.failovers} failed over, the split judged as routed" if self.failovers else ""
        return (f"{self.valid_responses}/{self.requests} valid; {arms}; split p={p_value} "
                f"for ratio_a={self.ratio_a:g}; p99 {self.latency_ms['p99']:.1f} ms{moved}{shadow}")


@dataclass(frozen=True)
class ResponseCheck:
    """What one response body told us: which arm served it (if it said so) and what was wrong."""

    arm: int | None
    router: str | None
    problems: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    status: int | None
    error: str | None
    latency_ms: float | None
    check: ResponseCheck | None


def payload_for(row: Sequence[float]) -> dict[str, Any]:
    """The request body exactly as the tutorial sends it (tensor encoding, the tutorial's names)."""
    return {"data": {"names": list(DEFAULT_FEATURE_NAMES), "tensor": {"shape": [1, 4], "values": list(row)}}}


def predictions_url(endpoint_url: str) -> str:
    """Accept a base URL (what deploy records) or a full predictions URL (what users paste)."""
    stripped = endpoint_url.rstrip("/")
    return stripped if stripped.endswith("/predictions") else stripped + PREDICTIONS_PATH


def endpoint_base(endpoint_url: str) -> str:
    """The endpoint's root (where ``/metrics`` and ``/health/status`` are), from either form."""
    stripped = endpoint_url.rstrip("/")
    return stripped.rsplit("/api/", 1)[0] if stripped.endswith("/predictions") else stripped


def check_response(body: Any, *, router_name: str | None, class_names: Sequence[str],
                   arm_count: int = 2) -> ResponseCheck:
    """Check one decoded 200 response against the Seldon contract; never raises on bad input.

    ``router_name=None`` accepts whichever single router node the response names, for graphs whose
    router the caller does not know (e.g. a user's own SeldonDeployment).
    """
    problems: dict[str, str] = {}
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        problems[SCHEMA] = f"no 'data' object in {_preview(body)}"
    else:
        _check_data(data, class_names, problems)
    arm, router = _check_routing(body, router_name, arm_count, problems)
    return ResponseCheck(arm=arm, router=router, problems=problems)


def _check_data(data: Mapping[str, Any], class_names: Sequence[str], problems: dict[str, str]) -> None:
    names = data.get("names")
    tensor = data.get("tensor")
    if not isinstance(tensor, dict):
        problems[SCHEMA] = f"no 'data.tensor' (the request used the tensor encoding) in {_preview(data)}"
        return
    shape, values = tensor.get("shape"), tensor.get("values")
    expected_shape = [1, len(class_names)]
    if shape != expected_shape:
        problems[SCHEMA] = f"data.tensor.shape is {shape!r}, expected {expected_shape}"
        return
    if (not isinstance(values, list) or len(values) != len(class_names)
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
        problems[SCHEMA] = f"data.tensor.values is {_preview(values)}, expected {len(class_names)} numbers"
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems[SCHEMA] = f"data.names is {_preview(names)}, expected a list of class names"
    elif names != list(class_names):
        problems[CLASS_NAMES] = f"{names}"
    total = math.fsum(values)
    if abs(total - 1.0) > PROBABILITY_TOLERANCE or any(v < 0 or v > 1 for v in values):
        problems[PROBABILITIES] = f"values {values} sum to {total!r}"


def _check_routing(body: Any, router_name: str | None, arm_count: int,
                   problems: dict[str, str]) -> tuple[int | None, str | None]:
    """The arm ``meta.routing`` names; a graph of one serving model routes nothing, so its
    responses are that model's (arm 0)."""
    meta = body.get("meta") if isinstance(body, dict) else None
    routing = meta.get("routing") if isinstance(meta, dict) else None
    if arm_count == 1 and not routing:
        return 0, None
    if not isinstance(routing, dict) or not routing:
        problems[ROUTING] = f"no meta.routing in meta={_preview(meta)}"
        return None, None
    if router_name is None:
        if len(routing) != 1:
            problems[ROUTING] = f"meta.routing={_preview(routing)} names several nodes"
            return None, None
        router_name = next(iter(routing))
    if router_name not in routing:
        problems[ROUTING] = f"meta.routing={_preview(routing)} has no entry for {router_name!r}"
        return None, router_name
    arm = routing[router_name]
    if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < arm_count:
        problems[ROUTING] = f"meta.routing[{router_name!r}]={arm!r} is not an arm index 0..{arm_count - 1}"
        return None, router_name
    return arm, router_name


def _preview(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_smoke(endpoint_url: str, *, requests: int = 200, ratio_a: float,
              router_name: str | None = DEFAULT_ROUTER_NAME,
              class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
              arm_names: Sequence[str] = DEFAULT_ARM_NAMES,
              p99_budget_ms: float = 500, concurrency: int = 4, min_p_value: float = 0.001,
              timeout: float = 10, oauth: tuple[str, str] | None = None,
              count_failovers: bool = False) -> SmokeReport:
    """Send ``requests`` tutorial-format predictions over ``concurrency`` keep-alive connections and
    judge the answers. Never raises for a misbehaving endpoint (that is a failed report; see
    ``require_pass``); raises ``ValueError`` only for arguments that make the test meaningless.

    ``oauth`` is a graph's ``(spec.oauth_key, spec.oauth_secret)``: graphs like the tutorial's only
    answer callers holding a bearer token from ``POST /oauth/token``, as Seldon's gateway did.

    ``count_failovers`` (abflow's own executor, whose ``/metrics`` count ``abflow_failovers_total``):
    a request whose routed arm was down or too slow is answered by the other arm, and ``meta.routing``
    names the arm that answered, so on a loaded machine the answered split drifts from the router's.
    The split is then judged on the router's choices: each failover counted back to its routed arm.
    """
    _validate_arguments(requests, ratio_a, concurrency, p99_budget_ms, min_p_value, arm_names)
    url = predictions_url(endpoint_url)
    started = time.perf_counter()
    headers, token_failure = _auth_headers(url, oauth, timeout)
    moved_before = _failovers(endpoint_url, arm_names, timeout) if count_failovers else None
    workers = min(concurrency, requests)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smoke") as pool:
        chunks = pool.map(lambda w: _send_chunk(url, range(w, requests, workers), headers, router_name,
                                                class_names, len(arm_names), timeout), range(workers))
        observations = [obs for chunk in chunks for obs in chunk]
    duration = time.perf_counter() - started
    moved: Counter[tuple[int, int]] = Counter()
    if moved_before is not None:
        moved = (_failovers(endpoint_url, arm_names, timeout) or Counter()) - moved_before
    return judge(observations, endpoint_url=endpoint_url, ratio_a=ratio_a, router_name=router_name,
                 class_names=class_names, arm_names=arm_names, p99_budget_ms=p99_budget_ms,
                 min_p_value=min_p_value, timeout=timeout, duration_s=duration,
                 extra_failures=[token_failure] if token_failure else [], failovers=moved)


def _failovers(endpoint_url: str, arm_names: Sequence[str], timeout: float) -> Counter[tuple[int, int]] | None:
    """``abflow_failovers_total`` by (routed arm, answering arm) index, from the executor's ``/metrics``;
    ``None`` when the endpoint has none (not abflow's executor)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = get(f"{endpoint_base(endpoint_url)}/metrics", timeout=timeout)
    except RequestException:
        return None
    if response.status_code != 200:
        return None
    counts: Counter[tuple[int, int]] = Counter()
    index = {name: i for i, name in enumerate(arm_names)}
    for family in text_string_to_metric_families(response.text):
        if family.name != "abflow_failovers":
            continue
        for sample in family.samples:
            routed, answered = index.get(sample.labels.get("arm", "")), index.get(sample.labels.get("to", ""))
            if sample.name.endswith("_total") and routed is not None and answered is not None:
                counts[(routed, answered)] += int(sample.value)
    return counts


def _auth_headers(url: str, oauth: tuple[str, str] | None, timeout: float) -> tuple[dict[str, str], str | None]:
    """A bearer token for the whole run (one token, like one client), or the reason there is none."""
    if oauth is None:
        return {}, None
    token_url = url[: url.index("/api/")] + OAUTH_TOKEN_PATH if "/api/" in url else url + OAUTH_TOKEN_PATH
    try:
        response = post(token_url, auth=oauth, data={"grant_type": "client_credentials"}, timeout=timeout)
        token = response.json()["access_token"] if response.status_code == 200 else None
    except (RequestException, ValueError, KeyError, TypeError) as exc:
        return {}, f"smoke: could not get an OAuth token from {token_url} ({exc}): check that the endpoint is up"
    if not isinstance(token, str):
        return {}, (f"smoke: {token_url} refused the OAuth credentials (HTTP {response.status_code}: "
                    f"{_error_info(response.content)}): pass the graph's spec.oauth_key and oauth_secret")
    return {"Authorization": f"Bearer {token}"}, None


def _validate_arguments(requests: int, ratio_a: float, concurrency: int, p99_budget_ms: float,
                        min_p_value: float, arm_names: Sequence[str]) -> None:
    check_ratio(ratio_a, "ratio_a")
    if requests < 1:
        raise ValueError(f"requests must be at least 1, got {requests}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not p99_budget_ms >= 0:
        raise ValueError(f"p99_budget_ms must be a non-negative number of milliseconds, got {p99_budget_ms}")
    if not 0.0 <= min_p_value < 1.0:
        raise ValueError(f"min_p_value must be in [0, 1), got {min_p_value}")
    if len(arm_names) not in (1, 2):
        raise ValueError(f"an A/B graph has two arms (a model serving alone: one), got arm_names={list(arm_names)}")
    if len(arm_names) == 1 and ratio_a != 1.0:
        raise ValueError(f"one arm serves everything: ratio_a must be 1, got {ratio_a:g}")


def _send_chunk(url: str, indices: range, headers: Mapping[str, str], router_name: str | None,
                class_names: Sequence[str], arm_count: int, timeout: float) -> list[Observation]:
    """One worker: its own ``requests.Session`` (sessions are not guaranteed thread-safe), reused for
    every request so latency measures the server, not TCP handshakes."""
    with Session() as session:
        session.headers.update(headers)
        return [_send_one(session, url, IRIS_ROWS[i % len(IRIS_ROWS)], router_name, class_names,
                          arm_count, timeout) for i in indices]


def _send_one(session: Session, url: str, row: Sequence[float], router_name: str | None,
              class_names: Sequence[str], arm_count: int, timeout: float) -> Observation:
    started = time.perf_counter()
    try:
        response = session.post(url, json=payload_for(row), timeout=timeout)
        content = response.content
    except Timeout:
        return Observation(status=None, error="timeout", latency_ms=None, check=None)
    except RequestException as exc:
        error = f"connection-error: {type(exc).__name__}: {exc}"
        return Observation(status=None, error=error, latency_ms=None, check=None)
    latency_ms = (time.perf_counter() - started) * 1000.0
    if response.status_code != 200:
        return Observation(status=response.status_code, error=_error_info(content), latency_ms=latency_ms,
                           check=None)
    try:
        body = json.loads(content)
    except ValueError:
        not_json = ResponseCheck(arm=None, router=None,
                                 problems={NOT_JSON: _preview(content[:200].decode("utf-8", "replace"))})
        return Observation(status=200, error=None, latency_ms=latency_ms, check=not_json)
    check = check_response(body, router_name=router_name, class_names=class_names, arm_count=arm_count)
    return Observation(status=200, error=None, latency_ms=latency_ms, check=check)


def _error_info(content: bytes) -> str:
    """The Seldon error body's ``status.info`` when there is one, else the start of the body."""
    try:
        body = json.loads(content)
        info = body["status"]["info"]
        if isinstance(info, str):
            return info
    except (ValueError, KeyError, TypeError):
        pass
    return _preview(content[:200].decode("utf-8", "replace"))


def judge(observations: Sequence[Observation], *, endpoint_url: str, ratio_a: float,
          router_name: str | None, class_names: Sequence[str], arm_names: Sequence[str],
          p99_budget_ms: float, min_p_value: float, timeout: float, duration_s: float,
          extra_failures: Sequence[str] = (), failovers: Mapping[tuple[int, int], int] | None = None) -> SmokeReport:
    """Turn raw observations into a report; separate from sending so the verdict logic reads alone.
    ``failovers`` (routed arm, answering arm) → count are counted back to the routed arm for the split."""
    total = len(observations)
    failures: list[str] = list(extra_failures)
    errors_by_status: Counter[str] = Counter()
    problem_counts: Counter[str] = Counter()
    problem_examples: dict[str, str] = {}
    error_examples: dict[str, str] = {}
    arm_hits: Counter[int] = Counter()
    seen_router = router_name
    valid = 0
    for obs in observations:
        if obs.check is None:
            key = str(obs.status) if obs.status is not None else (obs.error or "").split(":")[0]
            errors_by_status[key] += 1
            error_examples.setdefault(key, obs.error or "")
            continue
        for category, detail in obs.check.problems.items():
            problem_counts[category] += 1
            problem_examples.setdefault(category, detail)
        if obs.check.arm is not None:
            arm_hits[obs.check.arm] += 1
            seen_router = seen_router or obs.check.router
        if not obs.check.problems:
            valid += 1

    for key, count in sorted(errors_by_status.items()):
        failures.append(_error_failure(key, count, total, error_examples[key], endpoint_url, timeout))
    expected_names = list(class_names)
    for category in (NOT_JSON, SCHEMA, CLASS_NAMES, PROBABILITIES, ROUTING):
        if problem_counts[category]:
            failures.append(_problem_failure(category, problem_counts[category], total,
                                             problem_examples[category], expected_names, router_name))

    arm_counts = {name: arm_hits[index] for index, name in enumerate(arm_names)}
    moved = sum((failovers or {}).values())
    routed_hits = Counter(arm_hits)
    for (routed_arm, answered_arm), count in (failovers or {}).items():
        count = min(count, routed_hits[answered_arm])  # only what the test saw answered can move back
        routed_hits[routed_arm] += count
        routed_hits[answered_arm] -= count
    routed = sum(routed_hits.values())
    share = routed_hits[0] / routed if routed else None
    p_value = float(binomtest(routed_hits[0], routed, ratio_a).pvalue) if routed else None
    if routed:
        failures.extend(_split_failures(arm_hits, routed_hits, ratio_a, arm_names, p_value, min_p_value,
                                        seen_router))

    latencies = np.array([obs.latency_ms for obs in observations if obs.latency_ms is not None], dtype=float)
    latency = _percentiles(latencies)
    if latencies.size and latency["p99"] > p99_budget_ms:
        failures.append(
            f"smoke: p99 latency {latency['p99']:.1f} ms exceeds the {p99_budget_ms:g} ms budget "
            f"(p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms over {len(latencies)} "
            "responses): look for a slow arm in the latency histogram and the server's "
            "load; raise p99_budget_ms only if the budget is unrealistic for this hardware"
        )
    return SmokeReport(
        passed=not failures, failures=failures, endpoint_url=endpoint_url, requests=total,
        valid_responses=valid, ratio_a=ratio_a, router_name=seen_router, arm_names=list(arm_names),
        arm_counts=arm_counts, arm_a_share=share, p_value=p_value, min_p_value=min_p_value,
        latency_ms=latency, p99_budget_ms=p99_budget_ms, errors_by_status=dict(errors_by_status),
        histogram=_histogram(observations, arm_names), duration_s=duration_s, failovers=moved,
    )


def _error_failure(key: str, count: int, total: int, example: str, endpoint_url: str, timeout: float) -> str:
    if key == "timeout":
        return (f"smoke: {count} of {total} requests to {endpoint_url} got no answer within {timeout:g} s: "
                "check that the endpoint is not overloaded or stuck (`abflow status`, its log) "
                "or raise the smoke timeout")
    if key == "connection-error":
        return (f"smoke: {count} of {total} requests could not reach {endpoint_url} ({example}): check that "
                "the endpoint is up (`abflow status`) and that the URL and port are the deployed ones")
    if key.startswith("5"):
        advice = "the server failed: read its log (`abflow status` prints the path) and fix the cause, then redeploy"
    elif key in ("401", "403"):
        advice = "the graph requires OAuth: pass oauth=(spec.oauth_key, spec.oauth_secret) of the deployed graph"
    else:
        advice = "the endpoint rejected the tutorial's request: check the URL path and the payload format"
    return f"smoke: {count} of {total} requests got HTTP {key} (e.g. {example!r}): {advice}"


def _problem_failure(category: str, count: int, total: int, example: str, expected_names: list[str],
                     router_name: str | None) -> str:
    prefix = f"smoke: {count} of {total} responses"
    if category == NOT_JSON:
        return (f"{prefix} were not JSON (e.g. {example}): the URL does not point at a Seldon-protocol "
                "predictions route; use the endpoint URL the deploy step recorded")
    if category == SCHEMA:
        return (f"{prefix} broke the Seldon response schema ({example}): clients expect data.names and "
                "data.tensor with shape [1, n_classes] mirroring the request; check the serving runtime "
                "and that the model returns predict_proba output")
    if category == CLASS_NAMES:
        return (f"{prefix} named the classes {example} instead of {expected_names}: the model's "
                "metadata.json class_names disagree with what clients expect; retrain/store the model "
                "with the right class_names, or pass class_names= if the new names are intended")
    if category == PROBABILITIES:
        return (f"{prefix} returned probabilities that do not sum to 1 within {PROBABILITY_TOLERANCE:g} "
                f"({example}): the model must answer with predict_proba of a probabilistic classifier")
    router = repr(router_name) if router_name else "<router node>"
    return (f"{prefix} did not say which arm served them ({example}): the router must write "
            f"meta.routing[{router}] = arm index; pass router_name= matching the graph's router node, "
            "and on Seldon set SELDON_ENABLE_ROUTING_INJECTION=true on the orchestrator")


def _split_failures(arm_hits: Mapping[int, int], routed_hits: Mapping[int, int], ratio_a: float,
                    arm_names: Sequence[str], p_value: float | None, min_p_value: float,
                    router_name: str | None) -> list[str]:
    """Arm coverage first (the actionable one), on the arms that answered: an arm every request
    failed over from answered nothing. Then the binomial test on the router's choices
    (``routed_hits``), only when coverage is as expected, since a dead arm would fail it too and say
    less."""
    routed = sum(routed_hits.values())
    expected_arms = [index for index, share in enumerate((ratio_a, 1.0 - ratio_a)) if share > 0]
    router = router_name or DEFAULT_ROUTER_NAME
    failures = []
    for index, name in enumerate(arm_names):
        hits = arm_hits.get(index, 0)
        if index in expected_arms and hits == 0:
            failures.append(
                f"smoke: 0 of {routed} responses came from arm {index} ({name}) although "
                f"ratio_a={ratio_a:g}: check that both arms are up (`abflow status`) and that the "
                f"router {router!r} has ratioA={ratio_a:g} in the deployed graph")
        elif index not in expected_arms and routed_hits.get(index, 0) > 0:
            failures.append(
                f"smoke: {routed_hits.get(index, 0)} of {routed} responses came from arm {index} ({name}) although "
                f"ratio_a={ratio_a:g} sends it no traffic: the deployed graph's ratioA differs from "
                "the one the pipeline asked for; redeploy, or pass the deployed ratio_a to the smoke test")
    if failures or p_value is None or p_value >= min_p_value:
        return failures
    share = routed_hits.get(0, 0) / routed
    return [
        f"smoke: the router sent arm A ({arm_names[0]}) {routed_hits.get(0, 0)} of {routed} requests "
        f"({share:.1%}) but ratio_a={ratio_a:g} (two-sided binomial test p={p_value:.2g} < {min_p_value:g}): "
        f"the router {router!r} does not split as deployed; check its ratioA (`abflow status` shows the "
        "graph) and that the smoke test was given the same ratio_a"
    ]


def _percentiles(latencies: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
    if not latencies.size:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(latencies.max())}


def _histogram(observations: Sequence[Observation], arm_names: Sequence[str]) -> LatencyHistogram:
    counts: dict[str, list[int]] = {name: [0] * (len(LATENCY_EDGES_MS) + 1) for name in arm_names}
    for obs in observations:
        if obs.latency_ms is None:
            continue
        arm = obs.check.arm if obs.check is not None else None
        label = arm_names[arm] if arm is not None else UNROUTED
        bucket = int(np.searchsorted(LATENCY_EDGES_MS, obs.latency_ms, side="right"))
        counts.setdefault(label, [0] * (len(LATENCY_EDGES_MS) + 1))[bucket] += 1
    return LatencyHistogram(edges_ms=list(LATENCY_EDGES_MS), counts=counts)


def require_pass(report: SmokeReport) -> None:
    """Raise ``SmokeFailed`` listing every failure, so one failed run shows all that is wrong."""
    if not report.passed:
        lines = "\n".join(f"  - {failure}" for failure in report.failures)
        raise SmokeFailed(
            f"smoke test of {report.endpoint_url} failed {len(report.failures)} check(s):\n{lines}")


# ---- HTML report: one self-contained page (inline CSS + SVG) for the KFP UI's Output[HTML] viewer,
# which shows it in a sandboxed iframe where external assets and scripts would not load.

_ARM_COLOURS = ("#2b6cb0", "#dd6b20", "#718096")
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1a202c;margin:24px;max-width:960px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.pass{background:#2f855a}.fail{background:#c53030}
table{border-collapse:collapse}td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}
th{color:#4a5568;font-weight:500}ul.failures li{margin-bottom:6px;color:#742a2a}
svg text{font:12px system-ui,sans-serif;fill:#2d3748}svg text.tick{font-size:10px}.muted{color:#718096}
"""


def render_html_report(report: SmokeReport) -> str:
    """A self-contained HTML page: verdict, failures, key numbers, per-arm counts and latency histogram."""
    esc = html.escape
    verdict = ('<span class="badge pass">PASSED</span>' if report.passed
               else '<span class="badge fail">FAILED</span>')
    failures = ("<h2>Failures</h2><ul class=\"failures\">"
                + "".join(f"<li>{esc(f)}</li>" for f in report.failures) + "</ul>") if report.failures else ""
    share = f"{report.arm_a_share:.1%}" if report.arm_a_share is not None else "n/a"
    p_value = f"{report.p_value:.3g}" if report.p_value is not None else "n/a"
    errors = ", ".join(f"{esc(k)}: {v}" for k, v in sorted(report.errors_by_status.items())) or "none"
    rows = [
        ("Endpoint", esc(report.endpoint_url)),
        ("Requests", f"{report.requests} sent, {report.valid_responses} valid responses "
                     f"in {report.duration_s:.2f} s"),
        ("Router", esc(report.router_name or "n/a")),
        ("Arm A share", f"{share} (ratio_a = {report.ratio_a:g}; binomial p = {p_value}, "
                        f"minimum {report.min_p_value:g})"),
        ("Latency", "p50 {p50:.1f} ms · p90 {p90:.1f} ms · p99 {p99:.1f} ms · max {max:.1f} ms".format(
            **report.latency_ms) + f" (budget p99 ≤ {report.p99_budget_ms:g} ms)"),
        ("Errors by status", errors),
    ]
    if report.shadow is not None:
        rows.append(("Shadow", esc(_shadow_words(report.shadow))))
    table = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>abflow smoke test: {'passed' if report.passed else 'failed'}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>A/B smoke test {verdict}</h1><p class=\"muted\">{esc(report.endpoint_url)}</p>"
        f"{failures}<h2>Summary</h2>{table}"
        f"<h2>Requests per arm</h2>{_arm_chart(report)}"
        f"<h2>Latency histogram</h2>{_latency_chart(report)}"
        "</body></html>\n"
    )


def _shadow_words(shadow: Mapping[str, Any]) -> str:
    if not shadow["measured"]:
        return f"{shadow['name']}: agreement not measured on a cluster (Istio discards the shadow's answers)"
    agreement = f"{shadow['agreement']:.1%}" if shadow["agreement"] is not None else "n/a"
    return (f"{shadow['name']} (mirrored fraction {shadow['fraction']:g}): {shadow['answered']} of "
            f"{shadow['mirrored']} mirrored requests answered, {shadow['errors']} errors, {shadow['dropped']} "
            f"dropped; same most probable class as the served answer in {agreement} of rows")


def _arm_chart(report: SmokeReport) -> str:
    """Horizontal bars per arm, with a dashed tick where ratio_a says the bar should end."""
    width, label_w, bar_h, gap = 640, 150, 26, 12
    routed = sum(report.arm_counts.values())
    scale_max = max([routed, 1])
    plot_w = width - label_w - 70
    height = len(report.arm_names) * (bar_h + gap) + gap
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="responses per arm">']
    expected_shares = (report.ratio_a, 1.0 - report.ratio_a)
    for index, name in enumerate(report.arm_names):
        count = report.arm_counts.get(name, 0)
        y = gap + index * (bar_h + gap)
        bar_w = plot_w * count / scale_max
        expected_x = label_w + plot_w * expected_shares[index]
        parts.append(
            f'<text x="0" y="{y + bar_h * 0.68:.1f}">{html.escape(f"arm {index} · {name}")}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar_w:.1f}" height="{bar_h}" fill="{_ARM_COLOURS[index]}"/>'
            f'<line x1="{expected_x:.1f}" x2="{expected_x:.1f}" y1="{y - 4}" y2="{y + bar_h + 4}" '
            'stroke="#1a202c" stroke-dasharray="4 3"><title>expected share</title></line>'
            f'<text x="{label_w + bar_w + 6:.1f}" y="{y + bar_h * 0.68:.1f}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts) + '<p class="muted">Dashed line: the share ratio_a asks for.</p>'


def _bucket_labels(edges: Sequence[float]) -> Iterator[str]:
    yield f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:], strict=False):
        yield f"{low:g}–{high:g}"
    yield f"≥{edges[-1]:g}"


def _latency_chart(report: SmokeReport) -> str:
    """Grouped vertical bars: one group per latency bucket (ms), one bar per arm."""
    series = [(label, counts) for label, counts in report.histogram.counts.items() if any(counts)]
    labels = list(_bucket_labels(report.histogram.edges_ms))
    width, height, left, bottom, top = 760, 260, 40, 40, 16
    plot_w, plot_h = width - left - 10, height - bottom - top
    group_w = plot_w / len(labels)
    bar_w = (group_w - 6) / max(len(series), 1)
    peak = max([max(counts) for _, counts in series] + [1])
    parts = [f'<svg width="{width}" height="{height + 24}" role="img" '
             'aria-label="latency histogram per arm">',
             f'<line x1="{left}" x2="{width - 10}" y1="{top + plot_h}" y2="{top + plot_h}" '
             'stroke="#a0aec0"/>',
             f'<text x="0" y="{top + 4}">{peak}</text><text x="0" y="{top + plot_h}">0</text>']
    for bucket, label in enumerate(labels):
        x0 = left + bucket * group_w
        parts.append(f'<text x="{x0 + group_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     'class="tick">'
                     f'{html.escape(label)}</text>')
        for s, (arm, counts) in enumerate(series):
            bar_h = plot_h * counts[bucket] / peak
            colour = _ARM_COLOURS[min(report.arm_names.index(arm) if arm in report.arm_names else 2, 2)]
            parts.append(f'<rect x="{x0 + 3 + s * bar_w:.1f}" y="{top + plot_h - bar_h:.1f}" '
                         f'width="{max(bar_w - 1, 1):.1f}" height="{bar_h:.1f}" fill="{colour}">'
                         f'<title>{html.escape(arm)}: {counts[bucket]} in {html.escape(label)} ms'
                         '</title></rect>')
    legend_y = height + 16
    for s, (arm, _) in enumerate(series):
        colour = _ARM_COLOURS[min(report.arm_names.index(arm) if arm in report.arm_names else 2, 2)]
        x = left + s * 180
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 18}" y="{legend_y}">{html.escape(arm)}</text>')
    parts.append("</svg>")
    return "".join(parts) + '<p class="muted">Buckets in milliseconds, measured at the client.</p>'
