"""The Seldon REST codec: what the tutorial's clients send, every malformed body, and a fuzz test."""

from __future__ import annotations

import copy
import io
import json
import math
import random
from functools import cache
from typing import Any
from urllib.parse import urlencode

import joblib
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abflow.serving.protocol import (
    MAX_ABS_REWARD,
    MAX_BODY_BYTES,
    MAX_NESTING,
    Feedback,
    PredictionRequest,
    SeldonError,
    _numbers,  # noqa: PLC2701 - the fast path is checked against the slow one
    check_reward,
    decode_feedback,
    decode_prediction_request,
    encode_prediction_response,
    new_puid,
    status_body,
)
from tests.fixtures.models import train_iris_bytes

TUTORIAL_PAYLOAD = {
    "data": {
        "names": ["sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm"],
        "tensor": {"shape": [1, 4], "values": [5.1, 3.5, 1.4, 0.2]},
    }
}
CLASSES = ("iris-setosa", "iris-versicolor", "iris-virginica")
JSON = "application/json"


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def decode(payload: Any, **kwargs: Any) -> PredictionRequest:
    return decode_prediction_request(body(payload), JSON, **kwargs)


def test_the_tutorial_payload_decodes() -> None:
    request = decode(TUTORIAL_PAYLOAD, n_features=4)
    assert request.encoding == "tensor"
    assert request.features.dtype == np.float64
    assert request.features.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(request.features, [[5.1, 3.5, 1.4, 0.2]])
    assert request.names == TUTORIAL_PAYLOAD["data"]["names"]
    assert (request.puid, request.tags) == (None, {})


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON"],
)
def test_json_is_accepted_with_or_without_a_content_type(content_type: str | None) -> None:
    request = decode_prediction_request(body(TUTORIAL_PAYLOAD), content_type)
    assert request.features.shape == (1, 4)


def test_form_encoded_json_field_is_accepted() -> None:
    form = urlencode({"json": json.dumps(TUTORIAL_PAYLOAD)}).encode()
    request = decode_prediction_request(form, "application/x-www-form-urlencoded")
    np.testing.assert_array_equal(request.features, [[5.1, 3.5, 1.4, 0.2]])


def test_raw_json_labelled_as_a_form_is_accepted() -> None:
    """What ``curl -d '{...}'`` sends when the user forgets the content type header."""
    request = decode_prediction_request(body(TUTORIAL_PAYLOAD), "application/x-www-form-urlencoded")
    assert request.features.shape == (1, 4)


def test_ndarray_batches_single_rows_and_integers() -> None:
    batch = decode({"data": {"ndarray": [[1, 2.5, 3, 4], [5, 6, 7, 8.25]]}})
    assert batch.encoding == "ndarray"
    np.testing.assert_array_equal(batch.features, [[1, 2.5, 3, 4], [5, 6, 7, 8.25]])
    single = decode({"data": {"ndarray": [1, 2, 3, 4]}})
    np.testing.assert_array_equal(single.features, [[1, 2, 3, 4]])
    assert single.features.dtype == np.float64


def test_tensor_batches_are_reshaped_row_major() -> None:
    request = decode({"data": {"tensor": {"shape": [2, 3], "values": [1, 2, 3, 4, 5, 6]}}})
    np.testing.assert_array_equal(request.features, [[1, 2, 3], [4, 5, 6]])


def test_meta_puid_and_tags_are_kept() -> None:
    request = decode({**TUTORIAL_PAYLOAD, "meta": {"puid": "abc", "tags": {"user": "u1"}}})
    assert (request.puid, request.tags) == ("abc", {"user": "u1"})


