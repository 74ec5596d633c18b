"""The sticky unit of assignment in the graph: parsed from the router's ``unit`` parameter or ``--unit``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abflow.serving.graph import (
    GraphError,
    ab_graph,
    parse_graph,
    parse_unit,
    single_model_graph,
    to_seldon_deployment,
    with_unit,
)

TUTORIAL = Path(__file__).parent.parent / "data" / "tutorial"


def sticky_doc(unit: object, unit_type: object = "STRING") -> dict[str, Any]:
    document: dict[str, Any] = json.loads((TUTORIAL / "ab_test.json").read_text())
    document["spec"]["predictors"][0]["graph"]["parameters"].append({"name": "unit", "value": unit, "type": unit_type})
    return document


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("header:X-User-Id", ("header", "X-User-Id")), ("tag:user", ("tag", "user")), (" tag: user ", ("tag", "user"))],
)
def test_the_router_unit_parameter_names_a_header_or_a_tag(unit: str, expected: tuple[str, str]) -> None:
    router = parse_graph(sticky_doc(unit)).router
    assert router is not None and router.unit_source == expected and router.ratio_a == 0.5


@pytest.mark.parametrize("unit", ["user", "cookie:id", "header:", "tag: ", ":user", ""])
def test_a_unit_that_is_not_a_header_or_a_tag_is_refused_with_the_form(unit: str) -> None:
    with pytest.raises(GraphError, match="header:NAME or tag:KEY .*graph node 'random-ab-test'"):
        parse_graph(sticky_doc(unit))


@pytest.mark.parametrize(("unit", "unit_type"), [(7, "STRING"), ("tag:user", "INT")])
def test_the_unit_parameter_must_be_a_string(unit: object, unit_type: str) -> None:
    with pytest.raises(GraphError, match="must be a STRING"):
        parse_graph(sticky_doc(unit, unit_type))


def test_other_router_parameters_are_still_refused_and_the_message_names_unit() -> None:
    document = sticky_doc("tag:user")
    document["spec"]["predictors"][0]["graph"]["parameters"].append({"name": "seed", "value": "1", "type": "INT"})
    with pytest.raises(GraphError, match='does not take parameter \'seed\'.*"name":"unit"'):
        parse_graph(document)


@given(st.sampled_from(["header", "tag"]), st.text(alphabet="abcXYZ-_0123", min_size=1, max_size=20))
def test_a_sticky_graph_renders_and_parses_back_unchanged(kind: str, key: str) -> None:
    graph = ab_graph("iris", "gs://b/v1", "gs://b/v2", 0.3, unit=f"{kind}:{key}")
    assert parse_graph(copy.deepcopy(to_seldon_deployment(graph))) == graph
    assert parse_unit(f"{kind}:{key}") == (kind, key)


def test_with_unit_overrides_the_graph_and_needs_a_router() -> None:
    graph = parse_graph(sticky_doc("tag:user"))
    assert with_unit(graph, "header:X-User-Id").router.unit == "header:X-User-Id"  # type: ignore[union-attr]
    with pytest.raises(GraphError, match="--unit header:X needs a graph with a router"):
        with_unit(single_model_graph("one", "file:///m"), "header:X")
    with pytest.raises(GraphError, match="header:NAME or tag:KEY"):
        with_unit(graph, "user")
