"""The smoke test against live HTTP endpoints on 127.0.0.1.

The passing run and the disagreeing split run against the real serving runtime, started detached on
the tutorial's own ab_test.json (ratioA 0.5). Malformed-response cases use ``StandIn``: a page-long
Seldon-protocol server started in the test, because the real serving runtime is (rightly) unable to
produce wrong class names, a missing ``meta.routing``, bad probabilities or a 503 on demand. It
routes deterministically (an exact ``ratio_a`` share), so verdicts about the split never depend on
luck.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from abflow.components.smoke import (
    Observation,
    ResponseCheck,
    SmokeFailed,
    SmokeReport,
    check_response,
    endpoint_base,
    judge,
    render_html_report,
    require_pass,
    run_smoke,
)
from abflow.serving.artifact import DEFAULT_CLASS_NAMES
from abflow.serving.daemon import start_detached, stop_detached
from tests.fixtures.processes import free_port

TUTORIAL_AB_TEST = Path(__file__).parents[1] / "data" / "tutorial" / "ab_test.json"
TUTORIAL_OAUTH = ("oauth-key", "oauth-secret")  # ab_test.json's spec.oauth_key / oauth_secret

Responder = Callable[[int, dict[str, Any]], tuple[int, Any]]


def routed_response(arm: int, *, names: list[str] | None = None, values: list[float] | None = None,
                    routing: dict[str, int] | None = None) -> dict[str, Any]:
    """What abflow's executor answers: the tutorial's response shape plus the arm in meta.routing."""
    return {
        "meta": {"puid": "p", "tags": {}, "routing": {"random-ab-test": arm} if routing is None else routing},
        "data": {"names": names or list(DEFAULT_CLASS_NAMES),
                 "tensor": {"shape": [1, 3], "values": values or [0.9, 0.07, 0.03]}},
    }


def split(ratio_a: float) -> Callable[[int], int]:
    """Deterministic arm choice whose running share of arm 0 tracks ratio_a exactly."""
    return lambda i: 0 if math.floor((i + 1) * ratio_a) > math.floor(i * ratio_a) else 1


class StandIn:
    """A tiny Seldon-protocol HTTP/1.1 keep-alive server whose answer per request comes from ``respond``."""

    def __init__(self, respond: Responder) -> None:
        counter = iter(range(10**9))
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    index = next(counter)
                status, answer = respond(index, body)
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature is fixed
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def stand_in() -> Iterator[Callable[[Responder], str]]:
    started: list[StandIn] = []

    def start(respond: Responder) -> str:
        started.append(StandIn(respond))
        return started[-1].url

    yield start
    for server in started:
        server.close()


def ab_stand_in(ratio_a: float, **overrides: Any) -> Responder:
    choose = split(ratio_a)
    return lambda i, _body: (200, routed_response(choose(i), **overrides))


@pytest.fixture(scope="module")
def tutorial_endpoint(iris_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tutorial's A/B graph, unchanged, served by abflow with the iris model in both arms."""
    state_dir = tmp_path_factory.mktemp("smoke-serving")
    models = {"classifier-1": str(iris_model_dir), "classifier-2": str(iris_model_dir)}
    try:
        yield start_detached(TUTORIAL_AB_TEST, models, port=free_port(), state_dir=state_dir).url
    finally:
        stop_detached(state_dir)


def test_the_real_tutorial_graph_passes(tutorial_endpoint: str) -> None:
    # min_p_value=1e-6: a true 50/50 router fails the default 0.001 once in a thousand runs by design,
    # which a test suite must not; the generous p99 budget keeps a busy 2-core machine from failing it.
    report = run_smoke(tutorial_endpoint, ratio_a=0.5, min_p_value=1e-6, p99_budget_ms=5_000, oauth=TUTORIAL_OAUTH)
    assert report.passed, report.failures
    assert report.valid_responses == 200
    assert all(report.arm_counts[arm] > 50 for arm in ("classifier-1", "classifier-2"))


