"""Seldon Core's own Python client against a real ``abflow serve``: predict and feedback through the
gateway paths it uses (``gateway="seldon"``, ``"ambassador"`` and ``"istio"``, with and without a
namespace), tensor and ndarray; plus the metadata endpoints and the ``Seldon-Puid`` header.

The client (seldon-core 1.17.1, Apache-2.0) lives in its own venv, created once per machine: it pins
numpy<2, protobuf 3.20, jsonschema 3.2 and prometheus-client 0.8, which abflow's own environment
cannot share, so it is a test tool, never a dependency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fixtures.serving import TUTORIAL_PAYLOAD, ab_graph_file, start_served_graph

SELDON_CORE = "seldon-core==1.17.1"
VENVS = Path(os.environ.get("ABFLOW_TEST_VENVS") or Path.home() / ".cache" / "abflow" / "test-venvs")
CALLS = Path(__file__).with_name("seldon_client_calls.py")


@pytest.fixture(scope="session")
def seldon_python() -> Path:
    """The interpreter of a venv holding Seldon's client, made on first use (about a minute)."""
    venv = VENVS / SELDON_CORE.replace("==", "-")
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if not done.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", SELDON_CORE], capture_output=True,
                                 text=True, timeout=1200)
        assert install.returncode == 0, f"pip install {SELDON_CORE} failed:\n{install.stderr[-3000:]}"
        done.write_text(SELDON_CORE)
    return python


def test_seldons_client_predicts_and_sends_feedback_through_every_gateway_path(
        seldon_python: Path, tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    graph = ab_graph_file(tmp_path, "0.5", name="iris-ab")
    deployment = json.loads(graph.read_text())["metadata"]["name"]
    served = start_served_graph(graph, {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}, tmp_path)
    try:
        ran = subprocess.run([str(seldon_python), str(CALLS), f"127.0.0.1:{served.port}", deployment],
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        calls = [json.loads(line) for line in ran.stdout.splitlines()]
        assert len(calls) == 16
        for call in calls:
            assert call["success"], call
            response = call["response"]
            assert response["data"]["names"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]
            assert call["payload_type"] in response["data"], "the response mirrors the request's encoding"
            assert response["meta"]["routing"]["random-ab-test"] in (0, 1) and response["meta"]["puid"]
            assert call["feedback"]["success"], call
        health = served.health()
        assert sum(arm["feedback"] for arm in health["arms"]) == 16, "a reward of 0 (sent with no key) counts"
        assert sum(arm["mean_reward"] * arm["feedback"] for arm in health["arms"] if arm["feedback"]) == 8
    finally:
        assert served.stop() == 0


def test_metadata_the_puid_header_and_a_wrong_deployment(tmp_path: Path, iris_model_dir: Path,
                                                         iris_model_dir_b: Path) -> None:
    graph = ab_graph_file(tmp_path, "0.5", name="iris-ab")
    deployment = json.loads(graph.read_text())["metadata"]["name"]
    served = start_served_graph(graph, {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}, tmp_path)
    try:
        predicted = served.predict()
        assert predicted.headers["Seldon-Puid"] == predicted.json()["meta"]["puid"]
        metadata = requests.get(f"{served.url}/api/v1.0/metadata", timeout=10).json()
        assert metadata["name"] == deployment and set(metadata["models"]) == {"classifier-1", "classifier-2"}
        assert metadata["graphinputs"] == [{"messagetype": "tensor", "schema": {"shape": [4]}}]
        (outputs,) = metadata["graphoutputs"]
        assert outputs["schema"]["names"] == ["iris-setosa", "iris-versicolor", "iris-virginica"]
        one = requests.get(f"{served.url}/seldon/models/{deployment}/api/v1.0/metadata/classifier-2", timeout=10)
        assert one.status_code == 200 and one.json() == metadata["models"]["classifier-2"]
        assert one.json()["versions"] == ["v2"]
        wrong = served.post(f"/seldon/models/not-{deployment}/api/v1.0/predictions", json_body=TUTORIAL_PAYLOAD)
        assert wrong.status_code == 404 and wrong.json()["status"]["status"] == "FAILURE"
    finally:
        assert served.stop() == 0
