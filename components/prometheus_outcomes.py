"""An experiment's per-arm outcomes read from Prometheus: where they live on a cluster.

The series are Seldon's own, so the same PromQL works behind Seldon's orchestrator and behind
``abflow serve`` (whose ``/metrics`` carries every arm's series):

- requests, errors by ``code`` and the latency histogram from the executor's client histogram
  ``seldon_api_executor_client_requests_seconds`` (``_count``, ``_sum``, ``_bucket``), whose
  ``model_name`` is the arm's graph node name. Calls whose ``service`` names feedback (Seldon's
  orchestrator times its ``/send-feedback`` calls to a model too) are not prediction requests;
- feedbacks and the reward sum from the model servers' ``seldon_api_model_feedback_total`` and
  ``seldon_api_model_feedback_reward_total``;
- the sum of squared rewards, which Seldon does not expose, from abflow's
  ``abflow_feedback_reward_squares_total`` (same labels) when the endpoint exposes it. Without it the
  rewards are taken to lie in [0, 1], as Seldon's client and ``abflow traffic`` send them (1 right,
  0 wrong): then r² ≤ r, and taking the reward sum for the sum of squares gives the Bernoulli variance
  mean·(1 − mean), the largest any [0, 1] reward can have, so the test stays valid (conservative, never
  over-confident). A mean outside [0, 1] proves the rewards are not of that kind: that is an error
  asking for the abflow series rather than a variance made up. Negative rewards cannot be read from
  Prometheus at all: a counter that goes down is a restarted counter (the local ledger has no such
  limit).

**Which series belong to the experiment.** Its deployment's ``predictor_version``, which Seldon takes
from the predictor's ``version`` annotation (its orchestrator) and ``version`` label (its model
containers, through ``PREDICTOR_LABELS``), is the experiment id: a deployment keeps
its name (and its ingress path) across experiments, blue/green replaces and split changes, but every
experiment is a new version of its predictor, so its series are new series, never mixed with the
previous experiment's. The window [start, end] bounds them in time.

**Counting.** PromQL's ``increase()`` is not used for the counts, because it answers a rate times
the window: it extrapolates to the window's edges (fractional requests) and, since a labelled
counter first appears at its first increment with the value 1 already, it never counts the first
increment of a series born inside the window — exactly the rare error codes a guardrail is for. So
each series' increase is taken exactly, as ``increase()`` would before extrapolating, from its last
value in the window (``last_over_time``) minus its value when the window opened (0 for a series that
did not exist yet); a series that reset inside the window (a restarted process: ``resets()`` saw a
drop, or its last value is below its opening one) is read sample by sample, every drop counted as a
restart from zero. Each answer is a counter value the endpoint
exported, so the counts are whole numbers and match the local ledger for the same traffic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from abflow.serving.ledger import ArmOutcomes

CLIENT_HISTOGRAM = "seldon_api_executor_client_requests_seconds"
FEEDBACK_TOTAL = "seldon_api_model_feedback_total"
REWARD_TOTAL = "seldon_api_model_feedback_reward_total"
REWARD_SQUARES_TOTAL = "abflow_feedback_reward_squares_total"
"""abflow's addition to Seldon's series, same labels: what the decision's variance needs."""
EXPERIMENT_LABEL = "predictor_version"
ARM_LABEL = "model_name"
NOT_PREDICTIONS = 'service!~"(?i).*feedback.*"'
TIMEOUT_SECONDS = 30.0
GRPC_TO_HTTP = {
    "OK": 200, "Canceled": 499, "Unknown": 500, "InvalidArgument": 400, "DeadlineExceeded": 504, "NotFound": 404,
    "AlreadyExists": 409, "PermissionDenied": 403, "ResourceExhausted": 429, "FailedPrecondition": 400,
    "Aborted": 409, "OutOfRange": 400, "Unimplemented": 501, "Internal": 500, "Unavailable": 503, "DataLoss": 500,
    "Unauthenticated": 401,
}
"""Seldon's orchestrator labels a gRPC call's ``code`` with the gRPC code's name; errors are kept by
HTTP status, so each name maps to the status gRPC's HTTP mapping gives it (``Unavailable`` → 503)."""

Labels = tuple[tuple[str, str], ...]


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, refused the query, or its answer cannot be an experiment's."""


@dataclass
class _Arm:
    requests: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    cumulative: dict[float, int] = field(default_factory=dict)
    latency_sum: float = 0.0
    feedback: int = 0
    reward_sum: float = 0.0
    reward_sum_squares: float | None = None
    seen: bool = False