def test_a_split_that_disagrees_with_ratio_a_fails_the_binomial_test(tutorial_endpoint: str) -> None:
    report = run_smoke(tutorial_endpoint, ratio_a=0.9, p99_budget_ms=5_000, oauth=TUTORIAL_OAUTH)
    assert not report.passed
    [failure] = report.failures
    assert "the router sent arm A (classifier-1)" in failure and "but ratio_a=0.9" in failure
    assert "two-sided binomial test" in failure and "check its ratioA" in failure
    assert report.p_value is not None and report.p_value < 1e-10


def test_an_oauth_graph_without_credentials_fails_with_the_fix(tutorial_endpoint: str) -> None:
    [failure] = run_smoke(tutorial_endpoint, requests=10, ratio_a=0.5).failures
    assert "10 of 10 requests got HTTP 401" in failure and "pass oauth=(spec.oauth_key" in failure
    [token, _] = run_smoke(tutorial_endpoint, requests=10, ratio_a=0.5, oauth=("oauth-key", "wrong")).failures
    assert "refused the OAuth credentials (HTTP 401" in token


def test_an_exact_split_passes_with_every_number_reported(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(ab_stand_in(0.5))
    report = run_smoke(url, ratio_a=0.5)
    assert report.passed, report.failures
    assert report.requests == report.valid_responses == 200
    assert report.arm_counts == {"classifier-1": 100, "classifier-2": 100}
    assert report.p_value == pytest.approx(1.0)
    assert report.router_name == "random-ab-test"
    assert sum(sum(c) for c in report.histogram.counts.values()) == 200
    assert 0 < report.latency_ms["p50"] <= report.latency_ms["p90"] <= report.latency_ms["p99"]
    require_pass(report)
    json.loads(report.to_json())


def test_requests_use_the_tutorial_payload_over_varied_iris_rows(stand_in: Callable[[Responder], str]) -> None:
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def record(i: int, body: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            bodies.append(body)
        return 200, routed_response(split(0.5)(i))

    run_smoke(stand_in(record) + "/api/v1.0/predictions", requests=30, ratio_a=0.5, concurrency=3)
    assert len(bodies) == 30
    assert all(b["data"]["names"] == ["sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm"]
               and b["data"]["tensor"]["shape"] == [1, 4] for b in bodies)
    assert len({tuple(b["data"]["tensor"]["values"]) for b in bodies}) >= 10


def test_wrong_class_names_fail_with_the_names_seen(stand_in: Callable[[Responder], str]) -> None:
    # The tutorial's own model misspells versicolor; a client keyed on class names would break.
    url = stand_in(ab_stand_in(0.5, names=["iris-setosa", "iris-vericolor", "iris-virginica"]))
    report = run_smoke(url, requests=40, ratio_a=0.5)
    assert not report.passed
    assert len(report.failures) == 1
    assert "40 of 40 responses named the classes" in report.failures[0]
    assert "iris-vericolor" in report.failures[0] and "class_names" in report.failures[0]


def test_missing_meta_routing_fails_and_names_the_seldon_setting(stand_in: Callable[[Responder], str]) -> None:
    # Exactly what the tutorial shows real Seldon answering: an empty routing map.
    url = stand_in(lambda _i, _b: (200, routed_response(0, routing={})))
    report = run_smoke(url, requests=40, ratio_a=0.5)
    assert not report.passed
    assert report.arm_counts == {"classifier-1": 0, "classifier-2": 0}
    [failure] = report.failures
    assert "did not say which arm served them" in failure
    assert "SELDON_ENABLE_ROUTING_INJECTION" in failure


def test_a_router_under_another_name_is_found_only_when_asked(stand_in: Callable[[Responder], str]) -> None:
    choose = split(0.5)
    url = stand_in(lambda i, _b: (200, routed_response(0, routing={"my-router": choose(i)})))
    assert "has no entry for 'random-ab-test'" in run_smoke(url, requests=20, ratio_a=0.5).failures[0]
    report = run_smoke(url, requests=20, ratio_a=0.5, router_name=None)
    assert report.passed, report.failures
    assert report.router_name == "my-router"


def test_server_errors_fail_with_the_servers_own_reason(stand_in: Callable[[Responder], str]) -> None:
    error = {"status": {"code": 503, "info": "model classifier-2 is not loaded", "reason": "MICROSERVICE_ERROR",
                        "status": "FAILURE"}}
    url = stand_in(lambda i, _b: (503, error) if i % 4 == 0 else (200, routed_response(split(0.5)(i))))
    report = run_smoke(url, requests=40, ratio_a=0.5)
    assert not report.passed
    assert report.errors_by_status == {"503": 10}
    assert any("10 of 40 requests got HTTP 503" in f and "model classifier-2 is not loaded" in f
               and "log" in f for f in report.failures)


def test_probabilities_that_do_not_sum_to_one_fail(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(ab_stand_in(0.5, values=[0.5, 0.3, 0.1]))
    report = run_smoke(url, requests=20, ratio_a=0.5)
    [failure] = report.failures
    assert "do not sum to 1" in failure


def test_a_non_json_answer_is_not_mistaken_for_a_model(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(lambda _i, _b: (200, b"<html>welcome to nginx</html>"))
    [failure, *_] = run_smoke(url, requests=10, ratio_a=0.5).failures
    assert "10 of 10 responses were not JSON" in failure


def test_ratio_one_expects_exactly_arm_a(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(ab_stand_in(1.0))
    report = run_smoke(url, requests=30, ratio_a=1.0)
    assert report.passed, report.failures
    assert report.arm_counts == {"classifier-1": 30, "classifier-2": 0}
    [failure] = run_smoke(url, requests=30, ratio_a=0.5).failures
    assert failure.startswith("smoke: 0 of 30 responses came from arm 1 (classifier-2) although ratio_a=0.5")
    assert "abflow status" in failure


def test_traffic_to_an_arm_that_should_get_none_fails(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(ab_stand_in(0.5))
    [failure] = run_smoke(url, requests=20, ratio_a=0.0).failures
    assert "10 of 20 responses came from arm 0 (classifier-1) although ratio_a=0 sends it no traffic" in failure


def test_the_p99_budget_is_enforced(stand_in: Callable[[Responder], str]) -> None:
    # A zero budget is always exceeded, so this provokes the check without timing anything.
    report = run_smoke(stand_in(ab_stand_in(0.5)), requests=20, ratio_a=0.5, p99_budget_ms=0)
    [failure] = report.failures
    assert "p99 latency" in failure and "exceeds the 0 ms budget" in failure


def test_an_unreachable_endpoint_fails_with_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    report = run_smoke(url, requests=8, ratio_a=0.5, concurrency=2, timeout=2)
    assert report.errors_by_status == {"connection-error": 8}
    [failure] = report.failures
    assert f"8 of 8 requests could not reach {url}" in failure and "abflow status" in failure


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio_a": 1.5}, "ratio_a must be between 0 and 1"),
    ({"ratio_a": float("nan")}, "ratio_a must be between 0 and 1"),
    ({"ratio_a": 0.5, "requests": 0}, "requests must be at least 1"),
    ({"ratio_a": 0.5, "concurrency": 0}, "concurrency must be at least 1"),
])
def test_meaningless_arguments_are_rejected_before_sending(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_smoke("http://127.0.0.1:9", **kwargs)


def test_check_response_reports_every_schema_break() -> None:
    ok = check_response(routed_response(1), router_name="random-ab-test", class_names=DEFAULT_CLASS_NAMES)
    assert ok.arm == 1 and not ok.problems
    for body, expected in [
        ([], "no 'data' object"),
        ({"data": {"ndarray": [[1, 0, 0]]}}, "no 'data.tensor'"),
        ({"data": {"names": list(DEFAULT_CLASS_NAMES), "tensor": {"shape": [3], "values": [1, 0, 0]}}},
         "shape is [3]"),
        ({"data": {"names": list(DEFAULT_CLASS_NAMES), "tensor": {"shape": [1, 3], "values": ["1", 0, 0]}}},
         "expected 3 numbers"),
    ]:
        assert expected in check_response(body, router_name="random-ab-test",
                                          class_names=DEFAULT_CLASS_NAMES).problems["schema"]
    bad_arm = check_response(routed_response(2), router_name="random-ab-test", class_names=DEFAULT_CLASS_NAMES)
    assert bad_arm.arm is None and "not an arm index" in bad_arm.problems["routing"]


def test_require_pass_lists_every_failure(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(lambda _i, _b: (200, routed_response(0, routing={}, names=["a", "b", "c"])))
    report = run_smoke(url, requests=10, ratio_a=0.5)
    with pytest.raises(SmokeFailed) as raised:
        require_pass(report)
    assert "failed 2 check(s)" in str(raised.value)
    assert all(f in str(raised.value) for f in report.failures)


class _Assets(HTMLParser):
    """Collects what would make a page not self-contained: scripts, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.external += [(tag, f"{k}={v}") for k, v in attrs if k in {"src", "href", "srcset", "data"}]


def test_html_report_is_self_contained_and_escapes_what_it_shows(stand_in: Callable[[Responder], str]) -> None:
    url = stand_in(ab_stand_in(0.5, names=["<script>alert(1)</script>", "b", "c"]))
    report = run_smoke(url, requests=20, ratio_a=0.5)
    page = render_html_report(report)
    parsed = _Assets()
    parsed.feed(page)
    assert parsed.external == []
    assert "script" not in parsed.tags and "link" not in parsed.tags and "img" not in parsed.tags
    assert parsed.tags.count("svg") == 2 and "style" in parsed.tags
    assert "FAILED" in page and "&lt;script&gt;" in page
    assert page.count("<rect") >= 2


def judged(answered: dict[int, int], failovers: dict[tuple[int, int], int]) -> SmokeReport:
    observations = [Observation(200, None, 1.0, ResponseCheck(arm=arm, router="random-ab-test"))
                    for arm, count in answered.items() for _ in range(count)]
    return judge(observations, endpoint_url="http://127.0.0.1:1", ratio_a=0.5, router_name="random-ab-test",
                 class_names=DEFAULT_CLASS_NAMES, arm_names=("classifier-1", "classifier-2"), p99_budget_ms=500,
                 min_p_value=0.001, timeout=1, duration_s=1, failovers=failovers)


def test_failovers_are_counted_back_to_the_arm_the_router_chose() -> None:
    """On a loaded machine a slow arm's requests fail over and meta.routing names the arm that answered:
    10/50 answered is a 30/30 split as routed, which is what ratio_a is about."""
    report = judged({0: 10, 1: 50}, {(0, 1): 20})
    assert report.passed, report.failures
    assert report.arm_counts == {"classifier-1": 10, "classifier-2": 50} and report.failovers == 20
    assert report.arm_a_share == 0.5 and "20 failed over" in report.describe()
    assert not judged({0: 10, 1: 50}, {}).passed, "without the failovers the same answers fail the split"


def test_an_arm_every_request_failed_over_from_still_fails_coverage() -> None:
    report = judged({1: 60}, {(0, 1): 30})
    assert not report.passed
    assert any("0 of 60 responses came from arm 0 (classifier-1)" in f for f in report.failures)


def test_the_real_executor_is_asked_for_its_failovers(tutorial_endpoint: str) -> None:
    report = run_smoke(tutorial_endpoint, ratio_a=0.5, min_p_value=1e-6, p99_budget_ms=5_000, oauth=TUTORIAL_OAUTH,
                       count_failovers=True, requests=40)
    assert report.passed and report.failovers == 0


@pytest.mark.parametrize("url", ["http://h:1", "http://h:1/", "http://h:1/api/v1.0/predictions",
                                 "http://h:1/api/v0.1/predictions/"])
def test_the_endpoints_root_is_found_from_either_form_of_url(url: str) -> None:
    assert endpoint_base(url) == "http://h:1"
