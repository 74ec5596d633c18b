"""Every way a client can get a request wrong gets a 4xx Seldon status body, and the server keeps
serving: each case is followed by a good request on the same shared graph."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from abflow.serving.protocol import MAX_BODY_BYTES
from tests.fixtures.serving import ServedGraph

JSON = {"Content-Type": "application/json"}
PREDICT = "/api/v1.0/predictions"

CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("not JSON", PREDICT, b"{not json", JSON, 400, "not valid JSON"),
    ("JSON but not an object", PREDICT, b"[1, 2]", JSON, 400, "JSON object"),
    ("wrong content type", PREDICT, b'{"data":{"ndarray":[[1,2,3,4]]}}', {"Content-Type": "text/csv"}, 415,
     "content type"),
    ("missing data", PREDICT, b'{"meta":{}}', JSON, 400, "missing \"data\""),
    ("shape and values disagree", PREDICT, b'{"data":{"tensor":{"shape":[2,4],"values":[1,2,3,4]}}}', JSON,
     400, "needs 8 values"),
    ("non-numeric values", PREDICT, b'{"data":{"ndarray":[["a","b","c","d"]]}}', JSON, 400, "numbers"),
    ("NaN", PREDICT, b'{"data":{"ndarray":[[NaN,1,2,3]]}}', JSON, 400, "JSON"),
    ("Infinity", PREDICT, b'{"data":{"tensor":{"shape":[1,4],"values":[Infinity,1,2,3]}}}', JSON, 400, "JSON"),
    ("overflowing number", PREDICT, b'{"data":{"ndarray":[[1e999,1,2,3]]}}', JSON, 400, ""),
    ("wrong feature count", PREDICT, b'{"data":{"ndarray":[[1,2,3]]}}', JSON, 400, "expected 4 features"),
    ("empty batch", PREDICT, b'{"data":{"tensor":{"shape":[0,4],"values":[]}}}', JSON, 400, "empty"),
    ("empty ndarray", PREDICT, b'{"data":{"ndarray":[]}}', JSON, 400, "empty"),
    ("ragged rows", PREDICT, b'{"data":{"ndarray":[[1,2,3,4],[1,2]]}}', JSON, 400, "different lengths"),
    ("unknown path", "/api/v1.0/predict", b"{}", JSON, 404, "no endpoint"),
    ("feedback without routing", "/api/v1.0/feedback", b'{"reward":1,"response":{}}', JSON, 400, "routing"),
]


def check_failure(response: requests.Response, code: int, words: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    status = response.json()["status"]
    assert status["code"] == code and status["status"] == "FAILURE"
    assert status["reason"] == "MICROSERVICE_BAD_DATA"
    assert words in status["info"]
    return status


def check_still_serving(served: ServedGraph) -> None:
    response = served.predict()
    assert response.status_code == 200, response.text
    assert "random-ab-test" in response.json()["meta"]["routing"]


@pytest.mark.parametrize(("path", "body", "headers", "code", "words"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request_gets_a_seldon_status_and_the_server_keeps_serving(
        tutorial_ab: ServedGraph, path: str, body: bytes, headers: dict[str, str], code: int, words: str) -> None:
    check_failure(tutorial_ab.post(path, data=body, headers=headers), code, words)
    check_still_serving(tutorial_ab)


def test_body_over_the_limit_is_413(tutorial_ab: ServedGraph) -> None:
    body = b'{"data":{"ndarray":[' + b"[1,2,3,4]," * (MAX_BODY_BYTES // 10) + b"[1,2,3,4]]}}"
    check_failure(tutorial_ab.post(PREDICT, data=body, headers=JSON), 413, "over the limit")
    check_still_serving(tutorial_ab)


def test_chunked_body_over_the_limit_is_413(tutorial_ab: ServedGraph) -> None:
    chunks = (b"x" * 65536 for _ in range(MAX_BODY_BYTES // 65536 + 2))
    check_failure(tutorial_ab.post(PREDICT, data=chunks, headers=JSON), 413, "over the limit")  # type: ignore[arg-type]
    check_still_serving(tutorial_ab)


def test_wrong_method_is_405_with_allow(tutorial_ab: ServedGraph) -> None:
    response = requests.get(f"{tutorial_ab.url}{PREDICT}", timeout=10)
    check_failure(response, 405, "GET is not allowed")
    assert response.headers["Allow"] == "POST"
    check_still_serving(tutorial_ab)


def test_unknown_get_path_is_404(tutorial_ab: ServedGraph) -> None:
    check_failure(requests.get(f"{tutorial_ab.url}/nothing/here", timeout=10), 404, "no endpoint")
    check_still_serving(tutorial_ab)
