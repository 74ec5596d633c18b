"""The Open Inference Protocol codec: what it accepts round-trips, and anything else is an OipError
with a message, never another exception."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from abflow.serving.oip import (
    CLASS,
    PROBABILITIES,
    OipError,
    decode_infer_request,
    encode_infer_response,
    model_metadata,
)

finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False)
matrices = st.tuples(st.integers(1, 20), st.integers(1, 8)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=finite))


def request(values: Any, shape: Any, datatype: str = "FP64", **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": values}],
                       **extra}).encode()


@given(matrices, st.booleans())
def test_rows_round_trip_flat_or_nested(features: np.ndarray, nested: bool) -> None:
    data = features.tolist() if nested else features.reshape(-1).tolist()
    decoded = decode_infer_request(request(data, list(features.shape)), "application/json")
    assert np.array_equal(decoded.features, features)


@given(st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=10),
       st.sampled_from(["INT64", "INT32", "FP32", "UINT8"]))
def test_one_row_by_a_one_dimensional_shape_and_any_numeric_datatype(row: list[int], datatype: str) -> None:
    decoded = decode_infer_request(request(row, [len(row)], datatype), None, n_features=len(row))
    assert decoded.features.shape == (1, len(row)) and decoded.features.dtype == np.float64


@settings(max_examples=300)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children,
                                                                                       max_size=4), max_leaves=20))
def test_any_json_is_decoded_or_refused_with_an_oip_error(document: Any) -> None:
    for body in (json.dumps(document).encode(), request(document, [1, 2]), request([1, 2], document),
                 json.dumps({"inputs": [document]}).encode()):
        try:
            decode_infer_request(body)
        except OipError as exc:
            assert 400 <= exc.code < 500 and json.loads(exc.body())["error"]


@pytest.mark.parametrize(("body", "message"), [
    (request([1, 2, 3], [1, 2]), "holds 2 values, but its data holds 3"),
    (request([True, 2], [1, 2]), "holds a boolean"),
    (request(["a", 2], [1, 2]), "holds a string"),
    (request([1, 2], [1, 2], "BYTES"), "datatype 'BYTES'"),
    (request([1, 2], [1, 1, 2]), "needs a shape [rows, features]"),
    (request([1, 2], [1, 2], parameters={"tag": [1]}), "must be a string, number or boolean"),
    (orjson.dumps({"inputs": []}), "exactly one input tensor"),
    (request([1, 2], [1, 2], outputs=[{"name": "nope"}]), "output 'nope' does not exist"),
    (request([1, 2], [1, 2], outputs=[{"name": "class", "parameters": {"binary_data": True}}]), "binary_data=False"),
    (orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [],
                               "parameters": {"binary_data_size": 16}}]}), "binary_data=False"),
    (b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1e999]}]}', "not valid JSON"),
])
def test_refusals_say_what_to_send(body: bytes, message: str) -> None:
    with pytest.raises(OipError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        decode_infer_request(body)


def test_the_feature_count_is_checked_and_a_wrong_content_type_is_a_415() -> None:
    with pytest.raises(OipError, match="expected 4 features per row, got 2"):
        decode_infer_request(request([1, 2], [1, 2]), n_features=4)
    with pytest.raises(OipError) as error:
        decode_infer_request(request([1, 2], [1, 2]), "text/plain")
    assert error.value.code == 415


@given(st.integers(1, 10), st.integers(2, 5), st.data())
def test_the_response_carries_probabilities_classes_id_and_parameters(rows: int, classes: int,
                                                                      data: st.DataObject) -> None:
    probabilities = data.draw(arrays(np.float64, (rows, classes), elements=st.floats(0, 1)))
    names = [f"class-{i}" for i in range(classes)]
    decoded = decode_infer_request(orjson.dumps({"id": "r-1", "inputs": [{"name": "x", "shape": [rows, 1],
                                                                          "datatype": "FP64", "data": [0] * rows}]}))
    answer = orjson.loads(encode_infer_response(decoded, probabilities, names, model_name="iris-ab",
                                                model_version="v2", parameters={"arm": "classifier-2", "child": 1}))
    assert answer["id"] == "r-1" and answer["model_name"] == "iris-ab" and answer["model_version"] == "v2"
    assert answer["parameters"] == {"arm": "classifier-2", "child": 1}
    by_name = {output["name"]: output for output in answer["outputs"]}
    assert np.array_equal(np.array(by_name[PROBABILITIES]["data"]).reshape(rows, classes), probabilities)
    assert by_name[CLASS]["data"] == [names[i] for i in np.argmax(probabilities, axis=1)]


def test_a_request_naming_outputs_gets_those_in_its_order_and_metadata_names_them() -> None:
    decoded = decode_infer_request(request([1, 2], [1, 2], outputs=[{"name": "class"}]))
    answer = orjson.loads(encode_infer_response(decoded, np.array([[0.2, 0.8]]), ["a", "b"], model_name="m"))
    assert [o["name"] for o in answer["outputs"]] == ["class"] and answer["outputs"][0]["data"] == ["b"]
    assert "id" not in answer and "parameters" not in answer
    metadata = orjson.loads(model_metadata("m", versions=["v1"], n_features=4, class_names=["a", "b", "c"]))
    assert metadata["inputs"][0]["shape"] == [-1, 4] and metadata["outputs"][0]["shape"] == [-1, 3]
