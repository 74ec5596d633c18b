"""``abflow traffic`` against a recording Seldon stand-in on 127.0.0.1: the feedback it posts is what
Seldon's Python client posts, reward 0 included (as no ``reward`` key at all)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abflow.components.datasets import LabelledRows, load_labelled_rows
from abflow.pipelines.cli import main
from abflow.pipelines.traffic import ProgressBar, feedback_body, protobuf_json, replay
from tests.fixtures.serving import ServedGraph


class Recorder(ThreadingHTTPServer):
    """Answers predictions like abflow's A/B graph (always class 0, arms alternating by prediction,
    feedback not counted) and records every body it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        self.bodies: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.predictions = 0
        self.feedback_status = 200
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def feedback(self) -> list[dict[str, Any]]:
        return [body for path, body, _ in self.bodies if path.endswith("/feedback")]


class RecordingHandler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append((self.path, body, dict(self.headers)))
            if self.path.endswith("/predictions"):
                self.server.predictions += 1
            index = self.server.predictions
        if self.path.endswith("/predictions"):
            answer: dict[str, Any] = {
                "data": {"names": ["iris-setosa", "iris-versicolor", "iris-virginica"],
                         "tensor": {"shape": [1, 3], "values": [0.9, 0.1, 0.0]}},
                "meta": {"puid": f"p{index}", "tags": {}, "routing": {"random-ab-test": index % 2},
                         "requestPath": {f"classifier-{index % 2 + 1}": f"m{index % 2 + 1}"}},
            }
            self._reply(200, answer)
        else:
            self._reply(self.server.feedback_status, {"meta": {}})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_feedback_is_sent_as_seldons_client_sends_it(recorder: Recorder) -> None:
    rows = load_labelled_rows()
    summary = replay(recorder.url, rows, requests=150, feedback=True, progress=io.StringIO())
    feedback = recorder.feedback()
    assert len(feedback) == 150 and not summary.failed
    right = [body for body in feedback if "reward" in body]
    wrong = [body for body in feedback if "reward" not in body]
    assert len(right) == 50 and len(wrong) == 100, "every setosa is right (reward 1), the rest wrong (reward 0)"
    assert all(body["reward"] == 1.0 for body in right)
    for body in feedback:
        assert set(body) <= {"request", "response", "reward"}
        assert body["response"]["meta"]["routing"]["random-ab-test"] in (0, 1), "the response says which arm"
        assert "tags" not in body["response"]["meta"], "protobuf JSON leaves out an empty map"
        assert body["request"]["data"]["names"][0] == "sepallengthcm"
    setosa_values = {tuple(v) for v in rows.features[rows.labels == 0].tolist()}
    assert {tuple(b["request"]["data"]["tensor"]["values"]) for b in right} == setosa_values
    assert {arm: (t.requests, t.correct) for arm, t in summary.arms.items()} == {
        "classifier-1 (random-ab-test=0)": (75, sum(1 for b in right
                                                    if b["response"]["meta"]["routing"]["random-ab-test"] == 0)),
        "classifier-2 (random-ab-test=1)": (75, sum(1 for b in right
                                                    if b["response"]["meta"]["routing"]["random-ab-test"] == 1)),
    }


