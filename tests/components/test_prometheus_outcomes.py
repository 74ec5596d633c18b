"""The Prometheus reader against a real Prometheus server scraping a tiny exposition server whose
Seldon-named counters the test sets; each test uses its own experiment id, so the tests share the
two servers without seeing each other's series."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from abflow.components.prometheus_outcomes import (
    PrometheusError,
    _increase,
    read_prometheus_outcomes,
)
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.prometheus import PrometheusServer, start_prometheus

ARMS = ("classifier-1", "classifier-2")
CLIENT_LABELS = ["deployment_name", "predictor_name", "predictor_version", "service", "model_name", "model_image",
                 "model_version", "method", "code"]
FEEDBACK_LABELS = ["deployment_name", "predictor_name", "predictor_version", "model_name", "model_image",
                   "model_version"]
SCRAPE_TIMEOUT = 60.0


class Exposition:
    """An HTTP server on 127.0.0.1 whose ``/metrics`` concatenates the registries the tests hold."""

    def __init__(self) -> None:
        self.registries: dict[str, CollectorRegistry] = {}
        self.lock = threading.Lock()
        exposition = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                with exposition.lock:
                    body = b"".join(generate_latest(r) for r in exposition.registries.values())
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Endpoint:
    """Seldon's series for one experiment, as one serving process exports them."""

    client: Histogram
    feedback: Counter
    reward: Counter
    squares: Counter | None
    experiment: str

    @classmethod
    def create(cls, exposition: Exposition, experiment: str, *, squares: bool = False) -> Endpoint:
        registry = CollectorRegistry(auto_describe=False)
        endpoint = cls(
            client=Histogram("seldon_api_executor_client_requests_seconds", "client calls", CLIENT_LABELS,
                             registry=registry),
            feedback=Counter("seldon_api_model_feedback", "feedbacks", FEEDBACK_LABELS, registry=registry),
            reward=Counter("seldon_api_model_feedback_reward", "rewards", FEEDBACK_LABELS, registry=registry),
            squares=Counter("abflow_feedback_reward_squares", "squared rewards", FEEDBACK_LABELS,
                            registry=registry) if squares else None,
            experiment=experiment,
        )
        with exposition.lock:
            exposition.registries[experiment] = registry
        return endpoint

    def predictions(self, arm: str, count: int, *, code: int | str = 200, seconds: float = 0.002,
                    service: str = "predictions") -> None:
        child = self.client.labels("iris-ab", "default", self.experiment, service, arm, "abflow-serving", "v1",
                                   "POST", str(code))
        for _ in range(count):
            child.observe(seconds)

    def rewards(self, arm: str, *rewards: float) -> None:
        labels = ("iris-ab", "default", self.experiment, arm, "abflow-serving", "v1")
        for reward in rewards:
            self.feedback.labels(*labels).inc()
            if reward:
                self.reward.labels(*labels).inc(reward)
            if self.squares is not None and reward:
                self.squares.labels(*labels).inc(reward * reward)


@pytest.fixture(scope="module")
def exposition() -> Iterator[Exposition]:
    served = Exposition()
    yield served
    served.close()


