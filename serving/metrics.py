"""Prometheus metrics for one serving process, labelled by arm (the MODEL node that served).

Each process owns a private registry, so the executor and every model server expose only their own
series and tests can build many servers in one interpreter. Label children are cached because
``labels()`` takes a lock and formats a key on every call, which matters at thousands of req/s; for
the same reason the in-flight gauge is a plain int, read only when /metrics is scraped.

``abflow_requests`` counts predictions by the arm that answered; ``abflow_http_responses`` counts every
response the process sent, whatever its path and code, including the refusals the HTTP adapter sends
before a body is read (401, 404, 405, 408, 413, 503) and the 500 of its catch-all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

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

    def feedback(self, arm: str, reward: float) -> None:
        self._feedback.labels(arm).observe(reward)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
