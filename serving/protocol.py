"""The Seldon REST protocol as plain functions: bytes in → typed request, numbers out → bytes.

No web framework here, so the model server, the executor and the tests share one decoder. Every way
a client can get a request wrong ends in a ``SeldonError`` carrying the HTTP status and a message that
says what was wrong; anything else escaping the decoder is a bug (a fuzz test holds us to that).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal
from urllib.parse import parse_qs

import numpy as np
import orjson

from abflow.serving.limits import MAX_ABS_REWARD as MAX_ABS_REWARD  # the default bound, re-exported

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ROWS = 100_000
MAX_NESTING = 32
"""How deep ``meta.tags`` (echoed in every response) and feedback ``truth`` may nest. orjson refuses to
encode past 254 levels, so deeper tags used to decode fine and then fail the response; Seldon's tags
are flat key/value pairs, so 32 is generous."""
BAD_DATA = "MICROSERVICE_BAD_DATA"
INTERNAL_ERROR = "MICROSERVICE_INTERNAL_ERROR"
Encoding = Literal["tensor", "ndarray"]
_NUMBER_TYPES = frozenset((int, float))
_FAST_DTYPES = (np.dtype(np.float64), np.dtype(np.int64))
_JSON_TYPES = ("application/json", "")
_FORM_TYPE = "application/x-www-form-urlencoded"
_OTHER_PAYLOADS = ("jsonData", "strData", "binData")
# Byte → puid character: 256 is a multiple of 32, so every character is equally likely (5 random bits).
_PUID_CHARS = bytes(b"abcdefghijklmnopqrstuvwxyz234567"[i % 32] for i in range(256))


def status_body(code: int, info: str, reason: str) -> bytes:
    return orjson.dumps({"status": {"code": code, "info": info, "reason": reason, "status": "FAILURE"}})


class SeldonError(Exception):
    """A request the server refuses, carrying what the HTTP layer needs to answer it."""

    def __init__(self, code: int, info: str, reason: str = BAD_DATA) -> None:
        super().__init__(info)
        self.code = code
        self.info = info
        self.reason = reason

    def body(self) -> bytes:
        return status_body(self.code, self.info, self.reason)


@dataclass
class PredictionRequest:
    features: np.ndarray[Any, np.dtype[np.float64]]
    encoding: Encoding
    names: list[str] | None = None
    puid: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """One feedback message as Seldon clients send it.

    ``routing`` is ``response.meta.routing`` (``None`` when the message carries no response, or a
    response without routing); ``puid`` is the prediction's id, from ``response.meta.puid`` or else
    ``request.meta.puid``, by which the executor finds the arm when there is no routing and counts
    each prediction's feedback once."""

    reward: float
    routing: dict[str, int] | None
    truth: Any | None = None
    puid: str | None = None


def new_puid() -> str:
    """A 26-character lowercase id, the length and alphabet of Seldon's puids, from 130 random bits.

    One C-level ``translate`` of 26 random bytes instead of base32-encoding 16 of them: it runs on
    every response, and ``base64.b32encode`` is a Python loop (~5 µs against <1 µs).
    """
    return os.urandom(26).translate(_PUID_CHARS).decode("ascii")


