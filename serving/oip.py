"""The Open Inference Protocol (KServe's v2 REST protocol, what MLServer, Triton and KServe clients
speak) as plain data: decode an infer request into feature rows, encode probabilities into an infer
response, and the metadata bodies. No HTTP here; the executor and the model server route to it.

What abflow serves, stated once:

* one input tensor of numbers, shape ``[rows, features]`` (or ``[features]`` for one row), data flat
  in row-major order or nested as the shape says; any numeric datatype (``FP64``, ``FP32``, ``INT64``…),
  served as float64. ``BYTES``, ``BOOL`` and the binary-data extension are refused with the fix
  (tritonclient: ``set_data_from_numpy(..., binary_data=False)``).
* two outputs: ``probabilities`` (``FP64``, ``[rows, classes]``) and ``class`` (``BYTES``, ``[rows]``,
  the most probable class name), so a client needs no class list to read the answer. A request that
  names ``outputs`` gets those it names, in its order.
* the response echoes the request's ``id`` and carries ``parameters`` (scalars only, as the protocol
  wants): for an A/B graph the serving arm (``arm``), the router (``router``) and the child index it
  chose (``child``), and the ``puid``.
* errors are ``{"error": "<message>"}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from abflow.serving.protocol import MAX_ROWS

INPUT_NAME = "input-0"
PROBABILITIES = "probabilities"
CLASS = "class"
OUTPUTS = (PROBABILITIES, CLASS)
NUMERIC_DATATYPES = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
BINARY_HEADER = "Inference-Header-Content-Length"
_JSON_TYPES = ("application/json", "")


class OipError(Exception):
    """A request refused under the Open Inference Protocol: its status and its ``{"error": …}`` body."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return error_body(self.message)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


@dataclass
class InferRequest:
    features: np.ndarray[Any, np.dtype[np.float64]]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    """The request's ``parameters``: where a sticky graph's ``tag:KEY`` unit is looked up."""
    outputs: tuple[str, ...] = OUTPUTS


def decode_infer_request(body: bytes, content_type: str | None = None, *, n_features: int | None = None,
                         max_rows: int = MAX_ROWS, binary_header: str | None = None) -> InferRequest:
    """One infer request's feature rows; every refusal is an ``OipError`` that says what to send.
    ``binary_header`` is the request's ``Inference-Header-Content-Length``: set, the body is in the
    binary data extension, which is refused."""
    if binary_header is not None:
        raise OipError(400, "the request uses the binary data extension, which abflow does not serve: send the "
                            "data as JSON (tritonclient: set_data_from_numpy(array, binary_data=False))")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise OipError(415, f"content type {media_type!r} is not supported: send application/json")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OipError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise OipError(400, f"body must be a JSON object, got {_kind(message)}")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise OipError(400, f'"id" must be a string, got {_kind(request_id)}')
    parameters = _parameters(message.get("parameters"), "parameters")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise OipError(400, 'send exactly one input tensor: {"inputs": [{"name": "input-0", "shape": [1, 4], '
                            '"datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}')
    features = _features(inputs[0], max_rows)
    if n_features is not None and features.shape[1] != n_features:
        raise OipError(400, f"expected {n_features} features per row, got {features.shape[1]}")
    return InferRequest(features, request_id, parameters, _requested_outputs(message.get("outputs")))


def encode_infer_response(request: InferRequest, probabilities: np.ndarray[Any, np.dtype[np.float64]],
                          class_names: Sequence[str], *, model_name: str, model_version: str = "",
                          parameters: Mapping[str, str | int | float | bool] | None = None) -> bytes:
    """The infer response for ``request``: the outputs it asked for, its ``id``, and ``parameters``."""
    rows, classes = probabilities.shape
    if classes != len(class_names):
        raise ValueError(f"{classes} probabilities per row but {len(class_names)} class names")
    outputs = []
    for name in request.outputs:
        if name == PROBABILITIES:
            outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [rows, classes],
                            "data": probabilities.reshape(-1).tolist()})
        else:
            best = np.argmax(probabilities, axis=1) if rows else np.zeros(0, dtype=np.int64)
            outputs.append({"name": CLASS, "datatype": "BYTES", "shape": [rows],
                            "data": [class_names[i] for i in best.tolist()]})
    response: dict[str, Any] = {"model_name": model_name, "outputs": outputs}
    if model_version:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    if parameters:
        response["parameters"] = dict(parameters)
    return orjson.dumps(response)


