"""The shadow's counts as the smoke test reads them from ``/health/status``, from a stand-in of that one
endpoint serving the counts a dead shadow, or a graph without one, leaves (the live counts are tested
with the real executor in ``test_deploy_challenger``)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from abflow.components.shadow_smoke import ShadowSummary, observe_shadow


class _Health(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def observed(health: dict[str, object]) -> tuple[ShadowSummary | None, str | None]:
    """What ``observe_shadow`` makes of an endpoint whose ``/health/status`` is ``health``."""
    _Health.body = json.dumps(health).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return observe_shadow(f"http://127.0.0.1:{server.server_port}", 10)
    finally:
        server.shutdown()


def test_a_shadow_that_answered_none_of_its_copies_fails_the_smoke_test_naming_it() -> None:
    summary, failure = observed({"shadow": {"name": "classifier-2", "fraction": 1.0, "answered": 0, "error": 9,
                                            "dropped": 1, "not_mirrored": 0, "agreement": None}})
    assert summary is not None and (summary.mirrored, summary.errors, summary.dropped) == (10, 9, 1)
    assert failure is not None and "classifier-2 answered none of the 10 requests" in failure


def test_an_endpoint_without_a_shadow_is_a_failure_that_says_how_it_was_deployed() -> None:
    summary, failure = observed({"status": "ok"})
    assert summary is None and failure is not None and "reports no shadow" in failure
