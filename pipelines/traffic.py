"""Traffic with truth: replay labelled rows as Seldon prediction requests and, optionally, send the
feedback a Seldon user's client would send for each answer.

An A/B experiment decides on outcomes, and on a laptop nobody is there to produce them. ``abflow
traffic`` is that somebody, for demos, tests and users replaying their own labelled data: each row is
a prediction request in the tutorial's format; with feedback on, the answer's most probable class is
compared with the row's label and the reward (1 right, 0 wrong) goes back exactly as Seldon's Python
client (``SeldonClient.feedback``) sends it: the request and the response as protobuf JSON, and the
reward as a protobuf ``float``, which protobuf's JSON printer leaves out when it is 0. A server that
reads a missing ``reward`` as anything but 0 gets every failure wrong; this sends what real clients send.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
from requests import RequestException, Response, Session

from abflow.components.datasets import LabelledRows
from abflow.components.smoke import payload_for, predictions_url
from abflow.serving.artifact import DEFAULT_CLASS_NAMES

FEEDBACK_SUFFIX = "/feedback"
GIVE_UP_AFTER = 10
"""Predictions in a row that cannot reach the endpoint before the replay stops: an endpoint that is
down (or a wrong --url) fails fast instead of timing out thousands of times."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAP_FIELDS = frozenset({"tags", "routing", "requestPath"})
"""The map fields of Seldon's ``Meta``: protobuf JSON keeps a map's entries even when a value is 0."""
VALUE_FIELDS = frozenset({"jsonData", "ndarray"})
"""``google.protobuf.Value``/``ListValue`` fields: printed as the JSON they hold, empty parts included."""


@dataclass
class ArmTally:
    """What one arm did with the replayed rows: its answers, how many were right (the labels are
    known here, whether or not the endpoint took the feedback) and the feedback it took or refused."""

    requests: int = 0
    correct: int = 0
    feedback_sent: int = 0
    feedback_refused: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.requests if self.requests else 0.0


@dataclass
class TrafficSummary:
    """Per-arm tallies (keyed by ``served_by``) and failures by reason."""

    arms: dict[str, ArmTally] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    feedback_errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    seconds: float = 0.0
    gave_up: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.feedback_errors or self.gave_up)

    def table(self) -> str:
        width = max([24, *(len(arm) for arm in self.arms)])
        lines = [f"{'arm':<{width}} {'requests':>8} {'feedback':>8} {'refused':>7} {'accuracy':>8}"]
        for arm, tally in sorted(self.arms.items()):
            lines.append(f"{arm:<{width}} {tally.requests:>8} {tally.feedback_sent:>8} {tally.feedback_refused:>7} "
                         f"{tally.accuracy:>8.3f}")
        for what, errors in (("prediction", self.errors), ("feedback", self.feedback_errors)):
            lines += [f"{what} errors: {count} x {reason}" for reason, count in errors.most_common()]
        if self.gave_up:
            lines.append(self.gave_up)
        return "\n".join(lines)


def protobuf_json(message: Mapping[str, Any]) -> dict[str, Any]:
    """A Seldon message as Seldon's client sends it back: parsed into its protobuf type, then printed
    by protobuf's JSON printer. A scalar holding its proto3 default (0, ``False``, empty text), an
    empty list, an empty map (``tags``, ``routing``, ``requestPath``) and ``null`` are left out; a map
    keeps every entry, a value of 0 included; a nested message is kept even when empty (parsing
    ``{}`` sets it); a ``Value``/``ListValue`` field (``jsonData``, ``ndarray``) is the JSON it holds."""
    rendered: dict[str, Any] = {}
    for key, value in message.items():
        if key in VALUE_FIELDS:
            rendered[key] = value
        elif isinstance(value, Mapping) and key not in MAP_FIELDS:
            rendered[key] = protobuf_json(value)
        elif not is_default(value):
            rendered[key] = value
    return rendered


def is_default(value: Any) -> bool:
    """Whether ``value`` is what proto3 treats as unset in a scalar, list or map field."""
    if value is None or isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str | list | Mapping) and not value


def feedback_body(request: Mapping[str, Any], response: Mapping[str, Any], reward: float) -> dict[str, Any]:
    """The JSON ``SeldonClient.feedback(request, response, reward)`` posts. ``Feedback.reward`` is a
    protobuf ``float``: the reward is rounded to 32 bits and printed as the shortest decimal that is
    that float, and a reward that rounds to +0 is the field's default, so no ``reward`` key is sent."""
    if not math.isfinite(reward) or abs(reward) > FLOAT32_MAX:
        raise ValueError(f"a reward must be a finite number a 32-bit float can hold (as Seldon's Feedback.reward), "
                         f"got {reward}")
    body: dict[str, Any] = {"request": protobuf_json(request), "response": protobuf_json(response)}
    as_float32 = np.float32(reward)
    if as_float32 != 0 or math.copysign(1.0, float(as_float32)) < 0:
        body["reward"] = float(str(as_float32))
    return body


def predicted_class(response: Mapping[str, Any]) -> int:
    """The most probable class of a tensor or ndarray response, as an index into the iris class names
    (``data.names`` says which column is which, when the response names them)."""
    data = response["data"]
    values = data["tensor"]["values"] if "tensor" in data else data["ndarray"][0]
    best = max(range(len(values)), key=lambda index: float(values[index]))
    names = data.get("names") or []
    if len(names) == len(values) and names[best] in DEFAULT_CLASS_NAMES:
        return DEFAULT_CLASS_NAMES.index(str(names[best]))
    return best


