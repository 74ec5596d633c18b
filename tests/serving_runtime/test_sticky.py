"""Sticky assignment on real ``abflow serve`` processes: the same unit sees the same arm across
requests and restarts, units split by ratioA, requests without a unit fall back (counted), and the
route header pins a client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from scipy.stats import binomtest

from tests.fixtures.serving import TUTORIAL_PAYLOAD, ServedGraph, ab_graph_file, start_served_graph

ARMS = ("classifier-1", "classifier-2")


def served_arm(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    arm = ARMS[response.json()["meta"]["routing"]["random-ab-test"]]
    assert response.headers["x-seldon-route"] == f":{arm}:"
    return arm


def fallbacks(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    match = re.search(r'^abflow_sticky_fallbacks_total\{router="random-ab-test"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def as_user(served: ServedGraph, user: str) -> requests.Response:
    return served.post("/api/v1.0/predictions", json_body=TUTORIAL_PAYLOAD, headers={"X-User-Id": user})


@pytest.fixture
def models(iris_model_dir: Path, iris_model_dir_b: Path) -> dict[str, Path]:
    return {"classifier-1": iris_model_dir, "classifier-2": iris_model_dir_b}


def test_a_user_keeps_its_arm_across_requests_and_restarts_and_users_split_by_ratio(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    graph = ab_graph_file(tmp_path, "0.3")
    users = [f"user-{i}" for i in range(300)]

    def assignments() -> dict[str, str]:
        served = start_served_graph(graph, models, tmp_path, "--unit", "header:X-User-Id")
        try:
            seen = {user: served_arm(as_user(served, user)) for user in users}
            assert all(served_arm(as_user(served, user)) == seen[user] for user in users[:50])
            assert fallbacks(served.url) == 0
            return seen
        finally:
            assert served.stop() == 0

    first = assignments()
    share_a = sum(arm == "classifier-1" for arm in first.values())
    assert binomtest(share_a, len(users), 0.3).pvalue >= 0.001
    assert assignments() == first, "a restart must not reshuffle who sees which arm"


def test_a_tag_unit_from_the_graph_a_fallback_counted_and_a_pinned_client(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    graph = ab_graph_file(tmp_path, "0.5")
    document = graph.read_text().replace(
        '"type": "FLOAT"}', '"type": "FLOAT"}, {"name": "unit", "value": "tag:user", "type": "STRING"}', 1
    )
    assert "tag:user" in document
    graph.write_text(document)
    served = start_served_graph(graph, models, tmp_path)
    try:
        tagged = {**TUTORIAL_PAYLOAD, "meta": {"tags": {"user": "ada"}}}
        arms = {served_arm(served.predict(tagged)) for _ in range(20)}
        assert len(arms) == 1
        assert fallbacks(served.url) == 0
        untagged = [served_arm(served.predict()) for _ in range(40)]
        assert set(untagged) == set(ARMS)  # seeded nowhere: 40 coin flips all alike has odds 2e-12
        assert fallbacks(served.url) == 40
        (ada,) = arms
        other = ARMS[1 - ARMS.index(ada)]
        pinned = [
            served_arm(served.post("/api/v1.0/predictions", json_body=tagged, headers={"x-seldon-route": f":{other}:"}))
            for _ in range(10)
        ]
        assert pinned == [other] * 10, "the route header a client sends back wins over its unit"
    finally:
        assert served.stop() == 0
