"""The endpoint tried as an attacker and as an operator would, on real ``abflow serve`` processes on
127.0.0.1: each test commits an abuse or a fault over raw sockets or real clients and checks what the
server does about it (issue 8).

Graphs here run with small limits (``ABFLOW_<NAME>`` variables, see ``abflow.serving.limits``) so that
the bounds are reached by a few dozen connections and the timeouts in about a second.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from abflow.serving.service import Call, Reply, UrlDispatch, status_reply
from tests.fixtures.arms import graph_arms
from tests.fixtures.processes import wait_until
from tests.fixtures.serving import TUTORIAL_PAYLOAD, ServedGraph, ab_graph_file, start_served_graph

PREDICT = "/api/v1.0/predictions"
OAUTH = ("oauth-key", "oauth-secret")
BASIC = "Basic " + base64.b64encode(b"oauth-key:oauth-secret").decode()
PAYLOAD = json.dumps(TUTORIAL_PAYLOAD).encode()
PARTIAL_BODY = 100_000
HELD_BODIES = 40
MAX_CONNECTIONS = 45
READ_TIMEOUT = 30.0
BOUNDED = {"ABFLOW_MAX_BUFFERED_BYTES": str(HELD_BODIES * PARTIAL_BODY), "ABFLOW_LARGE_BODY_BYTES": "65536",
           "ABFLOW_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
IMPATIENT = {"ABFLOW_HEADER_TIMEOUT": "1", "ABFLOW_BODY_IDLE_TIMEOUT": "1"}


def start(tmp: Path, models: Mapping[str, Path], env: Mapping[str, str], *, oauth: bool = True) -> ServedGraph:
    return start_served_graph(ab_graph_file(tmp, "0.5", oauth=oauth), models, tmp, env=env)


@pytest.fixture(scope="module")
def models(iris_model_dir: Path, iris_model_dir_b: Path) -> dict[str, Path]:
    return {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}


@pytest.fixture(scope="module")
def bounded(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGraph]:
    """An OAuth graph whose bounds are small: 45 connections, 40 × 100 kB of large bodies."""
    served = start(tmp_path_factory.mktemp("bounded"), models, BOUNDED)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def impatient(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGraph]:
    """An OAuth graph that waits 1 s for a request's headers and 1 s for a stalled body."""
    served = start(tmp_path_factory.mktemp("impatient"), models, IMPATIENT)
    yield served
    served.stop()


# --- raw HTTP ---------------------------------------------------------------------------------------


