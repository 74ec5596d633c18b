"""Prometheus metrics for one serving process, labelled by arm (the MODEL node that served).

Each process owns a private registry, so the executor and every model server expose only their own
series and tests can build many servers in one interpreter. Label children are cached because
``labels()`` takes a lock and formats a key on every call, which matters at thousands of req/s; for
the same reason the in-flight gauge is a plain int, read only when /metrics is scraped.

``abflow_requests`` counts predictions by the arm that answered; ``abflow_http_responses`` counts every
response the process sent, whatever its path and code, including the refusals the HTTP adapter sends
before a body is read (401, 404, 405, 408, 413, 503) and the 500 of its catch-all.

Beside abflow's own series, Seldon's names and labels, so a Seldon Grafana dashboard and the same
PromQL work on a laptop and on a cluster (``SeldonLabels`` says where each label comes from):

* the executor (``ExecutorMetrics``): ``seldon_api_executor_server_requests_seconds`` (labels
  ``deployment_name, predictor_name, predictor_version, service, method, code``; ``service`` is the
  route path, ``method`` ``post``) and ``seldon_api_executor_client_requests_seconds`` (those labels
  plus ``model_name, model_image, model_version``; ``service`` is ``/predict`` or ``/send-feedback``),
  both histograms;
* a model server (``ModelMetrics``): ``seldon_api_model_feedback_total`` and
  ``seldon_api_model_feedback_reward_total`` (labels ``deployment_name, predictor_name,
  predictor_version, model_name, model_image, model_version``), abflow's
  ``abflow_feedback_reward_squares_total`` (same labels), and its own traffic as
  ``abflow_model_requests_total`` (those labels plus ``code``) and
  ``abflow_model_request_duration_seconds``.

Under ``abflow serve`` the arms have no HTTP port; the executor appends their expositions to its own
(``merge_expositions``), so one scrape of the executor reads every process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass, fields

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

# No ``_created`` series beside every counter, histogram and summary: they doubled the executor's
# exposition (which carries the arms' too), which every scrape and every test polling /metrics pays
# to produce and parse, and nothing reads them. A process-wide setting: this module is for serving
# processes, which want it everywhere.
disable_created_metrics()  # type: ignore[no-untyped-call]

NO_ARM = "none"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter("abflow_requests", "Prediction requests by serving arm and HTTP status",
                                 ["arm", "code"], registry=self.registry)
        self._errors = Counter("abflow_request_errors", "Prediction requests that failed, by arm and reason",
                               ["arm", "reason"], registry=self.registry)
        self._latency = Histogram("abflow_request_duration_seconds",
                                  "Prediction latency inside this process, by arm", ["arm"],
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._feedback = Summary("abflow_feedback_reward", "Feedback rewards by arm (count and sum)",
                                 ["arm"], registry=self.registry)
        self._responses = Counter("abflow_http_responses", "Every HTTP response sent, by route path and status",
                                  ["path", "code"], registry=self.registry)
        self._failovers = Counter("abflow_failovers", "Predictions routed to an arm that was down or too slow "
                                  "and answered by another, by the routed arm and the one that answered",
                                  ["arm", "to"], registry=self.registry)
        self._sticky_fallbacks = Counter("abflow_sticky_fallbacks", "Predictions of a sticky graph that named no "
                                         "unit of assignment and were split at random, by router node",
                                         ["router"], registry=self.registry)
        self._shadow = Counter("abflow_shadow_requests", "Predictions mirrored to the shadow, by shadow and result: "
                               "answered, error, dropped (its queue was full) or not_mirrored (outside the "
                               "graph's mirror fraction)", ["shadow", "result"], registry=self.registry)
        self._shadow_rows = Counter("abflow_shadow_rows", "Rows the shadow answered, by whether its most probable "
                                    "class agreed with the served answer's", ["shadow", "agreement"],
                                    registry=self.registry)
        self._shadow_latency = Histogram("abflow_shadow_duration_seconds", "Shadow prediction latency", ["shadow"],
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inflight = 0
        self.connections = 0
        self.buffered_bytes = 0
        Gauge("abflow_inflight_requests", "Prediction requests being served now",
              registry=self.registry).set_function(lambda: self.inflight)
        Gauge("abflow_open_connections", "Client connections open now",
              registry=self.registry).set_function(lambda: self.connections)
        Gauge("abflow_buffered_body_bytes", "Bytes reserved for large request bodies being read or served now",
              registry=self.registry).set_function(lambda: self.buffered_bytes)
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._response_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe(self, arm: str, code: int, seconds: float, reason: str | None = None) -> None:
        child = self._request_children.get((arm, code))
        if child is None:
            child = self._request_children[(arm, code)] = self._requests.labels(arm, str(code))
        child.inc()
        latency = self._latency_children.get(arm)
        if latency is None:
            latency = self._latency_children[arm] = self._latency.labels(arm)
        latency.observe(seconds)
        if reason is not None:
            self._errors.labels(arm, reason).inc()

    def response(self, path: str, code: int) -> None:
        child = self._response_children.get((path, code))
        if child is None:
            child = self._response_children[(path, code)] = self._responses.labels(path, str(code))
        child.inc()

    def failover(self, arm: str, to: str) -> None:
        self._failovers.labels(arm, to).inc()

    def sticky_fallback(self, router: str) -> None:
        self._sticky_fallbacks.labels(router).inc()

    def shadow(self, shadow: str, result: str, seconds: float | None = None, agree: int = 0,
               disagree: int = 0) -> None:
        self._shadow.labels(shadow, result).inc()
        if seconds is not None:
            self._shadow_latency.labels(shadow).observe(seconds)
        if agree:
            self._shadow_rows.labels(shadow, "agree").inc(agree)
        if disagree:
            self._shadow_rows.labels(shadow, "disagree").inc(disagree)

    def feedback(self, arm: str, reward: float) -> None:
        self._feedback.labels(arm).observe(reward)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class SeldonLabels:
    """The labels Seldon puts on its metrics, taken from what its operator injects into every container
    (``SELDON_DEPLOYMENT_ID``, ``PREDICTOR_ID``, ``PREDICTOR_LABELS``'s ``version``,
    ``PREDICTIVE_UNIT_ID``, ``PREDICTIVE_UNIT_IMAGE`` split at its tag, as Seldon's Python wrapper
    does), else from the local graph: its name, its predictor's name (and, as predictor version, the
    experiment it serves: every experiment is a new version of its predictor, so its series are never
    mixed with another experiment's), the MODEL node's name and image, and the model version from the
    model's ``metadata.json``."""

    deployment_name: str
    predictor_name: str
    predictor_version: str = ""
    model_name: str = ""
    model_image: str = ""
    model_version: str = ""

    @classmethod
    def from_env(cls, *, deployment: str = "", predictor: str = "", predictor_version: str = "", model: str = "",
                 image: str = "", version: str = "", environ: Mapping[str, str] | None = None) -> SeldonLabels:
        environ = os.environ if environ is None else environ
        try:
            predictor_labels = json.loads(environ.get("PREDICTOR_LABELS") or "{}")
        except ValueError:
            predictor_labels = {}
        if isinstance(predictor_labels, dict) and "version" in predictor_labels:
            predictor_version = str(predictor_labels["version"])
        unit_image = environ.get("PREDICTIVE_UNIT_IMAGE")
        if unit_image:
            name, _, tag = unit_image.rpartition(":") if ":" in unit_image.rsplit("/", 1)[-1] else (unit_image, "", "")
            image, version = name, tag
        return cls(deployment_name=environ.get("SELDON_DEPLOYMENT_ID") or deployment,
                   predictor_name=environ.get("PREDICTOR_ID") or predictor, predictor_version=predictor_version,
                   model_name=environ.get("PREDICTIVE_UNIT_ID") or model, model_image=image, model_version=version)

    def values(self) -> tuple[str, ...]:
        return astuple(self)