def served_by(response: Mapping[str, Any]) -> str:
    """The arm that answered: its model node (the one ``meta.requestPath`` entry that is not a
    router) and the router's choice from ``meta.routing``, e.g. ``classifier-1 (random-ab-test=0)``;
    ``single`` when the response names neither."""
    meta = response.get("meta") or {}
    routing = meta.get("routing") or {}
    route = ",".join(f"{router}={child}" for router, child in sorted(routing.items()))
    models = sorted(set(meta.get("requestPath") or {}) - set(routing))
    model = models[0] if len(models) == 1 else ""
    if model and route:
        return f"{model} ({route})"
    return model or route or "single"


def replay(
    url: str,
    rows: LabelledRows,
    *,
    requests: int,
    feedback: bool,
    rate: float | None = None,
    token: str | None = None,
    seed: int = 0,
    progress: TextIO | None = None,
    timeout: float = 10.0,
) -> TrafficSummary:
    """Send ``requests`` predictions of rows drawn (with a fixed ``seed``) from ``rows``, at most
    ``rate`` per second, with feedback for each answer when ``feedback`` is set; the progress bar goes
    to ``progress`` (``sys.stderr`` as it is at the call, so a redirected stderr gets it)."""
    if requests < 1:
        raise ValueError(f"--requests must be at least 1, got {requests}")
    if rate is not None and not rate > 0:
        raise ValueError(f"--rate must be a positive number of requests per second, got {rate}")
    predict_url = predictions_url(url)
    feedback_url = predict_url.rsplit("/", 1)[0] + FEEDBACK_SUFFIX
    summary = TrafficSummary()
    bar = ProgressBar(requests, progress or sys.stderr)
    started = time.monotonic()
    with Session() as session:
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        unreachable = 0
        for sent, index in enumerate(_draws(len(rows.labels), requests, seed)):
            if rate is not None:
                _pace(started + sent / rate)
            request = payload_for(rows.features[index].tolist())
            summary.sent += 1
            try:
                answer = _predict(session, predict_url, request, timeout, summary.errors)
            except RequestException as exc:
                summary.errors[_unreachable(predict_url, exc)] += 1
                unreachable += 1
                if unreachable == GIVE_UP_AFTER:
                    summary.gave_up = f"gave up after {unreachable} predictions in a row could not reach {predict_url}"
                    break
                continue
            unreachable = 0
            if answer is not None:
                response, predicted = answer
                tally = summary.arms.setdefault(served_by(response), ArmTally())
                reward = 1.0 if predicted == int(rows.labels[index]) else 0.0
                tally.requests += 1
                tally.correct += int(reward)
                if feedback:
                    if _send_feedback(session, feedback_url, feedback_body(request, response, reward), timeout,
                                      summary.feedback_errors):
                        tally.feedback_sent += 1
                    else:
                        tally.feedback_refused += 1
            bar.update(sent + 1)
    bar.close()
    summary.seconds = time.monotonic() - started
    return summary


class ProgressBar:
    """``[#####-----] 1500/3000``: on a terminal one line redrawn at each percent; into a file or a
    pipe (a CI log) a line at each tenth, so the log stays readable."""

    WIDTH = 30

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream, self.shown = total, stream, -1
        self.interactive = stream.isatty()
        self.step = 1 if self.interactive else 10

    def update(self, done: int) -> None:
        percent = done * 100 // self.total
        if percent // self.step == self.shown // self.step and done < self.total:
            return
        self.shown = percent
        filled = done * self.WIDTH // self.total
        bar = f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {done}/{self.total}"
        self.stream.write(f"\r{bar}" if self.interactive else f"{bar}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def _draws(population: int, count: int, seed: int) -> Iterator[int]:
    """Every row once per pass, each pass in a fresh seeded order: labels stay balanced as in the data."""
    generator = random.Random(seed)
    order: list[int] = []
    for _ in range(count):
        if not order:
            order = list(range(population))
            generator.shuffle(order)
        yield order.pop()


def _pace(due: float) -> None:
    """Hold the request until its slot in the ``--rate`` schedule."""
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _predict(session: Session, url: str, request: Mapping[str, Any], timeout: float,
             errors: Counter[str]) -> tuple[dict[str, Any], int] | None:
    """The decoded answer and its predicted class, or ``None`` with the failure counted; raises
    ``RequestException`` when the endpoint cannot be reached."""
    response = session.post(url, json=request, timeout=timeout)
    if response.status_code != 200:
        errors[_refused(response)] += 1
        return None
    try:
        answer = response.json()
        return answer, predicted_class(answer)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        errors[f"HTTP 200 without a prediction: {response.text[:160]}"] += 1
        return None


def _send_feedback(session: Session, url: str, body: Mapping[str, Any], timeout: float,
                   errors: Counter[str]) -> bool:
    """Whether the endpoint took the feedback (a 200, what Seldon's client counts as success); a
    failure is counted under its reason."""
    try:
        response = session.post(url, json=body, timeout=timeout)
    except RequestException as exc:
        errors[_unreachable(url, exc)] += 1
        return False
    if response.status_code != 200:
        errors[_refused(response)] += 1
        return False
    return True


def _unreachable(url: str, exc: RequestException) -> str:
    return f"cannot reach {url} ({type(exc).__name__})"


def _refused(response: Response) -> str:
    return f"HTTP {response.status_code}: {_info(response.text)}"


def _info(text: str) -> str:
    try:
        return str(json.loads(text)["status"]["info"])[:160]
    except (ValueError, KeyError, TypeError):
        return text[:160]
