"""What ``abflow serve`` trusts and what it exposes, checked on real processes: one door (no arm on TCP,
the executor wants the graph's token), no secret in the log, private state, and no pickle unpickled
without something vouching for it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import requests

from abflow.components.registry import publish_model
from abflow.components.training import TrainResult
from abflow.serving.artifact import ALLOW_UNVERIFIED_FLAG, DEFAULT_CLASS_NAMES, MODEL_FILE, SIGNING_KEY_ENV
from abflow.serving.daemon import ENDPOINT_FILE, LOG_FILE, READY_FILE, start_detached, stop_detached
from tests.fixtures.arms import arm_socket, child_pids, graph_arms, listening_tcp_ports, tcp_sockets
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.serving import (
    TUTORIAL_DIR,
    TUTORIAL_PAYLOAD,
    ServedGraph,
    serve_command,
    serving_env,
    start_served_graph,
)

ServeGraph = Callable[[Path, Mapping[str, Path | str]], ServedGraph]


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_no_arm_listens_on_tcp_and_the_one_door_wants_the_graphs_token(
        serve_graph: ServeGraph, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    served = serve_graph(TUTORIAL_DIR / "ab_test.json", {"classifier-1": iris_model_dir,
                                                          "classifier-2": iris_model_dir_b})
    arms = graph_arms(served.proc.pid, 2)
    zygotes = child_pids(served.proc.pid)
    assert len(zygotes) == 1
    # The check sees listening ports where there are some: the supervisor's is the graph's one port.
    assert listening_tcp_ports(served.proc.pid) == {served.port}
    for pid in [*zygotes, *arms]:
        assert tcp_sockets(pid) == [], f"pid {pid} holds a TCP socket"
    for pid in arms:
        socket_path = arm_socket(pid)
        assert socket_path is not None and mode(Path(socket_path).parent) == 0o700

    url = f"{served.url}/api/v1.0/predictions"
    assert requests.post(url, json=TUTORIAL_PAYLOAD, timeout=10).status_code == 401
    assert requests.post(url, json=TUTORIAL_PAYLOAD, headers={"Authorization": "Bearer forged"},
                         timeout=10).status_code == 401
    assert served.predict().status_code == 200  # and with the token, it answers


def oauth_graph(folder: Path, key: str, secret: str) -> Path:
    document = json.loads((TUTORIAL_DIR / "ab_test.json").read_text())
    document["spec"].update(oauth_key=key, oauth_secret=secret)
    path = folder / "ab-oauth.json"
    path.write_text(json.dumps(document))
    return path


def test_no_secret_or_token_in_the_log_and_the_state_is_owner_only(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    key, secret = f"key-{secrets.token_hex(8)}", f"secret-{secrets.token_hex(16)}"
    state_dir = tmp_path / "state"
    info = start_detached(oauth_graph(tmp_path, key, secret),
                          {"classifier-1": str(iris_model_dir), "classifier-2": str(iris_model_dir_b)},
                          port=free_port(), state_dir=state_dir, ready_timeout=60)
    try:
        token = requests.post(f"{info.url}/oauth/token", auth=(key, secret),
                              data={"grant_type": "client_credentials"}, timeout=10).json()["access_token"]
        answer = requests.post(f"{info.url}/api/v1.0/predictions", json=TUTORIAL_PAYLOAD,
                               headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        assert mode(state_dir) == 0o700
        for name in (LOG_FILE, ENDPOINT_FILE, READY_FILE):
            assert mode(state_dir / name) == 0o600, name
    finally:
        stop_detached(state_dir)
    log = info.log_path.read_text()
    assert "$OAUTH_KEY:$OAUTH_SECRET" in log and "ready: " in log  # the hint is there, without the values
    assert secret not in log and key not in log and token not in log


def test_serve_refuses_a_bare_pickle_with_the_reason_and_the_fix(tmp_path: Path, iris_model_dir: Path) -> None:
    bare = tmp_path / "IrisClassifier.joblib"
    shutil.copyfile(iris_model_dir / MODEL_FILE, bare)
    command = serve_command(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": bare}, free_port())
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, env=serving_env())
    assert finished.returncode != 0
    assert "refusing to unpickle" in finished.stderr and "has no metadata.json" in finished.stderr
    assert "publish it with the store step" in finished.stderr and ALLOW_UNVERIFIED_FLAG in finished.stderr


def test_the_opt_in_serves_a_bare_pickle_and_warns_on_every_start(tmp_path: Path, iris_model_dir: Path) -> None:
    bare = tmp_path / "IrisClassifier.joblib"
    shutil.copyfile(iris_model_dir / MODEL_FILE, bare)
    served = start_served_graph(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": bare}, tmp_path,
                                ALLOW_UNVERIFIED_FLAG)
    try:
        assert served.predict().status_code == 200
        arm_warning = "WARNING: serving an UNVERIFIED model"
        assert f"WARNING: {ALLOW_UNVERIFIED_FLAG}" in served.log() and served.log().count(arm_warning) == 1
        (arm,) = graph_arms(served.proc.pid, 1)
        os.kill(arm, signal.SIGKILL)
        wait_until(lambda: served.log().count(arm_warning) == 2, timeout=60, what="the restarted arm's warning")
    finally:
        served.stop()


def test_the_signing_key_reaches_the_arms(tmp_path: Path, iris_model_dir: Path) -> None:
    """Set for ``abflow serve``, the key is checked in every arm: a version published unsigned is refused."""
    command = serve_command(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": iris_model_dir},
                            free_port())
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**serving_env(), SIGNING_KEY_ENV: "serving key"})
    assert finished.returncode != 0
    assert f"is not signed (metadata.json.sig is missing) but {SIGNING_KEY_ENV} is set" in finished.stderr


def test_a_version_published_with_the_key_serves(tmp_path: Path, iris_model_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "serving key")  # for publish_model here and, inherited, the server
    trained = TrainResult(model_bytes=(iris_model_dir / MODEL_FILE).read_bytes(), metrics={}, confusion_matrix=[],
                          class_names=list(DEFAULT_CLASS_NAMES), params={}, data_fingerprint="")
    published = publish_model(str(tmp_path / "store"), "iris", trained, run_id="signed", version="v1")
    served = start_served_graph(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": published.uri},
                                tmp_path)
    try:
        assert served.predict().status_code == 200
    finally:
        served.stop()