def connect(served: ServedGraph, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=READ_TIMEOUT, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(path: str, length: int | None, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (after any 100 Continue), as status, lower-cased headers and body."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its side (EOF), after whatever it sent before."""
    sock.settimeout(READ_TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return True


def seldon_status(body: bytes) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(body)["status"]
    assert status["status"] == "FAILURE"
    return status


def responses_counted(served: ServedGraph, path: str, code: int) -> float:
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    match = re.search(rf'^abflow_http_responses_total\{{code="{code}",path="{re.escape(path)}"\}} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def gauge(served: ServedGraph, name: str) -> float:
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match[1])


def bearer(served: ServedGraph) -> str:
    """The graph's one cached token: tests share an address, whose token requests are rate-bound."""
    served.token = served.token or served.get_token()
    return f"Bearer {served.token}"


# --- 1. nothing proportional to a request's size before its caller is known ------------------------


def test_a_large_token_body_is_refused_from_its_head_without_being_read(bounded: ServedGraph) -> None:
    for authorization in ({}, {"Authorization": "Basic " + base64.b64encode(b"oauth-key:guess").decode()}):
        with closing(connect(bounded)) as sock:
            sock.sendall(head("/oauth/token", 50 * 1024 * 1024, **authorization))  # the 50 MiB never follow
            status, headers, body = read_response(sock)
            assert status == (413 if not authorization else 401)
            assert headers["connection"] == "close" and seldon_status(body)["code"] == status
            assert closed_by_server(sock)
    assert bounded.get_token()  # the door still opens for the right credentials


def test_a_prediction_without_a_token_is_refused_before_its_body(bounded: ServedGraph) -> None:
    before = responses_counted(bounded, PREDICT, 401)
    with closing(connect(bounded)) as sock:
        sock.sendall(head(PREDICT, 8 * 1024 * 1024))
        status, headers, body = read_response(sock)
        assert status == 401 and "oauth/token" in seldon_status(body)["info"]
        assert headers["connection"] == "close" and closed_by_server(sock)
    assert responses_counted(bounded, PREDICT, 401) == before + 1


def test_expect_100_continue_is_answered_only_after_the_token_is_checked(bounded: ServedGraph) -> None:
    with closing(connect(bounded)) as sock:
        sock.sendall(head(PREDICT, len(PAYLOAD), Expect="100-continue"))
        status, headers, _ = read_response(sock)  # a final answer, no 100: the body is not wanted
        assert status == 401 and headers["connection"] == "close"
    with closing(connect(bounded)) as sock:
        sock.sendall(head(PREDICT, len(PAYLOAD), Expect="100-continue", Authorization=bearer(bounded)))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(PAYLOAD)
        status, _, body = read_response(sock)
        assert status == 200 and "random-ab-test" in json.loads(body)["meta"]["routing"]
    with closing(connect(bounded)) as sock:
        sock.sendall(head(PREDICT, 10 * 1024 * 1024, Expect="100-continue", Authorization=bearer(bounded)))
        status, _, body = read_response(sock)
        assert status == 413 and "over the limit" in seldon_status(body)["info"]


def test_41_connections_holding_partial_large_bodies_the_last_gets_a_fast_503(bounded: ServedGraph) -> None:
    token = bearer(bounded)
    held: list[socket.socket] = []
    try:
        for _ in range(HELD_BODIES):
            sock = connect(bounded)
            held.append(sock)
            sock.sendall(head(PREDICT, PARTIAL_BODY, Authorization=token) + b'{"data":' + b" " * 40_000)
        wait_until(lambda: gauge(bounded, "abflow_buffered_body_bytes") == HELD_BODIES * PARTIAL_BODY,
                   what="the 40 bodies to hold the whole budget")
        with closing(connect(bounded)) as sock:
            sock.sendall(head(PREDICT, PARTIAL_BODY, Authorization=token))
            status, headers, body = read_response(sock)
            assert status == 503 and headers["connection"] == "close"
            assert "bytes of large request bodies" in seldon_status(body)["info"]
        assert bounded.predict().status_code == 200  # a small request does not need the budget
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: gauge(bounded, "abflow_buffered_body_bytes") == 0, what="the budget to be given back")
    assert bounded.predict().status_code == 200


def test_past_the_connection_bound_a_request_gets_a_fast_503_and_room_comes_back(bounded: ServedGraph) -> None:
    bounded.session.close()
    held = [connect(bounded) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        wait_until(lambda: gauge(bounded, "abflow_open_connections") == MAX_CONNECTIONS,
                   what="the held connections and the metrics scrape's own to be open")
        held.append(connect(bounded))
        with closing(connect(bounded)) as sock:
            sock.sendall(head(PREDICT, 8 * 1024 * 1024, Authorization="Bearer x"))
            status, headers, body = read_response(sock)
            assert status == 503 and f"over {MAX_CONNECTIONS} open connections" in seldon_status(body)["info"]
            assert headers["connection"] == "close"
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: bounded.predict().status_code == 200, what="connections to be served again")


def test_a_client_trickling_its_headers_is_cut_off_with_a_408(impatient: ServedGraph) -> None:
    with closing(connect(impatient)) as sock:
        sock.sendall(b"POST /api/v1.0/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        cut = threading.Event()
        status: list[int] = []

        def read() -> None:
            status.append(read_response(sock)[0])
            cut.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sent = 0
        with suppress(OSError):
            while not cut.wait(0.1):  # one header byte per 0.1 s: each arrives well within any idle timeout
                sock.sendall(b"X")
                sent += 1
        reader.join(READ_TIMEOUT)
        assert status == [408] and sent < 200
    assert responses_counted(impatient, "other", 408) >= 1


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(impatient: ServedGraph) -> None:
    with closing(connect(impatient)) as sock:
        status, _, body = read_response(sock)
        assert status == 408 and "headers took over 1s" in seldon_status(body)["info"]


def test_a_body_that_stalls_is_cut_off_with_a_408(impatient: ServedGraph) -> None:
    with closing(connect(impatient)) as sock:
        sock.sendall(head(PREDICT, len(PAYLOAD), Authorization=bearer(impatient)) + PAYLOAD[:10])
        status, headers, body = read_response(sock)
        assert status == 408 and "paused for over 1s" in seldon_status(body)["info"]
        assert headers["connection"] == "close"


def test_a_large_authenticated_body_is_decoded_and_answered(bounded: ServedGraph) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]] * 20_000
    response = bounded.predict({"data": {"ndarray": rows}})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["data"]["ndarray"]) == len(rows)