def read_prometheus_outcomes(url: str, experiment_id: str, arms: Sequence[str], start: float,
                             end: float) -> dict[str, ArmOutcomes]:
    """Every arm's outcomes in experiment ``experiment_id`` between ``start`` and ``end`` (Unix
    times), by arm name, from the Prometheus at ``url``. Arms without any series are left out, as
    the ledger leaves out arms that recorded nothing. Prometheus keeps counters, not events, so each
    arm's ``first_at``/``last_at`` are the window's bounds."""
    if not url.startswith(("http://", "https://")):
        raise PrometheusError(f"the experiment's outcomes are in Prometheus, but its URL is {url!r}: deploy with the "
                              "pipeline parameter prometheus_url set to the Prometheus server's base URL (e.g. "
                              "http://prometheus.monitoring:9090), or fix the record's 'outcomes' list")
    if not arms:
        raise ValueError("name at least one arm (a graph node name) to read outcomes for")
    if not (math.isfinite(start) and math.isfinite(end) and end > start):
        raise ValueError(f"the experiment's window must be finite and end after it starts, got [{start}, {end}]")
    prometheus = _Prometheus(url.rstrip("/"), start, end)
    wanted = set(arms)
    experiment = f"{EXPERIMENT_LABEL}={_quote(experiment_id)}"
    totals = {arm: _Arm() for arm in arms}

    def per_arm(name: str, matchers: str) -> dict[tuple[str, Labels], float]:
        increases = prometheus.increases(name, matchers)
        return {(dict(labels).get(ARM_LABEL, ""), labels): value for labels, value in increases.items()
                if dict(labels).get(ARM_LABEL) in wanted}

    predictions = f"{experiment},{NOT_PREDICTIONS}"
    for (arm, labels), value in per_arm(f"{CLIENT_HISTOGRAM}_count", predictions).items():
        count, status = _whole(value, arm), _status(dict(labels).get("code", ""), arm, url)
        totals[arm].requests += count
        totals[arm].seen = True
        if status >= 400:
            totals[arm].errors[status] = totals[arm].errors.get(status, 0) + count
    for (arm, _), value in per_arm(f"{CLIENT_HISTOGRAM}_sum", predictions).items():
        totals[arm].latency_sum += value
    for (arm, labels), value in per_arm(f"{CLIENT_HISTOGRAM}_bucket", predictions).items():
        bound = float(dict(labels).get("le", "+Inf"))
        totals[arm].cumulative[bound] = totals[arm].cumulative.get(bound, 0) + _whole(value, arm)
    for (arm, _), value in per_arm(FEEDBACK_TOTAL, experiment).items():
        totals[arm].feedback += _whole(value, arm)
        totals[arm].seen = True
    for (arm, _), value in per_arm(REWARD_TOTAL, experiment).items():
        totals[arm].reward_sum += value
    for (arm, _), value in per_arm(REWARD_SQUARES_TOTAL, experiment).items():
        totals[arm].reward_sum_squares = (totals[arm].reward_sum_squares or 0.0) + value
    return {arm: _outcomes(experiment_id, arm, total, start, end, url)
            for arm, total in totals.items() if total.seen}