def test_refused_feedback_is_counted_and_fails_the_command(recorder: Recorder,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    recorder.feedback_status = 400
    code = main(["traffic", "--url", recorder.url, "--requests", "20", "--feedback", "--token", "secret"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "feedback errors: 20 x HTTP 400" in out and "20/20" in err
    assert all(headers["Authorization"] == "Bearer secret" for _, _, headers in recorder.bodies)


def test_without_feedback_only_predictions_are_sent(recorder: Recorder, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["traffic", "--url", recorder.url, "--requests", "10"]) == 0
    assert [path for path, _, _ in recorder.bodies] == ["/api/v1.0/predictions"] * 10
    assert "classifier-1 (random-ab-test=0)" in capsys.readouterr().out


def test_a_real_ab_graph_is_summarised_per_arm(tutorial_ab: ServedGraph, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["traffic", "--url", tutorial_ab.url, "--token", tutorial_ab.get_token(), "--requests", "80"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = {line.split(" (")[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"classifier-1", "classifier-2"}, out
    assert sum(int(row[2]) for row in rows.values()) == 80, "every answer is counted under the arm that gave it"
    assert all(0.5 < float(row[-1]) <= 1.0 for row in rows.values()), "both iris models are mostly right"


def test_a_csv_of_the_users_own_rows_is_replayed_with_its_labels(recorder: Recorder, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "flowers.csv"
    data.write_text("Kind,SL,SW,PL,PW\nIris-setosa,5.1,3.5,1.4,0.2\nvirginica,6.7,3.0,5.2,2.3\n")
    code = main(["traffic", "--url", recorder.url, "--data", str(data), "--feature-columns", "sl,sw,pl,pw",
                 "--label-column", "kind", "--requests", "4", "--feedback"])
    assert code == 0, capsys.readouterr().err
    sent = [(tuple(body["request"]["data"]["tensor"]["values"]), "reward" in body) for body in recorder.feedback()]
    assert sorted(sent) == [((5.1, 3.5, 1.4, 0.2), True)] * 2 + [((6.7, 3.0, 5.2, 2.3), False)] * 2, \
        "the stand-in always answers setosa: right for the setosa row only"


def test_a_missing_column_or_a_bad_rate_is_refused_before_any_request(recorder: Recorder, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "flowers.csv"
    data.write_text("sepallengthcm,sepalwidthcm,petallengthcm,petalwidthcm\n5.1,3.5,1.4,0.2\n")
    assert main(["traffic", "--url", recorder.url, "--data", str(data), "--requests", "4"]) == 2
    assert "has no column 'species'" in capsys.readouterr().err
    assert main(["traffic", "--url", recorder.url, "--requests", "4", "--rate", "0"]) == 2
    assert "--rate must be a positive number" in capsys.readouterr().err
    assert recorder.bodies == []


def test_rate_paces_the_requests(recorder: Recorder) -> None:
    summary = replay(recorder.url, load_labelled_rows(), requests=10, feedback=True, rate=20.0, progress=io.StringIO())
    assert summary.seconds >= 9 / 20, "the tenth request waits for its slot, 0.45 s after the first"
    assert len(recorder.bodies) == 20


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "draws"), [(io.StringIO, 11), (Terminal, 101)])
def test_the_progress_bar_redraws_a_terminal_and_keeps_a_log_short(stream: type[io.StringIO], draws: int) -> None:
    out = stream()
    bar = ProgressBar(3000, out)
    for done in range(1, 3001):
        bar.update(done)
    bar.close()
    text = out.getvalue()
    assert text.count("/3000") == draws
    assert text.endswith("[" + "#" * 30 + "] 3000/3000\n")
    assert ("\r" in text) is (stream is Terminal)


def test_unreachable_endpoint_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fixtures.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["traffic", "--url", url, "--requests", "3"]) == 1
    assert "prediction errors: 3 x cannot reach" in capsys.readouterr().out
    assert main(["traffic", "--url", url, "--requests", "100000", "--feedback"]) == 1
    out, err = capsys.readouterr()
    assert "prediction errors: 10 x cannot reach" in out and "gave up after 10 predictions in a row" in out
    assert "10 of 100000 predictions sent" in err


def test_rows_are_drawn_evenly_with_a_fixed_seed(recorder: Recorder) -> None:
    rows = LabelledRows(np.arange(12, dtype=np.float64).reshape(3, 4), np.array([0, 1, 2]), "three")
    replay(recorder.url, rows, requests=6, feedback=False, progress=io.StringIO(), seed=3)
    sent = [body["data"]["tensor"]["values"][0] for _, body, _ in recorder.bodies]
    assert sorted(sent[:3]) == sorted(sent[3:]) == [0.0, 4.0, 8.0]


@pytest.mark.parametrize("reward", [0.0, 1.0, 0.25])
def test_only_a_zero_reward_is_left_out(reward: float) -> None:
    body = feedback_body({"data": {"ndarray": [[1, 2, 3, 4]]}}, {"meta": {"routing": {"r": 0}}}, reward)
    assert ("reward" in body) is (reward != 0)
    assert body["response"] == {"meta": {"routing": {"r": 0}}}, "a map keeps an entry whose value is 0"


def seldon_protobuf() -> dict[str, Any]:
    """The message classes of the part of Seldon's ``prediction.proto`` a prediction and its feedback
    use (field names, numbers and types as Seldon publishes them), built at run time with protobuf's
    own descriptors: protobuf's JSON parser and printer are then the oracle for what Seldon's client
    sends, without a copy of Seldon's code. protobuf is there already: kfp depends on it."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="abflow_test_seldon.proto", package="seldon", syntax="proto3",
                                               dependency=["google/protobuf/struct.proto"])

    def entry(name: str, kind: int, type_name: str = "") -> descriptor_pb2.DescriptorProto:
        nested = descriptor_pb2.DescriptorProto(name=name)
        nested.options.map_entry = True
        nested.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        value = nested.field.add(name="value", number=2, type=kind, label=field.LABEL_OPTIONAL)
        if type_name:
            value.type_name = type_name
        return nested

    def message(name: str, fields: list[tuple[str, int, int, str]],
                nested: tuple[descriptor_pb2.DescriptorProto, ...] = ()) -> None:
        added = proto.message_type.add(name=name)
        added.nested_type.extend(nested)
        for number, (field_name, kind, label, type_name) in enumerate(fields, 1):
            added_field = added.field.add(name=field_name, json_name=field_name, number=number, type=kind,
                                          label=label)
            if type_name:
                added_field.type_name = type_name

    one, many, text, sub = field.LABEL_OPTIONAL, field.LABEL_REPEATED, field.TYPE_STRING, field.TYPE_MESSAGE
    message("Tensor", [("shape", field.TYPE_INT32, many, ""), ("values", field.TYPE_DOUBLE, many, "")])
    message("DefaultData", [("names", text, many, ""), ("tensor", sub, one, ".seldon.Tensor"),
                            ("ndarray", sub, one, ".google.protobuf.ListValue")])
    message("Meta", [("puid", text, one, ""), ("tags", sub, many, ".seldon.Meta.TagsEntry"),
                     ("routing", sub, many, ".seldon.Meta.RoutingEntry"),
                     ("requestPath", sub, many, ".seldon.Meta.RequestPathEntry")],
            (entry("TagsEntry", sub, ".google.protobuf.Value"), entry("RoutingEntry", field.TYPE_INT32),
             entry("RequestPathEntry", text)))
    message("Status", [("code", field.TYPE_INT32, one, ""), ("info", text, one, ""), ("reason", text, one, "")])
    message("SeldonMessage", [("status", sub, one, ".seldon.Status"), ("meta", sub, one, ".seldon.Meta"),
                              ("data", sub, one, ".seldon.DefaultData"), ("strData", text, one, ""),
                              ("jsonData", sub, one, ".google.protobuf.Value")])
    seldon_message = ".seldon.SeldonMessage"
    message("Feedback", [("request", sub, one, seldon_message), ("response", sub, one, seldon_message),
                         ("reward", field.TYPE_FLOAT, one, ""), ("truth", sub, one, seldon_message)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(struct_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"seldon.{name}"))
            for name in ("SeldonMessage", "Feedback")}


SELDON = seldon_protobuf()


def as_seldons_client_sends(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    from google.protobuf import json_format

    parsed = json_format.ParseDict(body, SELDON[kind]())
    printed: dict[str, Any] = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    return printed


names = st.text(max_size=3)
numbers = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-1000, 1000)
json_values = st.recursive(st.none() | st.booleans() | numbers | names,
                           lambda inner: st.lists(inner, max_size=2) | st.dictionaries(names, inner, max_size=2),
                           max_leaves=6)
tensors = st.fixed_dictionaries({}, optional={"shape": st.lists(st.integers(0, 4), max_size=2),
                                              "values": st.lists(numbers, max_size=3)})
data = st.fixed_dictionaries({}, optional={"names": st.lists(names, max_size=3)}).flatmap(
    lambda base: st.one_of(st.just(base), st.builds(lambda t: {**base, "tensor": t}, tensors),
                           st.builds(lambda a: {**base, "ndarray": a}, st.lists(st.lists(numbers, max_size=3),
                                                                                max_size=2))))
metas = st.fixed_dictionaries({}, optional={
    "puid": names | st.none(), "tags": st.dictionaries(names, json_values, max_size=2),
    "routing": st.dictionaries(names, st.integers(0, 3), max_size=2),
    "requestPath": st.dictionaries(names, names, max_size=2)})
statuses = st.fixed_dictionaries({}, optional={"code": st.integers(0, 599), "info": names, "reason": names})
seldon_messages = st.fixed_dictionaries({}, optional={"status": statuses, "meta": metas}).flatmap(
    lambda base: st.one_of(st.just(base), st.builds(lambda d: {**base, "data": d}, data),
                           st.builds(lambda t: {**base, "strData": t}, names),
                           st.builds(lambda v: {**base, "jsonData": v}, json_values)))


@settings(deadline=None)  # a loaded 2-core machine can take longer than hypothesis's 200 ms per example
@given(seldon_messages)
def test_messages_are_rendered_as_protobufs_json_printer_renders_them(message: dict[str, Any]) -> None:
    assert protobuf_json(message) == as_seldons_client_sends("SeldonMessage", message)


@settings(deadline=None)
@given(seldon_messages, seldon_messages,
       st.sampled_from([0.0, -0.0, 1.0, 1e-50]) | st.floats(allow_nan=False, width=32, allow_infinity=False))
def test_feedback_is_what_seldons_client_posts(request: dict[str, Any], response: dict[str, Any],
                                               reward: float) -> None:
    body = feedback_body(request, response, reward)
    expected = as_seldons_client_sends("Feedback", {"request": request, "response": response, "reward": reward})
    assert ("reward" in body) is ("reward" in expected), "a reward of +0 (after rounding to float32) is left out"
    if "reward" in body:
        assert np.float32(body.pop("reward")) == np.float32(expected.pop("reward"))
    assert body == expected