# --- 5. every request gets a Seldon status body and is counted -------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "code", "label", "words"), [
    ("POST", PREDICT, b'{"data":{"ndarray":[[1,2,3,4]]},"meta":{"tags":' + b'{"k":' * 300 + b"1" + b"}" * 300 + b"}}",
     400, PREDICT, "nests deeper than 32 levels"),
    ("POST", PREDICT, b'{"data":{"ndarray":[[1.7e308,1.7e308,1.7e308,1.7e308]]}}', 400, PREDICT,
     "non-finite probabilities"),
    ("POST", "/api/v1.0/feedback", b'{"reward":1e308,"response":{"meta":{"routing":{"random-ab-test":0}}}}', 400,
     "/api/v1.0/feedback", "between -1e+06 and 1e+06"),
    ("POST", "/nowhere", b"{}", 404, "other", "no endpoint"),
    ("GET", PREDICT, b"", 405, PREDICT, "GET is not allowed"),
    ("GET", "/metrics", b"x", 413, "/metrics", "takes no request body"),
], ids=["nested tags", "extreme inputs", "unbounded reward", "unknown path", "wrong method", "body on a GET"])
def test_each_failure_is_a_seldon_body_and_is_counted(bounded: ServedGraph, method: str, path: str, body: bytes,
                                                      code: int, label: str, words: str) -> None:
    before = responses_counted(bounded, label, code)
    response = requests.request(method, f"{bounded.url}{path}", data=body, timeout=10,
                                headers={"Authorization": bearer(bounded), "Content-Type": "application/json"})
    assert response.status_code == code, response.text[:300]
    assert words in seldon_status(response.content)["info"]
    assert responses_counted(bounded, label, code) == before + 1


def test_malformed_http_gets_a_seldon_400_and_is_counted(bounded: ServedGraph) -> None:
    before = responses_counted(bounded, "other", 400)
    with closing(connect(bounded)) as sock:
        sock.sendall(b"POST /api/v1.0/predictions HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 400 and "malformed HTTP request" in seldon_status(body)["info"]
    assert responses_counted(bounded, "other", 400) == before + 1


def test_no_exception_escapes_as_aiohttps_plain_text_500() -> None:
    """A handler bug, in-process over a real socket: a Seldon 500, counted, and the next request served."""
    import asyncio

    from abflow.serving.http import start_http
    from abflow.serving.metrics import ServingMetrics

    class Buggy:
        max_body_bytes = 1024

        def __init__(self) -> None:
            self.metrics = ServingMetrics()
            self.routes = UrlDispatch()

            async def broken(call: Call) -> Reply:
                raise KeyError("a bug")

            async def fine(call: Call) -> Reply:
                return status_reply(200, "fine")

            self.routes.add("POST", "/broken", broken)
            self.routes.add("POST", "/fine", fine)

    async def exchange() -> tuple[list[tuple[int, bytes]], float | None]:
        service = Buggy()
        endpoint = await start_http(service, "127.0.0.1", 0)
        try:
            answers = []
            for path in ("/broken", "/fine"):
                reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
                writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
                             .encode())
                raw = await reader.read()
                writer.close()
                answers.append((int(raw.split(b" ", 2)[1]), raw.split(b"\r\n\r\n", 1)[1]))
            return answers, service.metrics.registry.get_sample_value("abflow_http_responses_total",
                                                                      {"path": "/broken", "code": "500"})
        finally:
            await endpoint.stop()

    answers, counted = asyncio.run(exchange())
    assert answers[0][0] == 500 and "internal error (KeyError)" in seldon_status(answers[0][1])["info"]
    assert answers[1][0] == 200 and counted == 1