@pytest.mark.parametrize(
    ("raw", "content_type", "code", "info"),
    [
        (b"not json", JSON, 400, "body is not valid JSON"),
        (b"", JSON, 400, "body is not valid JSON"),
        (b"\xff\xfe", JSON, 400, "body is not valid JSON"),
        (b'{"data": {"ndarray": [[NaN, 1]]}}', JSON, 400, "body is not valid JSON"),
        (b'{"data": {"ndarray": [[1e999, 1]]}}', JSON, 400, "body is not valid JSON"),
        (b"[1, 2]", JSON, 400, "body must be a JSON object, got a list"),
        (b'"data"', JSON, 400, "body must be a JSON object, got a string"),
        (body(TUTORIAL_PAYLOAD), "text/plain", 415, "content type 'text/plain' is not supported"),
        (body(TUTORIAL_PAYLOAD), "multipart/form-data; boundary=x", 415, "not supported"),
        (b"data=1", "application/x-www-form-urlencoded", 400, "json=<payload>"),
        (b"json=%FF", "application/x-www-form-urlencoded", 400, "body is not valid JSON"),
        (b"\xff=1", "application/x-www-form-urlencoded", 400, "form body is not UTF-8"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(raw: bytes, content_type: str, code: int, info: str) -> None:
    with pytest.raises(SeldonError) as error:
        decode_prediction_request(raw, content_type)
    assert (error.value.code, error.value.reason) == (code, "MICROSERVICE_BAD_DATA")
    assert info in error.value.info


def tensor(shape: Any, values: Any) -> dict[str, Any]:
    return {"data": {"tensor": {"shape": shape, "values": values}}}


def ndarray(rows: Any) -> dict[str, Any]:
    return {"data": {"ndarray": rows}}


@pytest.mark.parametrize(
    ("payload", "info"),
    [
        ({}, 'missing "data"'),
        ({"meta": {}}, 'missing "data"'),
        ({"data": [1, 2]}, '"data" must be an object, got a list'),
        ({"data": {}}, "neither tensor nor ndarray"),
        ({"data": {"names": ["a"]}}, "neither tensor nor ndarray"),
        ({"data": {"tensor": {"shape": [1, 1], "values": [1]}, "ndarray": [[1]]}}, "both tensor and ndarray"),
        ({"jsonData": {"x": 1}}, "jsonData is not supported: this model takes numbers as data.tensor or data.ndarray"),
        ({"strData": "hello"}, "strData is not supported"),
        ({"data": {"binData": "aGk="}}, "data.binData is not supported"),
        (tensor([1, 4], [1, 2, 3]), "shape [1, 4] needs 4 values, got 3"),
        (tensor([2, 2], [1, 2, 3, 4, 5]), "needs 4 values, got 5"),
        (tensor([4], [1, 2, 3, 4]), "must be 2-D [rows, features], got [4]"),
        (tensor([1, 2, 2], [1, 2, 3, 4]), "must be 2-D"),
        (tensor([1, -4], [1, 2, 3, 4]), "shape must be a list of non-negative integers"),
        (tensor([1.0, 4], [1, 2, 3, 4]), "shape must be a list of non-negative integers"),
        (tensor([True, 4], [1, 2, 3, 4]), "shape must be a list of non-negative integers"),
        (tensor("1,4", [1, 2, 3, 4]), "shape must be a list of non-negative integers"),
        (tensor([1, 4], "1,2,3,4"), "values must be a list of numbers, got a string"),
        ({"data": {"tensor": [1, 2]}}, "data.tensor must be an object"),
        (tensor([0, 4], []), "the batch is empty"),
        (tensor([1, 0], []), "rows have no features"),
        (tensor([1, 4], [1, 2, True, 4]), "must be numbers (not strings, booleans"),
        (tensor([1, 4], [1, 2, "3", 4]), "must be numbers"),
        (tensor([1, 4], [1, 2, None, 4]), "must be numbers"),
        (tensor([1, 4], [1, 2, [3], 4]), "must be numbers"),
        (tensor([1, 4], [1, 2, {"v": 3}, 4]), "must be numbers"),
        (ndarray([]), "data.ndarray is empty"),
        (ndarray([[]]), "rows have no features"),
        (ndarray([[1, 2], [3]]), "rows have different lengths [1, 2]"),
        (ndarray([[1, 2], 3]), "must be a list of rows"),
        (ndarray([[1, "2"]]), "must be numbers"),
        (ndarray([[True, False]]), "must be numbers"),
        (ndarray([[1, None]]), "must be numbers"),
        (ndarray([[[1, 2]]]), "must be numbers"),
        (ndarray("1,2"), "data.ndarray must be a list of rows, got a string"),
        (ndarray({"rows": []}), "must be a list of rows, got an object"),
        ({**ndarray([[1]]), "meta": []}, '"meta" must be an object'),
        ({**ndarray([[1]]), "meta": {"puid": 7}}, "meta.puid must be a string"),
        ({**ndarray([[1]]), "meta": {"tags": ["a"]}}, "meta.tags must be an object"),
        ({"data": {"names": "a,b", "ndarray": [[1, 2]]}}, "data.names must be a list of strings"),
        ({"data": {"names": [1, 2], "ndarray": [[1, 2]]}}, "data.names must be a list of strings"),
    ],
)
def test_malformed_payloads_get_a_precise_400(payload: Any, info: str) -> None:
    with pytest.raises(SeldonError) as error:
        decode(payload)
    assert (error.value.code, error.value.reason) == (400, "MICROSERVICE_BAD_DATA")
    assert info in error.value.info


def test_wrong_feature_count_is_refused_only_when_the_model_knows_it() -> None:
    with pytest.raises(SeldonError, match="expected 4 features per row, got 3") as error:
        decode(ndarray([[1, 2, 3]]), n_features=4)
    assert error.value.code == 400
    assert decode(ndarray([[1, 2, 3]])).features.shape == (1, 3)


def test_numbers_beyond_float64_are_refused_and_underflow_is_zero() -> None:
    for raw in (b'{"data":{"ndarray":[[1e999, 1]]}}', b'{"data":{"ndarray":[[1%s, 1]]}}' % (b"0" * 400)):
        with pytest.raises(SeldonError, match="number is infinity") as error:
            decode_prediction_request(raw, None)
        assert error.value.code == 400
    edge = decode_prediction_request(b'{"data":{"ndarray":[[1e-400, 1.7976931348623157e308]]}}', None)
    assert edge.features.tolist() == [[0.0, 1.7976931348623157e308]]


def test_numbers_orjson_cannot_hold_as_integers_become_floats() -> None:
    request = decode_prediction_request(b'{"data":{"ndarray":[[18446744073709551616, 1]]}}', None)
    assert request.features[0, 0] == 2.0**64


def test_booleans_are_refused_even_beside_numbers_numpy_would_take_them_with() -> None:
    # numpy turns [1.5, true] into [1.5, 1.0] without a word: the decoder must not.
    payloads = (tensor([1, 2], [1.5, True]), tensor([1, 2], [1, False]), ndarray([[1.5, True]]), ndarray([0, True]))
    for payload in payloads:
        with pytest.raises(SeldonError, match="numbers"):
            decode(payload)


def test_a_true_or_false_string_elsewhere_does_not_change_the_numbers() -> None:
    payload = {**ndarray([[1, 2.5]]), "meta": {"tags": {"true": "false"}}}
    assert decode(payload).features.tolist() == [[1.0, 2.5]]
    assert decode({**tensor([1, 2], [3, 4]), "meta": {"tags": {"t": "true"}}}).features.tolist() == [[3.0, 4.0]]


def test_too_many_rows_is_a_413_naming_the_limit() -> None:
    for payload in (ndarray([[1.0]] * 11), tensor([11, 1], [1.0] * 11)):
        with pytest.raises(SeldonError, match="11 rows, over the limit of 10") as error:
            decode(payload, max_rows=10)
        assert error.value.code == 413
    assert decode(ndarray([[1.0]] * 10), max_rows=10).features.shape == (10, 1)


def test_body_limit_is_a_few_megabytes() -> None:
    assert 1 << 20 <= MAX_BODY_BYTES <= 64 << 20


def test_error_bodies_have_seldons_status_shape() -> None:
    error = SeldonError(400, "values must be finite")
    assert json.loads(error.body()) == {
        "status": {"code": 400, "info": "values must be finite", "reason": "MICROSERVICE_BAD_DATA", "status": "FAILURE"}
    }
    assert json.loads(status_body(503, "arm 'classifier-2' is down", "MICROSERVICE_UNAVAILABLE"))["status"] == {
        "code": 503,
        "info": "arm 'classifier-2' is down",
        "reason": "MICROSERVICE_UNAVAILABLE",
        "status": "FAILURE",
    }
    assert str(error) == "values must be finite"


def test_tensor_requests_get_tensor_responses_with_meta() -> None:
    request = decode(TUTORIAL_PAYLOAD)
    probabilities = np.array([[0.9, 0.07, 0.03]])
    response = json.loads(
        encode_prediction_response(
            request,
            probabilities,
            CLASSES,
            puid="p1",
            routing={"random-ab-test": 1},
            request_path={"random-ab-test": "abflow", "classifier-2": "img:2"},
        )
    )
    assert response == {
        "data": {"names": list(CLASSES), "tensor": {"shape": [1, 3], "values": [0.9, 0.07, 0.03]}},
        "meta": {
            "puid": "p1",
            "tags": {},
            "routing": {"random-ab-test": 1},
            "requestPath": {"random-ab-test": "abflow", "classifier-2": "img:2"},
        },
    }


def test_ndarray_requests_get_ndarray_responses_and_tags_merge() -> None:
    request = decode({**ndarray([[1, 2, 3, 4], [5, 6, 7, 8]]), "meta": {"tags": {"user": "u1", "x": 1}}})
    probabilities = np.array([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    response = orjson.loads(
        encode_prediction_response(
            request, probabilities, CLASSES, puid="p2", routing={}, request_path={}, tags={"x": 2}
        )
    )
    assert response["data"] == {"names": list(CLASSES), "ndarray": [[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]}
    assert response["meta"]["tags"] == {"user": "u1", "x": 2}
    assert response["meta"]["routing"] == {}


def test_non_contiguous_or_float32_probabilities_are_encoded_faithfully() -> None:
    request = decode(tensor([2, 1], [1, 2]))
    probabilities = np.asfortranarray(np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32))
    response = orjson.loads(
        encode_prediction_response(request, probabilities, ("a", "b"), puid="p", routing={}, request_path={})
    )
    assert response["data"]["tensor"] == {"shape": [2, 2], "values": [0.25, 0.75, 0.5, 0.5]}


def test_a_model_output_that_does_not_match_its_classes_is_a_500() -> None:
    request = decode(TUTORIAL_PAYLOAD)
    with pytest.raises(SeldonError) as error:
        encode_prediction_response(request, np.ones((1, 2)), CLASSES, puid="p", routing={}, request_path={})
    assert (error.value.code, error.value.reason) == (500, "MICROSERVICE_INTERNAL_ERROR")


def encode(request: PredictionRequest, probabilities: Any = None) -> bytes:
    rows = request.features.shape[0]
    return encode_prediction_response(
        request, np.full((rows, 3), 1 / 3) if probabilities is None else probabilities, CLASSES, puid="p",
        routing={"random-ab-test": 0}, request_path={"classifier-1": "img:1"})


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of alternating objects and lists around ``leaf`` (depth 1: ``{"k": leaf}``)."""
    value = leaf
    for level in reversed(range(depth)):
        value = {"k": value} if level % 2 == 0 else [value]
    return value


def nested_text(depth: int) -> bytes:
    """``nested(depth)`` as JSON text, for depths no JSON encoder would write."""
    opening = b"".join(b'{"k":' if level % 2 == 0 else b"[" for level in range(depth))
    closing = b"".join(b"}" if level % 2 == 0 else b"]" for level in reversed(range(depth)))
    return opening + b"1" + closing


def test_tags_nest_up_to_the_limit_and_are_echoed() -> None:
    request = decode({**TUTORIAL_PAYLOAD, "meta": {"tags": nested(MAX_NESTING)}})
    answer = orjson.loads(encode(request))
    assert answer["meta"]["tags"] == nested(MAX_NESTING)


@pytest.mark.parametrize(("depth", "info"), [
    (MAX_NESTING + 1, f"meta.tags nests deeper than {MAX_NESTING} levels"),
    (300, f"meta.tags nests deeper than {MAX_NESTING} levels"),  # decodes, but no encoder writes it back
    (1000, f"meta.tags nests deeper than {MAX_NESTING} levels"),
    (2000, "not valid JSON"),  # past orjson's own parsing limit
])
def test_tags_nested_deeper_than_the_limit_are_a_400_naming_it(depth: int, info: str) -> None:
    raw = b'{"data":{"ndarray":[[1,2,3,4]]},"meta":{"tags":' + nested_text(depth) + b"}}"
    assert nested_text(MAX_NESTING) == orjson.dumps(nested(MAX_NESTING))  # the text nests as claimed
    with pytest.raises(SeldonError) as error:
        decode_prediction_request(raw, JSON)
    assert error.value.code == 400 and info in error.value.info


def test_feedback_truth_nested_too_deep_is_a_400() -> None:
    with pytest.raises(SeldonError, match=f"truth nests deeper than {MAX_NESTING} levels"):
        decode_feedback(feedback_body(1, truth=nested(MAX_NESTING + 1)), JSON)
    assert decode_feedback(feedback_body(1, truth=nested(MAX_NESTING)), JSON).truth == nested(MAX_NESTING)


def test_a_response_that_cannot_be_encoded_is_a_seldon_500() -> None:
    """Decoding bounds tag depth, so only a request built in code can get here; the 500 is the backstop."""
    request = PredictionRequest(np.ones((1, 4)), "ndarray", tags=nested(300))
    with pytest.raises(SeldonError) as error:
        encode(request)
    assert error.value.code == 500 and error.value.reason == "MICROSERVICE_INTERNAL_ERROR"
    assert "could not be encoded" in error.value.info


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_probabilities_are_a_400_naming_the_model_never_a_200(bad: float) -> None:
    request = decode(ndarray([[1.7e308, 1, 1, 1]]))
    with pytest.raises(SeldonError) as error:
        encode(request, np.array([[0.5, bad, 0.5]]))
    assert error.value.code == 400
    assert "'classifier-1'" in error.value.info and "1.7e+308" in error.value.info


def test_puids_look_like_seldons_and_do_not_repeat() -> None:
    puids = {new_puid() for _ in range(2000)}
    assert len(puids) == 2000
    assert all(len(p) == 26 and p.isalnum() and p == p.lower() for p in puids)


def feedback_body(reward: Any = 1.0, routing: Any = None, **extra: Any) -> bytes:
    response = {"data": {}, "meta": {"routing": {"random-ab-test": 1} if routing is None else routing}}
    return body({"request": TUTORIAL_PAYLOAD, "response": response, "reward": reward, **extra})


def test_feedback_names_the_arm_and_reward() -> None:
    assert decode_feedback(feedback_body(0.75, truth={"ndarray": [[0, 1, 0]]}), JSON) == Feedback(
        reward=0.75, routing={"random-ab-test": 1}, truth={"ndarray": [[0, 1, 0]]}
    )


def test_a_missing_reward_is_zero_as_seldons_protobuf_json_client_sends_it() -> None:
    raw = body({"request": TUTORIAL_PAYLOAD, "response": {"meta": {"routing": {"random-ab-test": 0}}}})
    feedback = decode_feedback(raw, JSON)
    assert feedback.reward == 0.0 and isinstance(feedback.reward, float) and feedback.routing == {"random-ab-test": 0}


@pytest.mark.parametrize(("message", "puid", "routing"), [
    ({"reward": 1}, None, None),
    ({"request": {"meta": {"puid": "req"}}}, "req", None),
    ({"response": {"meta": {"puid": "resp", "routing": {"r": 1}}}}, "resp", {"r": 1}),
    ({"request": {"meta": {"puid": "req"}}, "response": {"meta": {"puid": "resp"}}}, "resp", None),
    ({"response": {"data": {}}, "truth": {"ndarray": [[1]]}}, None, None),
])
def test_feedback_may_lack_the_response_and_names_its_prediction_by_puid(
        message: dict[str, Any], puid: str | None, routing: dict[str, int] | None) -> None:
    feedback = decode_feedback(body(message), JSON)
    assert (feedback.puid, feedback.routing) == (puid, routing)


def test_a_zero_reward_is_a_real_observation() -> None:
    feedback = decode_feedback(feedback_body(0), None)
    assert feedback.reward == 0.0 and isinstance(feedback.reward, float)


def test_single_model_feedback_has_empty_routing() -> None:
    assert decode_feedback(feedback_body(1, routing={}), JSON).routing == {}


@pytest.mark.parametrize(
    ("raw", "info"),
    [
        (feedback_body(None), "reward must be a number, got null"),
        (feedback_body("1"), "reward must be a number, got a string"),
        (feedback_body(True), "reward must be a number, got a boolean"),
        (body({"request": [], "reward": 1}), '"request" must be the prediction request object'),
        (body({"request": {"meta": {"puid": 7}}}), "meta.puid must be a string"),
        (body({"response": {"meta": []}, "reward": 1}), "response.meta must be an object"),
        (body({"response": [], "reward": 1}), '"response" must be the prediction response object'),
        (feedback_body(1, routing={"random-ab-test": -1}), "must map router names to child indexes"),
        (feedback_body(1, routing={"random-ab-test": True}), "must map router names to child indexes"),
        (feedback_body(1, routing={"random-ab-test": "0"}), "must map router names to child indexes"),
        (feedback_body(1, routing=[0]), "must map router names to child indexes"),
        (b'{"reward": 1e999}', "body is not valid JSON"),
        (b"[]", "body must be a JSON object"),
    ],
)
def test_bad_feedback_gets_a_400(raw: bytes, info: str) -> None:
    with pytest.raises(SeldonError) as error:
        decode_feedback(raw, JSON)
    assert error.value.code == 400
    assert info in error.value.info


@pytest.mark.parametrize("reward", [0, -1, 0.5, MAX_ABS_REWARD, -MAX_ABS_REWARD, 10**6])
def test_rewards_within_the_bound_are_kept_as_floats(reward: float) -> None:
    assert check_reward(reward) == float(reward) and isinstance(check_reward(reward), float)
    assert decode_feedback(feedback_body(reward), JSON).reward == float(reward)


@pytest.mark.parametrize(("reward", "info"), [
    *((value, "between -1e+06 and 1e+06") for value in (1e308, -1e308, 1e6 + 1, math.inf, -math.inf, math.nan,
                                                        10**400)),
    *((value, "reward must be a number") for value in (True, "1", None, [1])),
])
def test_rewards_that_are_unbounded_or_not_numbers_are_refused_naming_the_bound(reward: Any, info: str) -> None:
    with pytest.raises(SeldonError) as error:
        check_reward(reward)
    assert error.value.code == 400 and info in error.value.info


def test_the_reward_bound_is_configurable_and_feedback_applies_it() -> None:
    assert check_reward(5e6, bound=1e7) == 5e6
    with pytest.raises(SeldonError, match="between -10 and 10"):
        decode_feedback(feedback_body(11), JSON, max_abs_reward=10)
    with pytest.raises(SeldonError, match="between -1e"):
        decode_feedback(feedback_body(1e308), JSON)


def test_feedback_in_an_unsupported_content_type_is_a_415() -> None:
    with pytest.raises(SeldonError) as error:
        decode_feedback(feedback_body(), "application/xml")
    assert error.value.code == 415


def assert_only_client_errors(raw: bytes, content_type: str | None, n_features: int | None = None) -> None:
    try:
        request = decode_prediction_request(raw, content_type, n_features=n_features, max_rows=50)
    except SeldonError as error:
        assert 400 <= error.code < 500, error.info
        assert error.info
        json.loads(error.body())
    else:
        features = request.features
        assert features.ndim == 2 and features.dtype == np.float64 and features.flags["C_CONTIGUOUS"]
        assert 1 <= features.shape[0] <= 50 and features.shape[1] >= 1
        assert np.isfinite(features).all()
        assert n_features is None or features.shape[1] == n_features


CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded"]
# Values that sit on the decoder's edges find more than random ones do.
EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    2**64,
    2**70,
    1e308,
    -1e-320,
    "",
    "1.5",
    "NaN",
    float("nan"),
    float("inf"),
    [],
    [1.0],
    {},
    {"v": 1},
]
json_values = st.recursive(
    st.sampled_from(EDGE_VALUES) | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["data", "tensor", "ndarray", "shape", "values", "meta"]), inner, max_size=4)
    ),
    max_leaves=8,
)


def edge(rnd: random.Random, *extra: Any) -> Any:
    return copy.deepcopy(rnd.choice([*EDGE_VALUES, *extra]))


def mutated_payload(rnd: random.Random) -> Any:
    """A valid request with a few random mutations: the bodies a buggy client really sends.

    Built from one hypothesis-drawn seed rather than nested strategies, because drawing thousands of
    nested payloads through strategies costs seconds the suite does not have; a failure still
    reproduces from the seed hypothesis reports."""
    rows, columns = rnd.randint(1, 4), rnd.randint(1, 5)
    matrix: list[Any] = [[rnd.uniform(-10, 10) for _ in range(columns)] for _ in range(rows)]
    shape: list[Any] = [rows, columns]
    meta: dict[str, Any] = {"puid": "p", "tags": {}}
    if rnd.random() < 0.5:
        values = [v for row in matrix for v in row]
        data: dict[str, Any] = {"tensor": {"shape": shape, "values": values}}
    else:
        values = rnd.choice(matrix)
        data = {"ndarray": matrix}
    payload: Any = {"data": data, "meta": meta}
    for _ in range(rnd.randint(0, 3)):
        mutation = rnd.randrange(9)
        if mutation == 0 and values:
            values[rnd.randrange(len(values))] = edge(rnd)
        elif mutation == 1:
            values.append(edge(rnd, 1.0, 2))
        elif mutation == 2 and values:
            values.pop()
        elif mutation == 3:
            shape[rnd.randrange(2)] = edge(rnd, 0, 3, -2)
        elif mutation == 4:
            container = rnd.choice([data, meta, data.get("tensor", data)])
            if isinstance(container, dict) and container:
                container.pop(rnd.choice(list(container)))
        elif mutation == 5:
            rnd.choice([data, meta])[rnd.choice(["jsonData", "names", "ndarray", "tensor", "tags"])] = edge(rnd)
        elif mutation == 6 and "ndarray" in data:
            data["ndarray"] = rnd.choice([matrix[0], [matrix], [], [*matrix, []]])
        elif mutation == 7:
            payload["meta"] = edge(rnd)
        elif mutation == 8:
            payload = rnd.choice([{"data": [data]}, {"jsonData": data}, [data], {"data": data, "meta": []}])
            break
    return payload


def encoded(payload: Any, content_type: str | None) -> bytes:
    text = json.dumps(payload)
    if content_type == "application/x-www-form-urlencoded":
        return urlencode({"json": text}).encode()
    return text.encode()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=120), st.sampled_from([*CONTENT_TYPES, "text/plain"])), min_size=10, max_size=10
    )
)
def test_arbitrary_bytes_only_ever_get_a_4xx(bodies: list[tuple[bytes, str | None]]) -> None:
    for raw, content_type in bodies:
        assert_only_client_errors(raw, content_type)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from(CONTENT_TYPES), st.sampled_from([None, 4]))
def test_arbitrary_json_only_ever_gets_a_4xx(value: Any, content_type: str | None, n_features: int | None) -> None:
    assert_only_client_errors(encoded(value, content_type), content_type, n_features)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_near_valid_payloads_only_ever_get_a_4xx_or_decode_faithfully(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(10):
        content_type = rnd.choice(CONTENT_TYPES)
        assert_only_client_errors(encoded(mutated_payload(rnd), content_type), content_type, rnd.choice([None, 4]))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=3, max_size=3),
        min_size=1,
        max_size=10,
    ),
    st.booleans(),
)
def test_valid_batches_decode_to_exactly_their_numbers(rows: list[list[float]], as_tensor: bool) -> None:
    flat = [value for row in rows for value in row]
    payload = tensor([len(rows), 3], flat) if as_tensor else ndarray(rows)
    request = decode_prediction_request(orjson.dumps(payload), None, n_features=3)
    assert request.features.tolist() == rows
    assert all(math.isfinite(v) for v in request.features.ravel())


non_booleans = [value for value in EDGE_VALUES if type(value) is not bool]
scalars = st.sampled_from(non_booleans) | st.integers() | st.floats() | st.text(max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(scalars | st.lists(scalars, max_size=3), min_size=1, max_size=6))
def test_the_fast_number_check_agrees_with_the_element_by_element_one(values: list[Any]) -> None:
    """With no boolean literal in the body, numpy's type discovery stands in for the per-element
    check: both must accept the same lists, with the same numbers, and refuse the rest alike."""
    results: list[Any] = []
    for may_hold_booleans in (False, True):
        try:
            results.append(_numbers(list(values), may_hold_booleans))
        except SeldonError as error:
            results.append(error.info)
    fast, slow = results
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert fast.dtype == slow.dtype == np.float64 and np.array_equal(fast, slow, equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=1100), st.booleans())
def test_any_nesting_depth_is_refused_with_a_4xx_or_echoed_intact(depth: int, as_truth: bool) -> None:
    """Whatever the depth, the answer is a 4xx or a response that encodes: never an encoder failure."""
    text = nested_text(depth)
    try:
        if as_truth:
            feedback = decode_feedback(b'{"reward":1,"response":{"meta":{"routing":{}}},"truth":' + text + b"}", JSON)
            assert orjson.dumps(feedback.truth) == text
            return
        request = decode_prediction_request(b'{"data":{"ndarray":[[1,2,3,4]]},"meta":{"tags":' + text + b"}}", JSON)
    except SeldonError as error:
        assert error.code == 400 and depth > MAX_NESTING
        return
    assert depth <= MAX_NESTING
    assert orjson.dumps(orjson.loads(encode(request))["meta"]["tags"]) == text


@cache
def iris_model() -> Any:
    return joblib.load(io.BytesIO(train_iris_bytes()))


magnitudes = st.floats(allow_nan=False, allow_infinity=False) | st.builds(
    lambda mantissa, exponent: mantissa * 10.0**exponent,
    st.floats(min_value=-9.99, max_value=9.99), st.integers(min_value=-320, max_value=307))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(magnitudes, min_size=4, max_size=4), min_size=1, max_size=5))
def test_inputs_of_any_magnitude_get_probabilities_or_a_400_never_non_finite_numbers(rows: list[list[float]]) -> None:
    request = decode_prediction_request(orjson.dumps(ndarray(rows)), JSON, n_features=4)
    with np.errstate(all="ignore"):
        probabilities = iris_model().predict_proba(request.features)
    try:
        answer = orjson.loads(encode(request, probabilities))
    except SeldonError as error:
        assert error.code == 400 and "non-finite probabilities" in error.info
        assert not np.isfinite(probabilities).all()
        return
    served = np.array(answer["data"]["ndarray"], dtype=np.float64)
    assert np.isfinite(served).all() and np.allclose(served.sum(axis=1), 1.0)