def decode_prediction_request(
    body: bytes,
    content_type: str | None,
    *,
    n_features: int | None = None,
    max_rows: int = MAX_ROWS,
) -> PredictionRequest:
    text = _json_text(body, content_type)
    message = _load_object(text)
    for other in _OTHER_PAYLOADS:
        if other in message:
            raise _bad(f"{other} is not supported: this model takes numbers as data.tensor or data.ndarray")
    data = message.get("data")
    if data is None:
        raise _bad('missing "data": send {"data": {"tensor": {"shape": [rows, features], "values": [...]}}}')
    if not isinstance(data, dict):
        raise _bad(f'"data" must be an object, got {_json_type(data)}')
    for other in _OTHER_PAYLOADS:
        if other in data:
            raise _bad(f"data.{other} is not supported: this model takes numbers as data.tensor or data.ndarray")
    has_tensor, has_ndarray = "tensor" in data, "ndarray" in data
    if has_tensor and has_ndarray:
        raise _bad("data holds both tensor and ndarray: send exactly one of them")
    encoding: Encoding
    may_hold_booleans = b"true" in text or b"false" in text
    if has_tensor:
        features, encoding = _tensor_features(data["tensor"], max_rows, may_hold_booleans), "tensor"
    elif has_ndarray:
        features, encoding = _ndarray_features(data["ndarray"], max_rows, may_hold_booleans), "ndarray"
    else:
        raise _bad("data holds neither tensor nor ndarray: send one of them with the feature values")
    if not np.isfinite(features).all():
        raise _bad("values must be finite numbers; NaN and Infinity are not accepted")
    if n_features is not None and features.shape[1] != n_features:
        raise _bad(f"expected {n_features} features per row, got {features.shape[1]}")
    meta = message.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise _bad(f'"meta" must be an object, got {_json_type(meta)}')
    return PredictionRequest(
        features=features,
        encoding=encoding,
        names=_names(data.get("names")),
        puid=_puid(meta.get("puid")),
        tags=_tags(meta.get("tags")),
    )


def encode_prediction_response(
    request: PredictionRequest,
    probabilities: np.ndarray[Any, np.dtype[Any]],
    class_names: Sequence[str],
    *,
    puid: str,
    routing: Mapping[str, int],
    request_path: Mapping[str, str],
    tags: Mapping[str, Any] | None = None,
) -> bytes:
    """The response in the request's own encoding; request tags are echoed, ``tags`` added on top."""
    result = np.ascontiguousarray(probabilities, dtype=np.float64)
    if result.ndim != 2 or result.shape[1] != len(class_names):
        raise SeldonError(
            500,
            f"the model returned shape {list(result.shape)} for {len(class_names)} class names",
            INTERNAL_ERROR,
        )
    if not np.isfinite(result).all():
        raise _non_finite(request, request_path)
    payload: Any = result
    if request.encoding == "tensor":
        payload = {"shape": list(result.shape), "values": result.ravel()}
    response = {
        "data": {"names": list(class_names), request.encoding: payload},
        "meta": {
            "puid": puid,
            "tags": {**request.tags, **tags} if tags else request.tags,
            "routing": dict(routing),
            "requestPath": dict(request_path),
        },
    }
    try:
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise SeldonError(500, f"the response could not be encoded as JSON ({exc}); this is a bug: "
                               "please report it with the request", INTERNAL_ERROR) from None


def _non_finite(request: PredictionRequest, request_path: Mapping[str, str]) -> SeldonError:
    """A 400, not a 500: a fitted classifier's probabilities go non-finite only when its arithmetic
    overflows on extreme inputs (≈1e300), which is the request's doing; as a 5xx it would also let any
    client inflate an arm's error rate, which the experiment's guardrails read as the model's fault."""
    largest = float(np.abs(request.features).max())
    nodes = ", ".join(map(repr, request_path)) or "the model"
    return _bad(f"model {nodes} produced non-finite probabilities for these inputs (largest feature magnitude "
                f"{largest:.3g}): values this extreme are outside what it can handle; send feature values "
                "in the range it was trained on")