# --- 2. the unauthenticated surface tells states and counts only ------------------------------------


def test_health_and_ready_name_no_pid_port_path_or_uri(bounded: ServedGraph, models: dict[str, Path]) -> None:
    for path in ("/health/status", "/ready", "/health/ping", "/live", "/metrics"):
        text = requests.get(f"{bounded.url}{path}", timeout=10).text
        for secret in (*(str(folder) for folder in models.values()), "file://", '"pid"', '"port"', "/tmp/"):
            assert secret not in text, (path, secret)
    arms = requests.get(f"{bounded.url}/health/status", timeout=10).json()["arms"]
    assert [(arm["name"], arm["status"]) for arm in arms] == [("classifier-1", "up"), ("classifier-2", "up")]


# --- 8. tokens ---------------------------------------------------------------------------------------


def test_token_issuing_is_rate_bound_per_address_and_never_evicts_another_clients(bounded: ServedGraph) -> None:
    session = requests.Session()
    theirs = bounded.get_token()  # from 127.0.0.1
    statuses = []
    for _ in range(40):
        with closing(connect(bounded, source="127.0.0.2")) as sock:
            form = b"grant_type=client_credentials"
            sock.sendall(f"POST /oauth/token HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\nContent-Type: "
                         f"application/x-www-form-urlencoded\r\nContent-Length: {len(form)}\r\n\r\n".encode() + form)
            status, headers, body = read_response(sock)
            statuses.append(status)
            if status == 429:
                assert int(headers["retry-after"]) >= 1 and json.loads(body)["error"] == "slow_down"
                break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    response = session.post(f"{bounded.url}{PREDICT}", json=TUTORIAL_PAYLOAD, timeout=10,
                            headers={"Authorization": f"Bearer {theirs}"})
    assert response.status_code == 200  # the other client's token outlived the flood
    assert bounded.get_token()  # and 127.0.0.1 has its own bucket


# --- 3. no secret or token in the log ----------------------------------------------------------------


def test_the_log_holds_no_secret_and_no_token(bounded: ServedGraph) -> None:
    token = bounded.get_token()
    requests.post(f"{bounded.url}{PREDICT}", data=b"{", timeout=10, headers={"Authorization": f"Bearer {token}"})
    requests.post(f"{bounded.url}/oauth/token", auth=("oauth-key", "wrong-secret"), timeout=10,
                  data={"grant_type": "client_credentials"})
    log = bounded.log()
    assert "ready: " in log
    for secret in (OAUTH[1], token, "wrong-secret", BASIC.split()[1]):
        assert secret not in log


# --- 6. faults: arms killed or stopped under a steady client, with failover ------------------------


