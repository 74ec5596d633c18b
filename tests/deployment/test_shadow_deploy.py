"""deploy-ab and smoke-test with ``deploy_mode=shadow`` on the real local target: the champion serves
every request, the challenger gets a copy of the stated fraction, and the smoke report says how many
copies it answered and how often it agreed. No experiment starts: no user sees the shadow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from abflow.components.deploy_targets import deploy_challenger
from abflow.components.experiment import running_experiment
from abflow.components.local_target import current_deployment, stop_local
from abflow.components.registry import PublishedModel, promote, publish_model
from abflow.components.shadow_smoke import observe_shadow, smoke_shadow_deployment
from abflow.components.smoke import render_html_report
from abflow.components.training import train_iris
from abflow.serving.graph import GraphError, load_graph
from tests.fixtures.processes import free_port

REQUESTS = 400


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, PublishedModel, PublishedModel]:
    root = str(tmp_path_factory.mktemp("store"))
    champion = publish_model(root, "iris", train_iris(), run_id="run-1", version="v1")
    promote(root, "iris", champion, run_id="run-1")
    challenger = publish_model(root, "iris", train_iris(c=0.001), run_id="run-2", version="v2")
    return root, champion, challenger


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deploy"
    yield root
    stop_local(root)


def deploy_shadow(root: str, state_root: Path, champion: PublishedModel, challenger: PublishedModel,
                  champion_version: str, fraction: float) -> object:
    return deploy_challenger(
        "local", artifact_root=root, model_name="iris", champion_version=champion_version,
        challenger_version=challenger.version, model_a_uri=champion.uri, model_b_uri=challenger.uri, ratio_a=0.5,
        ratio_schedule="", image="", namespace="", name="iris-ab", local_state_dir=str(state_root),
        local_port=free_port(), prometheus_url="", run_id="run-2", mode="shadow", shadow_fraction=fraction,
    )


def test_a_shadow_deploy_serves_the_champion_mirrors_the_fraction_and_reports_agreement(
        store: tuple[str, PublishedModel, PublishedModel], state_root: Path) -> None:
    root, champion, challenger = store
    deployed = deploy_shadow(root, state_root, champion, challenger, "v1", 0.5)
    assert deployed.mode == "shadow" and deployed.experiment is None and deployed.ratio_a == 1.0
    assert running_experiment(root, "iris") is None
    release = current_deployment(state_root)
    assert release is not None and (release.mode, release.shadow_fraction, release.ratio_a) == ("shadow", 0.5, 1.0)
    graph = load_graph(release.graph_path)
    assert graph.router is None and graph.shadow is not None and graph.shadow.model_uri == challenger.uri

    report = smoke_shadow_deployment(release.endpoint, release.to_json(), requests=REQUESTS, p99_budget_ms=5000)
    assert report.passed, report.failures
    assert report.arm_counts == {"classifier-1": REQUESTS}
    shadow = report.shadow
    assert shadow is not None and shadow["measured"] and shadow["fraction"] == 0.5
    # 200 expected; 6 standard deviations (±60) allowed.
    assert abs(shadow["mirrored"] - REQUESTS / 2) <= 60 and shadow["answered"] == shadow["mirrored"]
    assert 0 < shadow["agreement"] < 1, "a C=0.001 model disagrees with the default one on some iris rows"
    assert report.as_metrics()["smoke_shadow_agreement"] == shadow["agreement"]
    assert "same most probable class as the served answer" in render_html_report(report)


def test_without_a_champion_there_is_nothing_to_shadow_and_the_model_deploys_as_ab(
        store: tuple[str, PublishedModel, PublishedModel], state_root: Path) -> None:
    root, champion, _ = store
    deployed = deploy_shadow(root, state_root, champion, champion, "", 0.5)
    assert deployed.mode == "ab"
    release = current_deployment(state_root)
    assert release is not None and release.mode == "ab"


def test_a_fraction_that_is_not_a_whole_percent_deploys_nothing(
        store: tuple[str, PublishedModel, PublishedModel], state_root: Path) -> None:
    root, champion, challenger = store
    with pytest.raises(GraphError, match="whole percent"):
        deploy_shadow(root, state_root, champion, challenger, "v1", 0.123)
    assert current_deployment(state_root) is None


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


def test_a_shadow_that_answered_none_of_its_copies_fails_the_smoke_test_naming_it() -> None:
    """The counts a dead shadow leaves in ``/health/status``, from a stand-in of that one endpoint."""
    _Health.body = json.dumps({"shadow": {"name": "classifier-2", "fraction": 1.0, "answered": 0, "error": 9,
                                          "dropped": 1, "not_mirrored": 0, "agreement": None}}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary, failure = observe_shadow(f"http://127.0.0.1:{server.server_port}", 10)
    finally:
        server.shutdown()
    assert summary is not None and (summary.mirrored, summary.errors, summary.dropped) == (10, 9, 1)
    assert failure is not None and "classifier-2 answered none of the 10 requests" in failure


def test_an_endpoint_without_a_shadow_is_a_failure_that_says_how_it_was_deployed() -> None:
    _Health.body = json.dumps({"status": "ok"}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary, failure = observe_shadow(f"http://127.0.0.1:{server.server_port}", 10)
    finally:
        server.shutdown()
    assert summary is None and failure is not None and "reports no shadow" in failure
