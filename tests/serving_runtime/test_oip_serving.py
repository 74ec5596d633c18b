"""The Open Inference Protocol on real processes, spoken by a kept v2 client (tritonclient's HTTP
client): the executor serves the A/B graph as one model (and each arm by its node name), the model
server its one model; the chosen arm comes back in the response's parameters and x-seldon-route."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.fixtures.processes import free_port, http_ok, wait_until
from tests.fixtures.serving import ServedGraph, ab_graph_file, serving_env, start_served_graph

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
CLASSES = ["iris-setosa", "iris-versicolor", "iris-virginica"]
ARMS = ("classifier-1", "classifier-2")


def infer(client: triton.InferenceServerClient, model: str) -> triton.InferResult:
    features = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    features.set_data_from_numpy(ROWS, binary_data=False)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in ("probabilities", "class")]
    return client.infer(model, [features], outputs=outputs, request_id="req-7")


@pytest.fixture(scope="module")
def ab(tmp_path_factory: pytest.TempPathFactory, iris_model_dir: Path, iris_model_dir_b: Path) -> Iterator[ServedGraph]:
    folder = tmp_path_factory.mktemp("oip")
    served = start_served_graph(ab_graph_file(folder, "0.5"), {"classifier-1": iris_model_dir,
                                                                "classifier-2": iris_model_dir_b}, folder)
    yield served
    served.stop()


def graph_name(served: ServedGraph) -> str:
    return str(served.health()["graph"])


def test_the_ab_graph_is_one_v2_model_whose_answers_name_the_arm(ab: ServedGraph) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{ab.port}")
    model = graph_name(ab)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
    metadata = client.get_model_metadata(model)
    assert metadata["name"] == model and metadata["inputs"][0]["shape"] == [-1, 4]
    assert sorted(metadata["versions"]) == ["v1", "v2"]
    arms = []
    for _ in range(40):
        result = infer(client, model)
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
        assert [c.decode() if isinstance(c, bytes) else c for c in result.as_numpy("class")] == \
            [CLASSES[i] for i in probabilities.argmax(axis=1)]
        response = result.get_response()
        assert response["id"] == "req-7" and response["model_name"] == model
        parameters = response["parameters"]
        assert parameters["router"] == "random-ab-test" and ARMS[parameters["child"]] == parameters["arm"]
        arms.append(parameters["arm"])
    assert set(arms) == set(ARMS)  # ratio 0.5: 40 requests all on one arm has odds 2e-12


def test_an_arm_is_a_v2_model_too_and_the_route_header_names_it(ab: ServedGraph) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{ab.port}")
    assert {infer(client, "classifier-2").get_response()["parameters"]["arm"] for _ in range(10)} == {"classifier-2"}
    assert infer(client, "classifier-2").get_response()["model_version"] == "v2"
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROWS[0].tolist()}]}
    raw = requests.post(f"{ab.url}/v2/models/{graph_name(ab)}/infer", json=body, timeout=10)
    arm = raw.json()["parameters"]["arm"]
    assert raw.headers["x-seldon-route"] == f":{arm}:"
    assert raw.headers["Seldon-Puid"] == raw.json()["parameters"]["puid"]


def test_what_the_codec_refuses_reaches_the_client_as_a_v2_error(ab: ServedGraph) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{ab.port}")
    features = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    features.set_data_from_numpy(ROWS, binary_data=True)
    with pytest.raises(InferenceServerException, match="binary_data=False"):
        client.infer(graph_name(ab), [features])
    narrow = triton.InferInput("input-0", [1, 3], "FP64")
    narrow.set_data_from_numpy(ROWS[:1, :3], binary_data=False)
    with pytest.raises(InferenceServerException, match="expected 4 features per row, got 3"):
        client.infer(graph_name(ab), [narrow])
    assert not client.is_model_ready("no-such-model")


def test_the_model_server_speaks_v2_for_its_one_model(tmp_path: Path, iris_model_dir: Path) -> None:
    port = free_port()
    log = tmp_path / "model.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "abflow.serving.modelserver", "--model", str(iris_model_dir),
                                 "--port", str(port), "--name", "classifier"], stdout=out, stderr=subprocess.STDOUT,
                                env=serving_env())
    try:
        wait_until(lambda: proc.poll() is None and http_ok(f"http://127.0.0.1:{port}/ready"), timeout=60,
                   interval=0.05, what="the model server")
        client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classifier")
        assert client.get_model_metadata("classifier")["outputs"][0]["shape"] == [-1, 3]
        response = infer(client, "classifier").get_response()
        assert response["parameters"] == {"arm": "classifier"} and response["model_version"] == "v1"
    finally:
        proc.terminate()
        assert proc.wait(30) in (0, -15)