def model_metadata(name: str, *, versions: Sequence[str], n_features: int | None,
                   class_names: Sequence[str] | None) -> bytes:
    """``GET /v2/models/{name}``: the input and outputs this model takes and gives (-1: any size)."""
    classes = len(class_names) if class_names is not None else -1
    return orjson.dumps({
        "name": name, "versions": list(versions), "platform": "sklearn",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, n_features if n_features else -1]}],
        "outputs": [{"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, classes]},
                    {"name": CLASS, "datatype": "BYTES", "shape": [-1]}],
    })


def _features(tensor: object, max_rows: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(tensor, dict):
        raise OipError(400, f"inputs[0] must be a tensor object, got {_kind(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise OipError(400, 'inputs[0] needs a "name" (e.g. "input-0")')
    datatype = tensor.get("datatype")
    if datatype not in NUMERIC_DATATYPES:
        raise OipError(400, f"input {name!r} has datatype {datatype!r}; this model takes numbers: use one of "
                            f"{', '.join(NUMERIC_DATATYPES)} (FP64 is served as is)")
    parameters = _parameters(tensor.get("parameters"), f"input {name!r} parameters")
    if "binary_data_size" in parameters:
        raise OipError(400, f"input {name!r} uses the binary data extension, which abflow does not serve: send "
                            "the data as JSON (tritonclient: set_data_from_numpy(array, binary_data=False))")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise OipError(400, f"input {name!r} needs a shape [rows, features] (or [features] for one row) of "
                            f"non-negative integers, got {shape!r}")
    rows, width = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    if rows > max_rows:
        raise OipError(400, f"input {name!r} has {rows} rows; at most {max_rows} per request: send smaller batches")
    if width == 0:
        raise OipError(400, f"input {name!r} has no features: shape {shape!r}")
    values = _flat_numbers(tensor.get("data"), name)
    if len(values) != rows * width:
        raise OipError(400, f"input {name!r} has shape {shape!r}, which holds {rows * width} values, but its data "
                            f"holds {len(values)}")
    features = np.asarray(values, dtype=np.float64).reshape(rows, width)
    if not np.isfinite(features).all():
        raise OipError(400, f"input {name!r} holds a value that is not a finite number")
    return features


def _flat_numbers(data: object, name: str) -> list[float]:
    """``data`` flat (row-major) or nested; numbers only (JSON booleans and strings are refused)."""
    if not isinstance(data, list):
        raise OipError(400, f"input {name!r} needs its values as a JSON list in \"data\", got {_kind(data)}")
    flat: list[float] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) > 2:
                raise OipError(400, f"input {name!r} nests its data deeper than its shape")
            stack.append(iter(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            flat.append(float(item) if isinstance(item, float) or abs(item) < 2**63 else math.inf)
        else:
            raise OipError(400, f"input {name!r} holds {_kind(item)} {item!r:.40}; send numbers")
    return flat


def _requested_outputs(outputs: object) -> tuple[str, ...]:
    if outputs is None:
        return OUTPUTS
    if not isinstance(outputs, list) or not outputs:
        raise OipError(400, f'"outputs" must be a non-empty list of {{"name": ...}}, got {outputs!r:.80}')
    names = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise OipError(400, f"output {name!r:.60} does not exist: this model gives {', '.join(OUTPUTS)}")
        if isinstance(output, dict) and _parameters(output.get("parameters"), f"output {name!r}").get("binary_data"):
            raise OipError(400, f"output {name!r} asks for binary data, which abflow does not serve: ask for JSON "
                                "(tritonclient: InferRequestedOutput(name, binary_data=False))")
        names.append(name)
    return tuple(names)


def _parameters(raw: object, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OipError(400, f"{where} must be an object, got {_kind(raw)}")
    for key, value in raw.items():
        if not isinstance(value, str | int | float | bool):
            raise OipError(400, f"{where}[{key!r}] must be a string, number or boolean, got {_kind(value)}")
    return raw


_END = object()


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
