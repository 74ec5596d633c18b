"""The tutorial's two SeldonDeployments, unchanged, served by ``abflow serve`` and driven over HTTP."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import requests
from requests.auth import HTTPBasicAuth
from scipy.stats import binomtest

from tests.fixtures.serving import TUTORIAL_DIR, TUTORIAL_PAYLOAD, ServedGraph, ab_graph_file

CLASS_NAMES = ["iris-setosa", "iris-versicolor", "iris-virginica"]
ServeGraph = Callable[[Path, Mapping[str, Path | str]], ServedGraph]


def tutorial_client(api_http: str) -> tuple[Callable[[], str], Callable[[], requests.Response]]:
    """The REST half of the tutorial's deploy.py, re-typed: only API_HTTP differs (and the response
    is returned so the test can look at it; the tutorial only prints it)."""
    API_HTTP = api_http  # noqa: N806 - the tutorial's own name

    def get_token() -> str:
        payload = {'grant_type': 'client_credentials'}
        response = requests.post(
                    "http://"+API_HTTP+"/oauth/token",
                    auth=HTTPBasicAuth('oauth-key', 'oauth-secret'),
                    data=payload)
        print(response.text)
        token =  response.json()["access_token"]
        return token  # type: ignore[no-any-return]

    def rest_request() -> requests.Response:
        token = get_token()
        headers = {'Authorization': 'Bearer '+token}
        payload = {"data":{"names":["sepallengthcm","sepalwidthcm","petallengthcm","petalwidthcm"],"tensor":{"shape":[1,4],"values":[5.1,3.5,1.4,0.2]}}}  # noqa: E231,E501
        response = requests.post(
                    "http://"+API_HTTP+"/api/v0.1/predictions",
                    headers=headers,
                    json=payload)
        print(response.text)
        return response

    return get_token, rest_request


def test_tutorial_deploy_script_gets_a_routed_prediction(tutorial_ab: ServedGraph) -> None:
    get_token, rest_request = tutorial_client(f"127.0.0.1:{tutorial_ab.port}")
    token = requests.post(f"{tutorial_ab.url}/oauth/token", auth=HTTPBasicAuth("oauth-key", "oauth-secret"),
                          data={"grant_type": "client_credentials"}, timeout=10).json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 43199 and token["scope"] == "read write"
    assert get_token()
    response = rest_request()
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["names"] == CLASS_NAMES
    assert body["data"]["tensor"]["shape"] == [1, 3]
    assert sum(body["data"]["tensor"]["values"]) == pytest.approx(1.0)
    assert body["data"]["tensor"]["values"][0] > 0.5  # iris-setosa, as in the tutorial
    assert len(body["meta"]["puid"]) == 26
    arm = body["meta"]["routing"]["random-ab-test"]
    assert arm in (0, 1)
    assert body["meta"]["requestPath"] == {f"classifier-{arm + 1}": "gcav66/sklearn-iris:0.1"}


def test_oauth_is_enforced(tutorial_ab: ServedGraph) -> None:
    url = f"{tutorial_ab.url}/api/v0.1/predictions"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic b2F1dGgta2V5Og=="}):
        response = requests.post(url, json=TUTORIAL_PAYLOAD, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["status"]["status"] == "FAILURE"
        assert "oauth/token" in response.json()["status"]["info"]
    wrong = requests.post(f"{tutorial_ab.url}/oauth/token", auth=("oauth-key", "wrong"),
                          data={"grant_type": "client_credentials"}, timeout=10)
    assert wrong.status_code == 401
    assert tutorial_ab.predict().status_code == 200


def test_response_mirrors_the_ndarray_encoding_and_batches(tutorial_ab: ServedGraph) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    body = tutorial_ab.predict({"data": {"ndarray": rows}, "meta": {"puid": "mine"}}).json()
    assert body["data"]["names"] == CLASS_NAMES
    assert len(body["data"]["ndarray"]) == 3 and all(len(r) == 3 for r in body["data"]["ndarray"])
    assert body["meta"]["puid"] == "mine"
    assert set(body["meta"]["routing"]) == {"random-ab-test"}
    batch = {"data": {"tensor": {"shape": [1000, 4], "values": [5.1, 3.5, 1.4, 0.2] * 1000}}}
    tensor = tutorial_ab.predict(batch).json()["data"]["tensor"]
    assert tensor["shape"] == [1000, 3] and len(tensor["values"]) == 3000


def test_single_model_tutorial_graph_runs_unchanged(serve_graph: ServeGraph, iris_model_dir: Path) -> None:
    served = serve_graph(TUTORIAL_DIR / "TMPL_deployment.json", {"sklearn-iris-classifier": iris_model_dir})
    _, rest_request = tutorial_client(f"127.0.0.1:{served.port}")
    body = rest_request().json()
    assert body["meta"]["routing"] == {}
    assert body["meta"]["requestPath"] == {"sklearn-iris-classifier": "gcav66/sklearn-iris:0.1"}
    assert body["data"]["tensor"]["shape"] == [1, 3]
    health = served.health()
    assert health["status"] == "ok" and [a["name"] for a in health["arms"]] == ["sklearn-iris-classifier"]


def failovers(served: ServedGraph) -> str:
    """The endpoint's failover counters: ``meta.routing`` names the arm that answered, so requests moved
    off a slow or restarting arm would skew the split, and a failure should say whether that happened."""
    text = requests.get(f"{served.url}/metrics", timeout=10).text
    return "; ".join(line for line in text.splitlines() if line.startswith("abflow_failovers_total")) or "none"


def test_even_split_serves_both_arms_in_proportion(tutorial_ab: ServedGraph) -> None:
    before = failovers(tutorial_ab)
    arms = Counter(answer["meta"]["routing"]["random-ab-test"] for answer in tutorial_ab.predict_many(1000))
    assert arms[0] > 0 and arms[1] > 0 and arms[0] + arms[1] == 1000
    assert binomtest(arms[0], 1000, 0.5).pvalue >= 0.001, (
        f"split {dict(arms)}; failovers before: {before}, after: {failovers(tutorial_ab)}")


@pytest.mark.parametrize(("ratio_a", "only_arm"), [("0", 1), ("1", 0)])
def test_edge_ratios_send_everything_to_one_arm(serve_graph: ServeGraph, tmp_path: Path, iris_model_dir: Path,
                                                iris_model_dir_b: Path, ratio_a: str, only_arm: int) -> None:
    served = serve_graph(ab_graph_file(tmp_path, ratio_a),
                         {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b})
    arms = {answer["meta"]["routing"]["random-ab-test"] for answer in served.predict_many(200)}
    assert arms == {only_arm}


def test_feedback_is_counted_per_arm_including_zero_rewards(tutorial_ab: ServedGraph) -> None:
    def reward_counts() -> dict[str, float]:
        text = requests.get(f"{tutorial_ab.url}/metrics", timeout=10).text
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("abflow_feedback_reward_count{")}

    before = reward_counts()
    sent = Counter()
    for reward in (1, 0, 0, 1, 0, 0):
        response = tutorial_ab.predict().json()
        arm = response["meta"]["routing"]["random-ab-test"]
        sent[f"classifier-{arm + 1}"] += 1
        answer = tutorial_ab.post("/api/v1.0/feedback",
                                  json_body={"request": TUTORIAL_PAYLOAD, "response": response, "reward": reward})
        assert answer.status_code == 200, answer.text
        assert answer.json()["meta"]["routing"] == {"random-ab-test": arm}
    after = reward_counts()
    for name, count in sent.items():
        assert after[name] - before.get(name, 0.0) == count
    missing = tutorial_ab.post("/api/v1.0/feedback", json_body={"response": {"meta": {}}, "reward": 1})
    assert missing.status_code == 400 and "routing" in missing.json()["status"]["info"]


def test_health_and_metrics_endpoints(tutorial_ab: ServedGraph) -> None:
    assert requests.get(f"{tutorial_ab.url}/health/ping", timeout=10).text == "pong"
    assert requests.get(f"{tutorial_ab.url}/live", timeout=10).status_code == 200
    assert requests.get(f"{tutorial_ab.url}/ready", timeout=10).status_code == 200
    health = tutorial_ab.health()
    assert health["status"] == "ok"
    assert [(a["name"], a["status"]) for a in health["arms"]] == [("classifier-1", "up"), ("classifier-2", "up")]
    tutorial_ab.predict()
    metrics = requests.get(f"{tutorial_ab.url}/metrics", timeout=10)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'abflow_requests_total{arm="classifier-' in metrics.text
    assert 'abflow_request_duration_seconds_bucket{arm="classifier-' in metrics.text
    print(json.dumps(health))