class SteadyClient(threading.Thread):
    """Predictions back to back on one keep-alive connection until stopped, keeping every outcome."""

    def __init__(self, served: ServedGraph) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.token = bearer(served) if served.oauth else None
        self.stopping = threading.Event()
        self.answered: list[int] = []
        self.routed: list[int] = []
        self.failures: list[str] = []
        self.closed_by_server = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.served.port, timeout=READ_TIMEOUT)
        headers = {"Content-Type": "application/json", **({"Authorization": self.token} if self.token else {})}
        while not self.stopping.is_set():
            try:
                connection.request("POST", PREDICT, body=PAYLOAD, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                return
            self.answered.append(response.status)
            if response.status != 200:
                self.failures.append(body.decode(errors="replace")[:300])
            else:
                self.routed.append(json.loads(body)["meta"]["routing"]["random-ab-test"])
            if response.getheader("Connection", "").lower() == "close":
                self.closed_by_server.set()
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(READ_TIMEOUT)


def failovers(served: ServedGraph, arm: str, clients: list[SteadyClient]) -> float:
    """Failovers from ``arm`` to classifier-1; fails (with what the clients saw) once no client is left
    sending, since nothing could then be counted."""
    if not any(client.is_alive() for client in clients):
        raise AssertionError(f"every client stopped: {[client.failures for client in clients]}")
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    counted = [sample.value for family in text_string_to_metric_families(text) if family.name == "abflow_failovers"
               for sample in family.samples
               if sample.name == "abflow_failovers_total" and sample.labels == {"arm": arm, "to": "classifier-1"}]
    return sum(counted)


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_an_arm_killed_or_stopped_under_load_fails_nothing_with_failover(
        fault: str, models: dict[str, Path], tmp_path: Path) -> None:
    served = start(tmp_path, models, {})
    clients = [SteadyClient(served) for _ in range(4)]
    victim = graph_arms(served.proc.pid, 2)[1]
    try:
        for client in clients:
            client.start()
        wait_until(lambda: all(len(c.routed) > 20 for c in clients), what="the clients to be served")
        os.kill(victim, getattr(signal, fault))
        # Polled every 0.25 s, not flat out: each scrape is parsed here, holding the GIL the clients need.
        wait_until(lambda: failovers(served, "classifier-2", clients) > 0, timeout=30, interval=0.25,
                   what="a failover to be counted")
        wait_until(lambda: served.health()["status"] == "ok" and graph_arms(served.proc.pid, 2)[1] != victim,
                   timeout=60, interval=0.1, what="classifier-2 to be replaced")
        counts = [len(c.routed) for c in clients]
        wait_until(lambda: all(1 in c.routed[n:] for c, n in zip(clients, counts, strict=True)),
                   what="the new classifier-2 to take its share again")
    finally:
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
        for client in clients:
            client.stop()
        served.stop()
    assert [c.failures for c in clients] == [[]] * len(clients)
    assert all(set(c.answered) == {200} for c in clients)


# --- 7. graceful stop loses nothing ------------------------------------------------------------------


def test_sigterm_under_keep_alive_clients_loses_no_request(models: dict[str, Path], tmp_path: Path) -> None:
    served = start(tmp_path, models, {})
    clients = [SteadyClient(served) for _ in range(4)]
    idle = http.client.HTTPConnection("127.0.0.1", served.port, timeout=READ_TIMEOUT)
    headers = {"Content-Type": "application/json", "Authorization": bearer(served)}
    idle.request("POST", PREDICT, body=PAYLOAD, headers=headers)
    assert idle.getresponse().read()
    try:
        for client in clients:
            client.start()
        wait_until(lambda: all(len(c.routed) > 20 for c in clients), what="the clients to be served")
        served.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: all(c.closed_by_server.is_set() for c in clients), timeout=30,
                   what="every busy client to get its Connection: close")
        idle.request("POST", PREDICT, body=PAYLOAD, headers=headers)  # idle until now, inside the grace
        response = idle.getresponse()
        assert response.status == 200 and response.getheader("Connection") == "close" and response.read()
    finally:
        for client in clients:
            client.stop()
        idle.close()
    assert served.proc.wait(timeout=60) == 0
    assert [c.failures for c in clients] == [[]] * len(clients)
