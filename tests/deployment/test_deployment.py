"""The ``local`` deploy target with real serving processes on 127.0.0.1.

Releases are told apart over HTTP without peeking at files: v1 is deployed with ratio_a=1 (every
answer from arm 0, model v1) and v2 with ratio_a=0 (every answer from arm 1, model v2, trained with a
different C, so its probabilities differ). While releases replace each other, a ``Hammer`` keeps
sending predictions to the port and must never see one fail. Every test's state root is torn down by
``stop_local``, which stops every release's processes, whatever the test did.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import joblib
import numpy as np
import pytest
import requests

from abflow.components.local_target import (
    DeployError,
    LocalRelease,
    current_deployment,
    deploy_local,
    rollback_local,
    stop_local,
)
from abflow.components.smoke import payload_for, require_pass, run_smoke
from abflow.serving.artifact import MODEL_FILE
from abflow.serving.daemon import endpoint_status
from tests.fixtures.models import write_iris_model
from tests.fixtures.processes import free_port, wait_until

ROW = (5.9, 3.0, 4.2, 1.5)  # a versicolor near the boundary, where C changes the probabilities


@pytest.fixture(scope="module")
def model_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_iris_model(tmp_path_factory.mktemp("iris-v2"), version="v2", c=0.05)


@pytest.fixture
def corrupt_model(iris_model_dir: Path, tmp_path: Path) -> Path:
    """A copy whose model.joblib no longer matches the sha256 in its metadata.json."""
    folder = Path(shutil.copytree(iris_model_dir, tmp_path / "corrupt"))
    (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes()[:-64] + b"\0" * 64)
    return folder


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "deploy"
    yield root
    stop_local(root)
    status = local_status(root / "serving")
    assert not (status and status.get("running")), "the endpoint still runs after teardown"


def local_status(serving_dir: Path) -> dict[str, Any] | None:
    result: dict[str, Any] | None = endpoint_status(serving_dir)
    return result


class Hammer:
    """Two clients predicting in a loop until stopped: one on a keep-alive session, one opening a new
    connection per request. Each answer is counted by the arm that served it; anything but a 200 with
    a body is a failure."""

    DEADLINE = 300.0

    def __init__(self, endpoint: str) -> None:
        self.url = endpoint + "/api/v1.0/predictions"
        self.arms: collections.Counter[int] = collections.Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
                         for keep_alive in (True, False)]

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: sum(self.arms.values()) > 10 or self.failures, what="the hammer to get answers")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def answers_from(self, arm: int) -> int:
        with self._lock:
            return self.arms[arm]

    def _run(self, keep_alive: bool) -> None:
        client: Any = requests.Session() if keep_alive else requests
        deadline = time.monotonic() + self.DEADLINE
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                response = client.post(self.url, json=payload_for(ROW), timeout=10)
                arm = response.json()["meta"]["routing"]["random-ab-test"] if response.status_code == 200 else None
            except (requests.RequestException, ValueError) as exc:
                arm, response = None, None
                failure = f"{'keep-alive' if keep_alive else 'new connection'}: {exc!r}"
            else:
                failure = f"HTTP {response.status_code}: {response.text[:300]}"
            with self._lock:
                if arm is None:
                    self.failures.append(failure)
                else:
                    self.arms[arm] += 1


def predict(endpoint: str) -> tuple[int, list[float]]:
    response = requests.post(endpoint + "/api/v1.0/predictions", json=payload_for(ROW), timeout=10)
    response.raise_for_status()
    body = response.json()
    return body["meta"]["routing"]["random-ab-test"], body["data"]["tensor"]["values"]


def expected_probabilities(model_dir: Path) -> list[float]:
    model = joblib.load(model_dir / MODEL_FILE)
    return [float(v) for v in model.predict_proba(np.array([ROW]))[0]]


def assert_live(state_root: Path, record: LocalRelease) -> None:
    """``<root>/serving`` (what `abflow status`/`abflow down` read) describes ``record``'s running release."""
    status = local_status(state_root / "serving")
    assert status is not None and status["running"] and status["health"]["status"] == "ok"
    assert status["state_dir"] == record.serving_state_dir == str(state_root / "releases" / str(record.release)
                                                                   / "serving")


