"""Outcomes captured faithfully by a real ``abflow serve --experiment``: the durable ledger (through a
SIGKILL and a restart), feedback as Seldon clients send it, and Seldon's metric names."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from abflow.serving.ledger import LEDGER_FILE, read_outcomes
from tests.fixtures.processes import free_port, http_ok, wait_until
from tests.fixtures.serving import (
    TUTORIAL_DIR,
    TUTORIAL_PAYLOAD,
    ServedGraph,
    ab_graph_file,
    serving_env,
    start_served_graph,
)

EXPERIMENT = "iris-test-1"
ARMS = ("classifier-1", "classifier-2")
ROUTER = "random-ab-test"
BODY = json.dumps(TUTORIAL_PAYLOAD).encode()
HEADERS = {"Content-Type": "application/json"}


def serve_experiment(tmp_path: Path, models: tuple[Path, Path], state: Path, *extra: str,
                     ratio_a: str = "0.5") -> ServedGraph:
    return start_served_graph(ab_graph_file(tmp_path, ratio_a), dict(zip(ARMS, models, strict=True)), tmp_path,
                              "--experiment", EXPERIMENT, "--state-dir", str(state), *extra)


def post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    connection.request("POST", path, body=body, headers=HEADERS)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def drive(served: ServedGraph, seconds: float) -> list[tuple[float, int, str]]:
    """Predictions, each followed by its feedback (reward 1 for arm 0, the key omitted for arm 1, as
    Seldon's client sends a 0), for ``seconds``: (acknowledged at, 'p' or 'f', arm) per answer."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    acks: list[tuple[float, int, str]] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            status, prediction = post(connection, "/api/v1.0/predictions", BODY)
            assert status == 200, prediction
            arm = prediction["meta"]["routing"][ROUTER]
            acks.append((time.monotonic(), arm, "p"))
            feedback: dict[str, Any] = {"request": TUTORIAL_PAYLOAD, "response": prediction}
            if arm == 0:
                feedback["reward"] = 1
            status, answer = post(connection, "/api/v1.0/feedback", json.dumps(feedback).encode())
            assert status == 200, answer
            acks.append((time.monotonic(), arm, "f"))
    finally:
        connection.close()
    return acks


def test_a_sigkill_loses_at_most_the_last_second_and_a_restart_adds_to_the_same_ledger(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    state = tmp_path / "state"
    served = serve_experiment(tmp_path, (iris_model_dir, iris_model_dir_b), state)
    acks = drive(served, 3.0)
    killed_at = time.monotonic()
    os.kill(served.proc.pid, signal.SIGKILL)
    served.proc.wait(30)
    outcomes = read_outcomes(state / LEDGER_FILE, EXPERIMENT)
    for index, arm in enumerate(ARMS):
        sent = [kind for _, a, kind in acks if a == index]
        settled = [kind for at, a, kind in acks if a == index and at < killed_at - 1.0]
        assert settled, "the load never reached this arm"
        recorded = outcomes[arm]
        assert settled.count("p") <= recorded.requests <= sent.count("p")
        assert settled.count("f") <= recorded.feedback <= sent.count("f")
        assert recorded.errors == {}
        assert recorded.reward_sum == (recorded.feedback if index == 0 else 0)

    restarted = serve_experiment(tmp_path, (iris_model_dir, iris_model_dir_b), state)
    more = drive(restarted, 0.5)
    assert restarted.stop() == 0
    after = read_outcomes(state / LEDGER_FILE, EXPERIMENT)
    for index, arm in enumerate(ARMS):
        added = [kind for _, a, kind in more if a == index]
        assert after[arm].requests == outcomes[arm].requests + added.count("p")
        assert after[arm].feedback == outcomes[arm].feedback + added.count("f")
    assert (state / LEDGER_FILE).stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def experiment_ab(iris_model_dir: Path, iris_model_dir_b: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("experiment-ab")
    served = serve_experiment(folder, (iris_model_dir, iris_model_dir_b), folder / "state", "--max-abs-reward", "10")
    yield served, folder / "state" / LEDGER_FILE
    served.stop()


def ledger_feedback(ledger: Path) -> dict[str, tuple[int, float]]:
    return {arm: (o.feedback, o.reward_sum) for arm, o in read_outcomes(ledger, EXPERIMENT).items()}


def wait_for_feedback(ledger: Path, expected: dict[str, tuple[int, float]]) -> None:
    wait_until(lambda: ledger.exists() and ledger_feedback(ledger) == expected, timeout=30,
               what=f"the ledger to hold {expected}")


def test_feedback_as_seldon_clients_send_it_counts_once_for_the_arm_that_served(
        experiment_ab: tuple[ServedGraph, Path]) -> None:
    served, ledger = experiment_ab
    wait_until(ledger.exists, timeout=30, what="the ledger file")
    before = ledger_feedback(ledger)
    predictions = [served.predict().json() for _ in range(8)]
    by_arm: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for prediction in predictions:
        by_arm[ARMS[prediction["meta"]["routing"][ROUTER]]].append(prediction)
    expected = {arm: before.get(arm, (0, 0.0)) for arm in ARMS}
    for arm, answered in by_arm.items():
        for number, prediction in enumerate(answered):
            # Alternately: the whole response and reward 1; only the request's puid and no reward key (0).
            if number % 2 == 0:
                body: dict[str, Any] = {"request": TUTORIAL_PAYLOAD, "response": prediction, "reward": 1}
            else:
                body = {"request": {**TUTORIAL_PAYLOAD, "meta": {"puid": prediction["meta"]["puid"]}},
                        "truth": {"ndarray": [[1, 0, 0]]}}
            answer = served.post("/api/v1.0/feedback", json_body=body)
            assert answer.status_code == 200, answer.text
            assert answer.json()["meta"]["routing"] == {ROUTER: ARMS.index(arm)}
            count, total = expected[arm]
            expected[arm] = (count + 1, total + (1 if number % 2 == 0 else 0))
    wait_for_feedback(ledger, expected)

    repeat = served.post("/api/v1.0/feedback", json_body={"response": predictions[0], "reward": 1})
    assert repeat.status_code == 200
    assert repeat.json()["status"]["reason"] == "FEEDBACK_ALREADY_COUNTED"
    forged = {**predictions[1], "meta": {**predictions[1]["meta"],
                                         "routing": {ROUTER: 1 - predictions[1]["meta"]["routing"][ROUTER]}}}
    refused = served.post("/api/v1.0/feedback", json_body={"response": forged, "reward": 1})
    assert refused.status_code == 409
    assert refused.json()["status"]["status"] == "FAILURE" and "served" in refused.json()["status"]["info"]
    unknown = served.post("/api/v1.0/feedback", json_body={"request": {"meta": {"puid": "never-predicted"}}})
    assert unknown.status_code == 400 and "never-predicted" in unknown.json()["status"]["info"]
    for reward in (11, -10.5):
        fresh = served.predict().json()
        too_big = served.post("/api/v1.0/feedback", json_body={"response": fresh, "reward": reward})
        assert too_big.status_code == 400 and "between -10 and 10" in too_big.json()["status"]["info"]
    # None of the refused or repeated feedback reached the ledger: a new counted one is the only change.
    last = served.predict().json()
    arm = ARMS[last["meta"]["routing"][ROUTER]]
    assert served.post("/api/v1.0/feedback", json_body={"response": last, "reward": 2}).status_code == 200
    count, total = expected[arm]
    wait_for_feedback(ledger, {**expected, arm: (count + 1, total + 2)})


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def test_one_scrape_of_the_executor_carries_seldons_names_and_every_arms_own_series(
        experiment_ab: tuple[ServedGraph, Path], iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    served, _ = experiment_ab

    def scrape() -> str:
        response = requests.get(f"{served.url}/metrics", timeout=10)
        assert response.status_code == 200
        return response.text

    def feedback_by_arm(text: str) -> dict[str, tuple[float, float]]:
        counts = samples(text, "seldon_api_model_feedback_total")
        rewards = samples(text, "seldon_api_model_feedback_reward_total")
        return {dict(labels)["model_name"]: (value, rewards[labels]) for labels, value in counts.items()}

    before = feedback_by_arm(scrape())
    sent = {arm: [0, 0.0] for arm in ARMS}
    for reward in (1, 0, 3, 0, 1, 1):
        prediction = served.predict().json()
        arm = ARMS[prediction["meta"]["routing"][ROUTER]]
        assert served.post("/api/v1.0/feedback", json_body={"response": prediction, "reward": reward}).ok
        sent[arm][0] += 1
        sent[arm][1] += reward

    def arrived() -> bool:
        now = feedback_by_arm(scrape())
        return all(now.get(arm, (0, 0))[0] - before.get(arm, (0, 0))[0] == sent[arm][0] for arm in ARMS)

    wait_until(arrived, timeout=30, what="the arms' feedback counters in the executor's scrape")
    text = scrape()
    after = feedback_by_arm(text)
    squares = {dict(labels)["model_name"]: value for labels, value in
               samples(text, "abflow_feedback_reward_squares_total").items()}
    for arm in ARMS:
        assert after[arm][1] - before.get(arm, (0, 0.0))[1] == sent[arm][1]
        assert squares[arm] >= after[arm][1] > 0 or sent[arm][0] == 0
    versions = {json.loads((folder / "metadata.json").read_text())["version"]
                for folder in (iris_model_dir, iris_model_dir_b)}
    model_labels = [dict(labels) for labels in samples(text, "seldon_api_model_feedback_total")]
    graph_name = json.loads((TUTORIAL_DIR / "ab_test.json").read_text())["metadata"]["name"]
    for labels in model_labels:
        assert set(labels) == {"deployment_name", "predictor_name", "predictor_version", "model_name",
                               "model_image", "model_version"}
        assert labels["deployment_name"] == graph_name and labels["model_version"] in versions
        assert labels["predictor_version"] == EXPERIMENT  # the experiment is its predictor's version
    assert {labels["model_name"] for labels in model_labels} == set(ARMS)
    server = [dict(labels) for labels in samples(text, "seldon_api_executor_server_requests_seconds_count")]
    assert {(s["service"], s["method"], s["code"]) for s in server} >= {
        ("/api/v1.0/predictions", "post", "200"), ("/api/v1.0/feedback", "post", "200")}
    assert all(s["deployment_name"] == graph_name for s in server)
    client = [dict(labels) for labels in samples(text, "seldon_api_executor_client_requests_seconds_count")]
    assert {(c["model_name"], c["service"], c["code"]) for c in client} >= {
        (arm, "/predict", "200") for arm in ARMS}
    own = samples(text, "abflow_model_requests_total")
    assert {dict(labels)["model_name"] for labels in own} == set(ARMS) and all(v > 0 for v in own.values())


def test_a_single_model_graph_takes_feedback_without_a_response(
        tmp_path: Path, iris_model_dir: Path) -> None:
    graph = TUTORIAL_DIR / "TMPL_deployment.json"
    node = json.loads(graph.read_text())["spec"]["predictors"][0]["graph"]["name"]
    served = start_served_graph(graph, {node: iris_model_dir}, tmp_path, "--experiment", EXPERIMENT,
                                "--state-dir", str(tmp_path / "state"))
    try:
        for body in ({"reward": 1}, {}, {"request": TUTORIAL_PAYLOAD, "truth": {"ndarray": [[0, 0, 1]]}}):
            answer = served.post("/api/v1.0/feedback", json_body=body)
            assert answer.status_code == 200, answer.text
    finally:
        assert served.stop() == 0
    outcomes = read_outcomes(tmp_path / "state" / LEDGER_FILE, EXPERIMENT)
    assert (outcomes[node].feedback, outcomes[node].reward_sum) == (3, 1.0)


def test_two_endpoints_serving_one_experiment_from_one_state_dir_add_up_in_its_ledger(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    """What a blue/green replace does: the successor writes the ledger while its predecessor drains."""
    state = tmp_path / "state"
    models = (iris_model_dir, iris_model_dir_b)
    blue = serve_experiment(tmp_path, models, state)
    green = serve_experiment(tmp_path, models, state)
    try:
        sent = [*drive(blue, 0.5), *drive(green, 0.5), *drive(blue, 0.3)]
    finally:
        assert blue.stop() == 0 and green.stop() == 0
    outcomes = read_outcomes(state / LEDGER_FILE, EXPERIMENT)
    for index, arm in enumerate(ARMS):
        kinds = [kind for _, a, kind in sent if a == index]
        assert (outcomes[arm].requests, outcomes[arm].feedback) == (kinds.count("p"), kinds.count("f"))


def test_a_model_server_on_a_cluster_labels_its_metrics_from_seldons_environment(
        tmp_path: Path, iris_model_dir: Path) -> None:
    port = free_port()
    environ = {"SELDON_DEPLOYMENT_ID": "iris-ab", "PREDICTOR_ID": "main", "PREDICTIVE_UNIT_ID": "classifier-2",
               "PREDICTIVE_UNIT_IMAGE": "registry:5000/abflow/serving:0123abc",
               "PREDICTOR_LABELS": json.dumps({"version": EXPERIMENT})}
    with open(tmp_path / "model.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "abflow.serving.modelserver", "--model", str(iris_model_dir),
                                 "--port", str(port), "--name", "classifier-2"], stdout=log, stderr=subprocess.STDOUT,
                                env={**serving_env(), **environ})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/ready"), timeout=60, what="the model server")
        prediction = requests.post(f"{url}/predict", json=TUTORIAL_PAYLOAD, timeout=10)
        assert prediction.status_code == 200
        for body in ({"response": prediction.json()}, {"reward": 1}, {"reward": 0.5, "truth": {"ndarray": [[1]]}}):
            assert requests.post(f"{url}/send-feedback", json=body, timeout=10).status_code == 200
        assert requests.post(f"{url}/send-feedback", json={"reward": 1e9}, timeout=10).status_code == 400
        text = requests.get(f"{url}/metrics", timeout=10).text
        seldons_path = requests.get(f"{url}/prometheus", timeout=10)
        assert seldons_path.status_code == 200 and "seldon_api_model_feedback_total{" in seldons_path.text
    finally:
        proc.terminate()
        proc.wait(30)
    labels = (("deployment_name", "iris-ab"), ("model_image", "registry:5000/abflow/serving"),
              ("model_name", "classifier-2"), ("model_version", "0123abc"), ("predictor_name", "main"),
              ("predictor_version", EXPERIMENT))
    assert samples(text, "seldon_api_model_feedback_total") == {labels: 3.0}
    assert samples(text, "seldon_api_model_feedback_reward_total") == {labels: 1.5}
    assert samples(text, "abflow_feedback_reward_squares_total") == {labels: 1.25}
    assert samples(text, "abflow_model_requests_total") == {tuple(sorted((*labels, ("code", "200")))): 1.0}