class _Prometheus:
    """Instant queries against one Prometheus, for one window."""

    def __init__(self, url: str, start: float, end: float) -> None:
        self.url, self.start, self.end = url, start, end
        self.window = f"{max(1, math.ceil((end - start) * 1000))}ms"
        self.session = requests.Session()

    def increases(self, name: str, matchers: str) -> dict[Labels, float]:
        """Each series' exact increase over the window, by its labels (see the module docstring)."""
        selector = f"{name}{{{matchers}}}"
        last = self._values(f"last_over_time({selector}[{self.window}])", self.end)
        if not last:
            return {}
        before = self._values(selector, self.start)
        increases = {labels: value - before.get(labels, 0.0) for labels, value in last.items()}
        restarted = set(self._values(f"resets({selector}[{self.window}]) > 0", self.end))
        restarted |= {labels for labels, increase in increases.items() if increase < 0}
        for labels in restarted:
            samples = self._samples(f"{name}{{{_exact(labels)}}}[{self.window}]", labels, self.end)
            increases[labels] = _increase(before.get(labels, 0.0), samples)
        return increases

    def _values(self, promql: str, at: float) -> dict[Labels, float]:
        result = self._query(promql, at, "vector")
        return {_labels(item["metric"]): float(item["value"][1]) for item in result}

    def _samples(self, promql: str, labels: Labels, at: float) -> list[float]:
        """The raw samples of the one series with exactly ``labels`` (a selector also matches series
        with more labels)."""
        result = self._query(promql, at, "matrix")
        return [float(value) for item in result if _labels(item["metric"]) == labels for _, value in item["values"]]

    def _query(self, promql: str, at: float, kind: str) -> list[dict[str, Any]]:
        try:
            response = self.session.get(f"{self.url}/api/v1/query", params={"query": promql, "time": f"{at:.3f}"},
                                        timeout=TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise PrometheusError(f"cannot reach Prometheus at {self.url} ({error}); check the experiment's "
                                  "prometheus_url and that this machine can reach it") from error
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"{self.url}/api/v1/query answered HTTP {response.status_code} with no JSON: "
                                  "is prometheus_url the Prometheus server's base URL (e.g. "
                                  "http://prometheus.monitoring:9090)?") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.url} refused {promql!r}: HTTP {response.status_code}, "
                                  f"{body.get('errorType', '')}: {body.get('error', body)}")
        data = body["data"]
        if data.get("resultType") != kind:
            raise PrometheusError(f"Prometheus at {self.url} answered {promql!r} with a {data.get('resultType')}, "
                                  f"expected a {kind}")
        result: list[dict[str, Any]] = data["result"]
        return result


def _increase(before: float, samples: Sequence[float]) -> float:
    """A counter's increase from ``before`` through ``samples``: a drop is a restart from zero."""
    total, previous = 0.0, before
    for value in samples:
        total += value - previous if value >= previous else value
        previous = value
    return total


def _outcomes(experiment: str, arm: str, total: _Arm, start: float, end: float, url: str) -> ArmOutcomes:
    bounds = tuple(sorted(total.cumulative)) or (math.inf,)
    if not math.isinf(bounds[-1]):
        raise PrometheusError(f"arm {arm!r}'s {CLIENT_HISTOGRAM}_bucket series at {url} lack le=\"+Inf\": "
                              "they are not a Prometheus histogram")
    cumulative = [total.cumulative.get(bound, 0) for bound in bounds]
    if not total.cumulative:
        cumulative = [total.requests]
    counts = tuple(max(high - low, 0) for low, high in zip([0, *cumulative[:-1]], cumulative, strict=True))
    squares = total.reward_sum_squares
    if squares is None:
        mean = total.reward_sum / total.feedback if total.feedback else 0.0
        if not 0.0 <= mean <= 1.0:
            raise PrometheusError(
                f"arm {arm!r} of experiment {experiment!r} has a mean reward of {mean:.6g}, so its rewards are not "
                f"within [0, 1] and their variance cannot be bounded from Seldon's series alone: expose "
                f"{REWARD_SQUARES_TOTAL} (with Seldon's feedback labels) from the model servers")
        squares = total.reward_sum
    return ArmOutcomes(
        experiment=experiment, arm=arm, requests=total.requests, errors=total.errors, latency_buckets=bounds,
        latency_counts=counts, latency_sum=total.latency_sum, feedback=total.feedback,
        reward_sum=total.reward_sum, reward_sum_squares=squares, first_at=start, last_at=end,
    )


def _status(code: str, arm: str, url: str) -> int:
    if code.isdigit():
        return int(code)
    if code in GRPC_TO_HTTP:
        return GRPC_TO_HTTP[code]
    raise PrometheusError(f"arm {arm!r}'s {CLIENT_HISTOGRAM}_count at {url} has code={code!r}, neither an HTTP status "
                          "nor a gRPC code name: its errors cannot be counted; fix the exporter's code label")


def _whole(value: float, arm: str) -> int:
    """Counts are exported as whole numbers, so an increase that is not one is not a count."""
    count = round(value)
    if abs(value - count) > 1e-6:
        raise PrometheusError(f"arm {arm!r}: a request or feedback count increased by {value}, not a whole number: "
                              "the series is not a counter of events")
    return count


def _labels(metric: Mapping[str, str]) -> Labels:
    return tuple(sorted((key, value) for key, value in metric.items() if key != "__name__"))


def _exact(labels: Labels) -> str:
    return ",".join(f"{key}={_quote(value)}" for key, value in labels)


def _quote(value: str) -> str:
    """A PromQL string literal: JSON's escapes are a subset of the ones PromQL reads."""
    return json.dumps(value)