def check_reward(value: object, bound: float = MAX_ABS_REWARD) -> float:
    """``value`` as a float if it is a finite number within ``±bound``, else a 400 ``SeldonError``.

    The one reward validator: feedback decoding and the experiment's outcome ledger both use it, so a
    reward that one accepts the other never refuses. Unbounded rewards would let one client turn an
    arm's reward sum (or sum of squares) into ``inf``, and with it every mean and test statistic.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"reward must be a number, got {_json_type(value)}")
    try:
        reward = float(value)
    except OverflowError:
        reward = math.inf
    if not math.isfinite(reward) or abs(reward) > bound:
        raise _bad(f"reward must be a finite number between {-bound:g} and {bound:g}, got {value!r}: "
                   "scale rewards down (or raise the bound the server was started with)")
    return reward


def decode_feedback(body: bytes, content_type: str | None, *, max_abs_reward: float = MAX_ABS_REWARD) -> Feedback:
    """A feedback message; which arm it credits is the executor's business (``Feedback``).

    A missing ``reward`` is 0: Seldon's Python client serialises with protobuf JSON, which omits zero
    values, so a reward of 0 (a real observation) arrives with no ``reward`` key. ``response`` may
    be missing too (Seldon's ``feedback()`` allows it); ``truth`` is kept as sent."""
    message = _decode_json_object(body, content_type)
    reward = check_reward(message.get("reward", 0.0), max_abs_reward)
    response = message.get("response")
    if response is not None and not isinstance(response, dict):
        raise _bad(f'"response" must be the prediction response object, got {_json_type(response)}')
    meta = _feedback_meta(response, "response")
    routing = meta.get("routing")
    if routing is not None and (not isinstance(routing, dict) or not all(
        isinstance(arm, int) and not isinstance(arm, bool) and arm >= 0 for arm in routing.values()
    )):
        raise _bad(f"response.meta.routing must map router names to child indexes, got {routing!r}")
    request = message.get("request")
    if request is not None and not isinstance(request, dict):
        raise _bad(f'"request" must be the prediction request object, got {_json_type(request)}')
    puid = _puid(meta.get("puid")) or _puid(_feedback_meta(request, "request").get("puid"))
    truth = message.get("truth")
    _check_nesting(truth, "truth", "send the true label the way data is sent")
    return Feedback(reward=reward, routing=routing, truth=truth, puid=puid)


def _feedback_meta(message: dict[str, Any] | None, where: str) -> dict[str, Any]:
    meta = message.get("meta") if message is not None else None
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise _bad(f"{where}.meta must be an object, got {_json_type(meta)}")
    return meta


def _decode_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    return _load_object(_json_text(body, content_type))


def _json_text(body: bytes, content_type: str | None) -> bytes:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == _FORM_TYPE:
        return _form_json(body)
    if media_type not in _JSON_TYPES:
        raise SeldonError(415, f"content type {media_type!r} is not supported: send application/json", BAD_DATA)
    return body


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"body is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise _bad(f"body must be a JSON object, got {_json_type(message)}")
    return message


def _form_json(body: bytes) -> bytes:
    """The ``json=<payload>`` field the Seldon Python wrapper also accepts from form posts.

    ``curl -d '{...}'`` labels a raw JSON body as a form; taking it as JSON spares users a puzzle.
    """
    if body.lstrip().startswith(b"{"):
        return body
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
    except UnicodeDecodeError:
        raise _bad("form body is not UTF-8") from None
    values = fields.get("json")
    if not values:
        raise _bad("a form-encoded request must carry the payload as json=<payload>")
    return values[0].encode("utf-8")


def _tensor_features(tensor: object, max_rows: int, may_hold_booleans: bool) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(tensor, dict):
        raise _bad(f"data.tensor must be an object with shape and values, got {_json_type(tensor)}")
    shape, values = tensor.get("shape"), tensor.get("values")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _bad(f"data.tensor.shape must be a list of non-negative integers, got {_short(shape)}")
    if len(shape) != 2:
        raise _bad(f"data.tensor.shape must be 2-D [rows, features], got {shape}")
    rows, columns = shape
    _check_batch(rows, columns, max_rows)
    if not isinstance(values, list):
        raise _bad(f"data.tensor.values must be a list of numbers, got {_json_type(values)}")
    if len(values) != rows * columns:
        raise _bad(f"data.tensor.shape {shape} needs {rows * columns} values, got {len(values)}")
    return _numbers(values, may_hold_booleans).reshape(rows, columns)


def _ndarray_features(ndarray: object, max_rows: int, may_hold_booleans: bool) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(ndarray, list):
        raise _bad(f"data.ndarray must be a list of rows, got {_json_type(ndarray)}")
    if not ndarray:
        raise _bad("data.ndarray is empty: send at least one row")
    row_types = set(map(type, ndarray))
    if row_types <= _NUMBER_TYPES:
        rows: list[Any] = [ndarray]
    elif row_types == {list}:
        rows = ndarray
    else:
        raise _bad("data.ndarray must be a list of rows (lists of numbers) or a single row of numbers")
    widths = set(map(len, rows))
    if len(widths) != 1:
        raise _bad(f"data.ndarray rows have different lengths {sorted(widths)}: every row needs the same features")
    width = widths.pop()
    _check_batch(len(rows), width, max_rows)
    # One flat list is cheaper to type-check and to convert than numpy walking nested lists.
    values = list(chain.from_iterable(rows))
    return _numbers(values, may_hold_booleans).reshape(len(rows), width)


def _check_batch(rows: int, columns: int, max_rows: int) -> None:
    if rows == 0:
        raise _bad("the batch is empty: send at least one row")
    if columns == 0:
        raise _bad("rows have no features: send the feature values")
    if rows > max_rows:
        raise SeldonError(413, f"the batch has {rows} rows, over the limit of {max_rows}: split it", BAD_DATA)


def _numbers(values: list[Any], may_hold_booleans: bool) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``values`` as float64, refusing anything but JSON numbers, in one numpy call when it can.

    numpy's own type discovery does the checking: a list holding a string, a null, an object or a
    nested list does not come out as a 1-D float64 or int64 array. Only booleans would (as 1.0 and
    0.0), and a boolean can only have come from a ``true`` or ``false`` literal in the JSON text, so
    ``may_hold_booleans`` (either literal somewhere in the body) sends the values through the
    per-element type check instead. That check costs as much as the conversion (~90 µs for 1000 × 4
    values); looking for the two literals in the 20 KB body costs ~25 µs. Anything unusual (an
    integer beyond 64 bits, a ragged list) also takes the slow path, which says precisely what was wrong.
    """
    if not may_hold_booleans:
        try:
            array = np.array(values)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            if array.ndim == 1 and array.dtype in _FAST_DTYPES:
                return array.astype(np.float64, copy=False)
    _check_numbers(values)
    return _to_float_array(values)


def _check_numbers(values: list[Any]) -> None:
    """Reject booleans, strings, nulls and nesting before numpy would silently coerce them."""
    if not set(map(type, values)) <= _NUMBER_TYPES:
        raise _bad("feature values must be numbers (not strings, booleans, nulls or nested lists)")


def _to_float_array(values: list[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        raise _bad("a feature value is too large for a 64-bit float") from None


def _names(names: object) -> list[str] | None:
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad(f"data.names must be a list of strings, got {_short(names)}")
    return names


def _puid(puid: object) -> str | None:
    if puid is None or isinstance(puid, str):
        return puid or None
    raise _bad(f"meta.puid must be a string, got {_json_type(puid)}")


def _tags(tags: object) -> dict[str, Any]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise _bad(f"meta.tags must be an object, got {_json_type(tags)}")
    _check_nesting(tags, "meta.tags", "send flat key/value tags")
    return tags


def _check_nesting(value: object, where: str, fix: str, limit: int = MAX_NESTING) -> None:
    """Refuse ``value`` if objects/lists nest more than ``limit`` levels deep in it (iteratively: a
    recursive walk would itself overflow on the bodies this guards against)."""
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise _bad(f"{where} nests deeper than {limit} levels: {fix}")
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


def _bad(info: str) -> SeldonError:
    return SeldonError(400, info, BAD_DATA)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