MODEL_LABELS = tuple(f.name for f in fields(SeldonLabels))
PREDICTOR_LABELS = MODEL_LABELS[:3]
SERVER_SERVICE_LABELS = ("service", "method", "code")


class ExecutorMetrics(ServingMetrics):
    """The executor's series: abflow's, plus Seldon's orchestrator histograms."""

    def __init__(self, labels: SeldonLabels) -> None:
        super().__init__()
        self.labels = labels
        self._server = Histogram("seldon_api_executor_server_requests_seconds",
                                 "Requests to the orchestrator (Seldon's name), by route path and status",
                                 [*PREDICTOR_LABELS, *SERVER_SERVICE_LABELS], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self._client = Histogram("seldon_api_executor_client_requests_seconds",
                                 "Requests from the orchestrator to a model (Seldon's name), by model and status",
                                 [*MODEL_LABELS, *SERVER_SERVICE_LABELS], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self._server_children: dict[tuple[str, int], Histogram] = {}
        self._client_children: dict[tuple[SeldonLabels, str, int], Histogram] = {}
        self._repeats = Counter("abflow_feedback_repeats", "Feedback for a prediction whose feedback was already "
                                "counted (answered 200, not counted again), by arm", ["arm"], registry=self.registry)

    def server_request(self, service: str, code: int, seconds: float) -> None:
        child = self._server_children.get((service, code))
        if child is None:
            child = self._server_children[(service, code)] = self._server.labels(
                *self.labels.values()[:3], service, "post", str(code))
        child.observe(seconds)

    def client_request(self, model: SeldonLabels, service: str, code: int, seconds: float) -> None:
        key = (model, service, code)
        child = self._client_children.get(key)
        if child is None:
            child = self._client_children[key] = self._client.labels(*model.values(), service, "post", str(code))
        child.observe(seconds)

    def feedback_repeat(self, arm: str) -> None:
        self._repeats.labels(arm).inc()


class ModelMetrics(ServingMetrics):
    """A model server's series: abflow's, plus its own traffic and Seldon's feedback counters, labelled
    as Seldon labels them (one model per process, so one label set)."""

    def __init__(self, labels: SeldonLabels) -> None:
        super().__init__()
        self.labels = labels
        values = labels.values()
        self._model_requests = Counter("abflow_model_requests", "Predictions this model server answered, by status",
                                       [*MODEL_LABELS, "code"], registry=self.registry)
        # A summary (count and sum), not a histogram: the latency distribution of predictions is the
        # executor's client histogram; this says what the model server itself spent, in two series.
        self._model_latency = Summary("abflow_model_request_duration_seconds",
                                      "Prediction time inside this model server", MODEL_LABELS,
                                      registry=self.registry).labels(*values)
        self._model_children: dict[int, Counter] = {}
        self.feedback_count = 0
        self.reward_sum = 0.0
        self.reward_squares = 0.0
        self.registry.register(_FeedbackCollector(self))

    def observe_model(self, code: int, seconds: float) -> None:
        child = self._model_children.get(code)
        if child is None:
            child = self._model_children[code] = self._model_requests.labels(*self.labels.values(), str(code))
        child.inc()
        self._model_latency.observe(seconds)

    def model_feedback(self, reward: float) -> None:
        self.feedback_count += 1
        self.reward_sum += reward
        self.reward_squares += reward * reward


class _FeedbackCollector(Collector):
    """Seldon's feedback counters. A custom collector because a reward may be negative, which
    ``Counter.inc`` refuses: the reward total then goes down, and Prometheus's ``increase()`` reads a
    decrease as a counter reset, so over Prometheus, sums of negative rewards are not exact (Seldon's
    own wrapper has the same counter); the endpoint's ledger is."""

    def __init__(self, metrics: ModelMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        values = list(self._metrics.labels.values())
        count = CounterMetricFamily("seldon_api_model_feedback", "Feedback received (Seldon's name)",
                                    labels=MODEL_LABELS)
        count.add_metric(values, self._metrics.feedback_count)
        reward = CounterMetricFamily("seldon_api_model_feedback_reward", "Sum of feedback rewards (Seldon's name)",
                                     labels=MODEL_LABELS)
        reward.add_metric(values, self._metrics.reward_sum)
        squares = CounterMetricFamily("abflow_feedback_reward_squares", "Sum of squared feedback rewards (for the "
                                      "variance, which Seldon's series cannot give)", labels=MODEL_LABELS)
        squares.add_metric(values, self._metrics.reward_squares)
        yield count
        yield reward
        yield squares


def merge_expositions(own: bytes, others: Iterable[bytes]) -> bytes:
    """``own`` (Prometheus text format) followed by the families of ``others`` that ``own`` lacks, each
    family once, its samples from every exposition that has it (two arms' ``seldon_api_model_*``
    series, told apart by ``model_name``). Families ``own`` has too (the arms' idle HTTP counters) are
    the caller's, and dropped from ``others``: the text format allows a family only once."""
    mine = set(_family_names(own))
    families: dict[bytes, list[bytes]] = {}
    for text in others:
        lines: list[bytes] | None = None
        for line in text.splitlines():
            if line.startswith((b"# HELP ", b"# TYPE ")):
                name = line.split(b" ", 3)[2]
                if name in mine:
                    lines = None
                elif name in families:
                    lines = families[name]
                    if line in lines:
                        continue
                else:
                    lines = families[name] = []
                if lines is not None:
                    lines.append(line)
            elif lines is not None and line and not line.startswith(b"#"):
                lines.append(line)
    return own + b"".join(line + b"\n" for lines in families.values() for line in lines)


def _family_names(text: bytes) -> Iterator[bytes]:
    for line in text.splitlines():
        if line.startswith(b"# TYPE "):
            yield line.split(b" ", 3)[2]
