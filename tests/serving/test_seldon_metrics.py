"""Seldon's metric labels from the operator's environment (local defaults otherwise), and one
exposition out of the executor's and its arms'."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from abflow.serving.metrics import ExecutorMetrics, ModelMetrics, SeldonLabels, merge_expositions

LOCAL = {"deployment": "iris-ab", "predictor": "default", "predictor_version": "exp-1", "model": "classifier-1",
         "image": "", "version": "v3"}


def test_local_defaults_when_seldon_injected_nothing() -> None:
    assert SeldonLabels.from_env(**LOCAL, environ={}) == SeldonLabels(
        "iris-ab", "default", "exp-1", "classifier-1", "", "v3")


@pytest.mark.parametrize(("image", "name", "tag"), [
    ("registry:5000/abflow/serving:0123abc", "registry:5000/abflow/serving", "0123abc"),
    ("abflow-serving:1.2", "abflow-serving", "1.2"),
    ("registry:5000/abflow/serving", "registry:5000/abflow/serving", ""),
])
def test_seldons_operator_environment_wins_as_its_python_wrapper_reads_it(image: str, name: str, tag: str) -> None:
    environ = {"SELDON_DEPLOYMENT_ID": "sd", "PREDICTOR_ID": "main", "PREDICTIVE_UNIT_ID": "classifier-2",
               "PREDICTIVE_UNIT_IMAGE": image, "PREDICTOR_LABELS": json.dumps({"version": "exp-9", "team": "x"})}
    assert SeldonLabels.from_env(**LOCAL, environ=environ) == SeldonLabels("sd", "main", "exp-9", "classifier-2",
                                                                          name, tag)


def test_predictor_labels_that_are_not_json_or_name_no_version_keep_the_local_version() -> None:
    for raw in ("not json", "[1]", "{}"):
        assert SeldonLabels.from_env(**LOCAL, environ={"PREDICTOR_LABELS": raw}).predictor_version == "exp-1"


def samples(text: bytes) -> set[tuple[str, str, tuple[tuple[str, str], ...], float]]:
    """(family, sample name, labels, value) of every sample but the ``_created`` timestamps."""
    return {(family.name, s.name, tuple(sorted(s.labels.items())), s.value)
            for family in text_string_to_metric_families(text.decode()) for s in family.samples
            if not s.name.endswith("_created")}


@settings(max_examples=50, deadline=None)
@given(rewards=st.lists(st.lists(st.floats(-1e6, 1e6), max_size=5), min_size=1, max_size=3),
       latencies=st.lists(st.floats(0, 20), max_size=5))
def test_the_merged_exposition_parses_and_keeps_every_series_once(rewards: list[list[float]],
                                                                   latencies: list[float]) -> None:
    executor = ExecutorMetrics(SeldonLabels("g", "p", "e"))
    arms = [ModelMetrics(SeldonLabels("g", "p", "e", f"arm-{i}", "", "v1")) for i in range(len(rewards))]
    for i, (arm, given_rewards) in enumerate(zip(arms, rewards, strict=True)):
        for reward in given_rewards:
            arm.model_feedback(reward)
        for seconds in latencies:
            arm.observe_model(200, seconds)
            arm.observe(f"arm-{i}", 200, seconds)  # in a family the executor has too: the executor's wins
            executor.client_request(arm.labels, "/predict", 200, seconds)
            executor.observe(f"arm-{i}", 200, seconds)
    own = samples(executor.exposition())
    own_families = {family.name for family in text_string_to_metric_families(executor.exposition().decode())}
    theirs = set().union(*(samples(arm.exposition()) for arm in arms))
    merged = samples(merge_expositions(executor.exposition(), [arm.exposition() for arm in arms]))
    assert merged == own | {sample for sample in theirs if sample[0] not in own_families}
    counts = {dict(labels)["model_name"]: value for _, name, labels, value in merged
              if name == "seldon_api_model_feedback_total"}
    assert counts == {f"arm-{i}": len(given_rewards) for i, given_rewards in enumerate(rewards)}