def test_deploy_replace_refuse_and_roll_back_without_failing_a_request(
        state_root: Path, iris_model_dir: Path, model_v2: Path, corrupt_model: Path) -> None:
    port = free_port()
    v1 = deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=1.0,
                      state_root=state_root, port=port)
    assert (v1.release, v1.previous_release, v1.endpoint) == (1, None, f"http://127.0.0.1:{port}")
    arm, values = predict(v1.endpoint)
    assert arm == 0 and values == pytest.approx(expected_probabilities(iris_model_dir), abs=1e-9)
    assert_live(state_root, v1)
    v1_pid = local_status(state_root / "serving")["pid"]  # type: ignore[index]

    with Hammer(v1.endpoint) as hammer:
        v2 = deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(model_v2), ratio_a=0.0,
                          state_root=state_root, port=port)
        assert (v2.release, v2.previous_release, v2.endpoint) == (2, 1, v1.endpoint)
        assert local_status(state_root / "releases" / "1" / "serving") is None, "release 1 was not stopped"
        assert_live(state_root, v2)
        seen_v2 = hammer.answers_from(1)
        wait_until(lambda: hammer.answers_from(1) > seen_v2 + 20, what="the hammer to be answered by release 2")

        # A corrupt artifact: release 3's arm refuses it, so release 3 never serves and 2 never stops.
        with pytest.raises(DeployError, match=r"(?s)release 3 did not start, so nothing changed: release 2 keeps "
                                              r"serving at .*Cause: .*classifier-2.*sha256"):
            deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(corrupt_model), ratio_a=0.5,
                         state_root=state_root, port=port)
        assert current_deployment(state_root) == v2
        assert not (state_root / "releases" / "3").exists()
        assert_live(state_root, v2)

        with pytest.raises(DeployError, match="release 1 is no longer current"):
            rollback_local(state_root, expected_release=1)
        restored = rollback_local(state_root, expected_release=2)
        assert restored is not None
        seen_v1 = hammer.answers_from(0)
        wait_until(lambda: hammer.answers_from(0) > seen_v1 + 20, what="the hammer to be answered by release 1")
    assert hammer.failures == [], f"{len(hammer.failures)} failed requests while releases switched"
    assert hammer.answers_from(0) and hammer.answers_from(1)

    assert predict(v2.endpoint)[0] == 0
    arm, values = predict(v1.endpoint)
    assert arm == 0 and values == pytest.approx(expected_probabilities(iris_model_dir), abs=1e-9)
    require_pass(run_smoke(restored.endpoint, requests=40, ratio_a=1.0, p99_budget_ms=10_000))
    graph = json.loads(Path(v2.graph_path).read_text())
    assert graph["kind"] == "SeldonDeployment"
    assert graph["spec"]["predictors"][0]["graph"]["parameters"][0]["value"] == "0.0"
    assert (restored.release, restored.previous_release, restored.endpoint) == (1, 2, v1.endpoint)
    assert current_deployment(state_root) == restored
    assert LocalRelease.from_json((state_root / "previous.json").read_text()) == v2
    assert_live(state_root, restored)
    assert local_status(state_root / "serving")["pid"] != v1_pid  # type: ignore[index]


def test_a_release_that_is_not_ready_in_time_leaves_the_old_one_and_a_first_release_rolls_back_to_nothing(
        state_root: Path, iris_model_dir: Path, model_v2: Path) -> None:
    port = free_port()
    v1 = deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=1.0,
                      state_root=state_root, port=port)
    # No server gets ready in a millisecond: the new release is given up, the old one never stopped.
    with pytest.raises(DeployError, match=r"(?s)release 2 did not start, so nothing changed: release 1 keeps "
                                          r"serving at .*Cause: abflow serve was not ready within 0.001s"):
        deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(model_v2), ratio_a=0.0,
                     state_root=state_root, port=port, ready_timeout=0.001)
    assert predict(v1.endpoint)[0] == 0
    assert current_deployment(state_root) == v1
    assert_live(state_root, v1)

    # v1 replaced nothing, so rolling it back leaves no endpoint (and says so by returning None).
    assert endpoint_status(state_root / "serving")
    assert rollback_local(state_root) is None
    assert current_deployment(state_root) is None
    with pytest.raises(requests.ConnectionError):
        predict(v1.endpoint)
    with pytest.raises(DeployError, match="nothing is deployed"):
        rollback_local(state_root)


def test_a_port_held_by_another_server_fails_the_deploy_with_the_reason(state_root: Path,
                                                                       iris_model_dir: Path) -> None:
    """A release shares its port only with abflow releases (SO_REUSEPORT on both sides), never with a
    server that did not ask for it."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(DeployError, match=rf"(?s)release 1 did not start, so nothing changed: nothing was "
                                              rf"deployed before.*port {port} on 127.0.0.1 is in use by another "
                                              rf"program.*abflow run --local-port"):
            deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=1.0,
                         state_root=state_root, port=port)
    assert current_deployment(state_root) is None
    assert not (state_root / "releases" / "1").exists()


@pytest.mark.parametrize("ratio_a", [1.5, -0.1, float("nan")])
def test_a_bad_ratio_is_refused_before_anything_happens(state_root: Path, iris_model_dir: Path,
                                                        ratio_a: float) -> None:
    with pytest.raises(ValueError, match="ratio_a must be between 0 and 1"):
        deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=ratio_a,
                     state_root=state_root)
    assert not state_root.exists()


def test_records_from_another_target_or_version_are_refused_with_the_fix() -> None:
    with pytest.raises(DeployError, match="not a local deployment record"):
        LocalRelease.from_json('{"target": "seldon", "endpoint": "http://ingress"}')
    with pytest.raises(DeployError, match=r"lacks \['arm_names'.*redeploy"):
        LocalRelease.from_json('{"target": "local", "release": 1}')