@pytest.fixture(scope="module")
def server(exposition: Exposition, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    started = start_prometheus(tmp_path_factory.mktemp("prometheus"), exposition.target)
    yield started
    started.stop()


def scraped_after(server: PrometheusServer, moment: float) -> float:
    """Wait for a scrape that started after ``moment``; returns its time."""
    return wait_until(lambda: (server.last_scrape() or 0) > moment and server.last_scrape(), timeout=SCRAPE_TIMEOUT,
                      interval=0.2, what=f"a scrape after {moment}")


def test_counts_each_arm_exactly(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    endpoint = Endpoint.create(exposition, "exact-1")
    other = Endpoint.create(exposition, "exact-other")
    endpoint.predictions(ARMS[0], 7, seconds=0.002)
    endpoint.predictions(ARMS[0], 2, code=500, seconds=0.2)
    endpoint.predictions(ARMS[0], 1, code=400)
    endpoint.predictions(ARMS[1], 5, seconds=0.004)
    endpoint.predictions(ARMS[1], 3, service="feedback")
    endpoint.predictions("random-ab-test", 4)
    other.predictions(ARMS[0], 11)
    endpoint.rewards(ARMS[0], 1, 0, 1, 1)
    endpoint.rewards(ARMS[1], 0, 0, 1)
    scraped_after(server, time.time())

    outcomes = read_prometheus_outcomes(server.url, "exact-1", ARMS, start, time.time())

    assert set(outcomes) == set(ARMS)
    first, second = outcomes[ARMS[0]], outcomes[ARMS[1]]
    assert (first.requests, dict(first.errors), first.feedback) == (10, {500: 2, 400: 1}, 4)
    assert (second.requests, dict(second.errors), second.feedback) == (5, {}, 3)
    assert (first.reward_sum, second.reward_sum) == (3.0, 1.0)
    assert first.error_rate == pytest.approx(0.2)
    assert first.latency_sum == pytest.approx(7 * 0.002 + 2 * 0.2 + 0.002)
    assert sum(first.latency_counts) == 10
    assert math.isinf(first.latency_buckets[-1])
    p99 = first.latency_quantile(0.99)
    assert p99 is not None and 0.1 < p99 <= 0.25
    second_p99 = second.latency_quantile(0.99)
    assert second_p99 is not None and second_p99 <= 0.005


def test_grpc_codes_are_counted_by_their_http_status(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    endpoint = Endpoint.create(exposition, "grpc-1")
    endpoint.predictions(ARMS[0], 4, code="OK")
    endpoint.predictions(ARMS[0], 2, code="Unavailable")
    endpoint.predictions(ARMS[0], 1, code="InvalidArgument")
    scraped_after(server, time.time())

    arm = read_prometheus_outcomes(server.url, "grpc-1", ARMS, start, time.time())[ARMS[0]]

    assert (arm.requests, dict(arm.errors), arm.server_errors) == (7, {503: 2, 400: 1}, 2)


def test_an_unknown_code_is_refused(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    Endpoint.create(exposition, "weird-1").predictions(ARMS[1], 1, code="meh")
    scraped_after(server, time.time())

    with pytest.raises(PrometheusError, match="code='meh'"):
        read_prometheus_outcomes(server.url, "weird-1", ARMS, start, time.time())


def test_bernoulli_variance_without_the_squares_series(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    endpoint = Endpoint.create(exposition, "bernoulli-1")
    endpoint.rewards(ARMS[0], 1, 0, 1, 1, 0)
    scraped_after(server, time.time())

    arm = read_prometheus_outcomes(server.url, "bernoulli-1", ARMS, start, time.time())[ARMS[0]]

    assert (arm.feedback, arm.reward_sum, arm.reward_sum_squares) == (5, 3.0, 3.0)
    assert arm.reward_variance == pytest.approx(0.3)  # 0/1 rewards: the sample variance of [1, 0, 1, 1, 0]


def test_the_squares_series_when_exposed(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    endpoint = Endpoint.create(exposition, "squares-1", squares=True)
    endpoint.rewards(ARMS[1], 0.5, 2.0, 3.0)
    scraped_after(server, time.time())

    arm = read_prometheus_outcomes(server.url, "squares-1", ARMS, start, time.time())[ARMS[1]]

    assert (arm.feedback, arm.reward_sum, arm.reward_sum_squares) == (3, 5.5, 13.25)


def test_rewards_beyond_one_without_squares_are_refused(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    endpoint = Endpoint.create(exposition, "beyond-1")
    endpoint.rewards(ARMS[0], 5.0, 3.0)
    scraped_after(server, time.time())

    with pytest.raises(PrometheusError, match="abflow_feedback_reward_squares_total"):
        read_prometheus_outcomes(server.url, "beyond-1", ARMS, start, time.time())


def test_counts_before_the_window_are_left_out(server: PrometheusServer, exposition: Exposition) -> None:
    endpoint = Endpoint.create(exposition, "window-1")
    endpoint.predictions(ARMS[0], 6)
    endpoint.rewards(ARMS[0], 1, 1)
    scraped_after(server, time.time())
    start = time.time()
    endpoint.predictions(ARMS[0], 4)
    endpoint.predictions(ARMS[0], 1, code=503)
    endpoint.rewards(ARMS[0], 0)
    scraped_after(server, time.time())

    arm = read_prometheus_outcomes(server.url, "window-1", ARMS, start, time.time())[ARMS[0]]

    assert (arm.requests, dict(arm.errors), arm.feedback, arm.reward_sum) == (5, {503: 1}, 1, 0.0)


def test_a_restarted_process_counts_from_zero(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    before = Endpoint.create(exposition, "restart-1")
    before.predictions(ARMS[0], 10)
    before.rewards(ARMS[0], 1, 1, 0)
    scraped_after(server, time.time())
    after = Endpoint.create(exposition, "restart-1")  # the same series, from zero again
    after.predictions(ARMS[0], 3)
    after.rewards(ARMS[0], 1)
    scraped_after(server, time.time())

    arm = read_prometheus_outcomes(server.url, "restart-1", ARMS, start, time.time())[ARMS[0]]

    assert (arm.requests, arm.feedback, arm.reward_sum) == (13, 4, 3.0)
    assert sum(arm.latency_counts) == 13


def test_label_values_are_quoted_for_promql(server: PrometheusServer, exposition: Exposition) -> None:
    start = time.time()
    odd = 'quote-"back\\slash-\u00e9t\u00e9-1'
    Endpoint.create(exposition, odd).predictions(ARMS[1], 2)
    Endpoint.create(exposition, odd + "x").predictions(ARMS[1], 5)
    scraped_after(server, time.time())

    assert read_prometheus_outcomes(server.url, odd, ARMS, start, time.time())[ARMS[1]].requests == 2


def test_an_experiment_without_series_has_no_arms(server: PrometheusServer) -> None:
    now = time.time()
    assert read_prometheus_outcomes(server.url, "nobody-1", ARMS, now - 60, now) == {}


def test_an_unreachable_prometheus_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=f"cannot reach Prometheus at {url}.*prometheus_url"):
        read_prometheus_outcomes(url, "x-1", ARMS, 0.0, 60.0)


@pytest.mark.parametrize("url", ["", "prometheus.monitoring:9090"])
def test_a_missing_url_asks_for_prometheus_url(url: str) -> None:
    with pytest.raises(PrometheusError, match="prometheus_url"):
        read_prometheus_outcomes(url, "x-1", ARMS, 0.0, 60.0)


def test_a_server_that_is_not_prometheus_is_named(exposition: Exposition) -> None:
    with pytest.raises(PrometheusError, match="base URL"):
        read_prometheus_outcomes(f"http://{exposition.target}/metrics", "x-1", ARMS, 0.0, 60.0)


@pytest.mark.parametrize(("start", "end"), [(10.0, 10.0), (10.0, 5.0), (math.nan, 5.0), (0.0, math.inf)])
def test_a_bad_window_is_refused(start: float, end: float) -> None:
    with pytest.raises(ValueError, match="window"):
        read_prometheus_outcomes("http://127.0.0.1:1", "x-1", ARMS, start, end)


@given(st.integers(0, 1000), st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=8), min_size=1, max_size=5))
def test_increase_counts_every_event_across_restarts(before: int, lives: list[list[int]]) -> None:
    """``lives``: the increments each process made, one per scrape; the first process had reached
    ``before`` when the window opened, every later one started from zero. A restart is seen by its
    first scrape being below the last one before it, so each later process's first increment is made
    smaller than that (as for Prometheus, a restart that overtook its predecessor before its first
    scrape cannot be seen)."""
    samples: list[float] = []
    counted = 0
    value = before
    for life, increments in enumerate(lives):
        if life:
            value = 0
            previous = int(samples[-1])
            if previous:
                increments = [increments[0] % previous, *increments[1:]]
        for step in increments:
            value += step
            counted += step
            samples.append(float(value))

    assert _increase(float(before), samples) == counted
