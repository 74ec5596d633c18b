"""The router server as Seldon's orchestrator drives it: real processes on 127.0.0.1, POST /route for
the child index, POST /send-feedback to learn, the learned state kept across a restart."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.fixtures.processes import free_port, http_ok, wait_until
from tests.fixtures.serving import TUTORIAL_PAYLOAD, serving_env


def node(implementation: str, parameters: list[dict[str, str]] | None = None) -> str:
    children = [{"name": name, "type": "MODEL"} for name in ("classifier-1", "classifier-2")]
    return json.dumps({"name": "bandit", "implementation": implementation, "parameters": parameters or [],
                       "children": children})


class RouterProcess:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"router-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "abflow.serving.routerserver", "--host", "127.0.0.1",
                                          "--port", str(self.port), *args], stdout=log, stderr=subprocess.STDOUT,
                                         env=serving_env())

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            return http_ok(f"{self.url}/ready")

        wait_until(ready, timeout=60, interval=0.05, what=f"{self.url}/ready")
        self.session = requests.Session()

    def route(self, payload: Any = None) -> int:
        response = self.session.post(f"{self.url}/route", json=TUTORIAL_PAYLOAD if payload is None else payload,
                                     timeout=10)
        assert response.status_code == 200, response.text
        (index,), = response.json()["data"]["ndarray"]
        return int(index)

    def feedback(self, index: int, reward: float) -> requests.Response:
        body: dict[str, Any] = {"request": TUTORIAL_PAYLOAD, "response": {"meta": {"routing": {"bandit": index}}}}
        if reward:
            body["reward"] = reward  # a reward of 0 arrives with no key, as Seldon's protobuf-JSON client sends it
        return self.session.post(f"{self.url}/send-feedback", json=body, timeout=10)

    def status(self) -> dict[str, Any]:
        report: dict[str, Any] = self.session.get(f"{self.url}/health/status", timeout=10).json()
        return report

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture
def routers(tmp_path: Path) -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    yield started
    for router in started:
        if router.proc.poll() is None:
            router.stop()


def test_a_thompson_router_learns_from_feedback_and_remembers_it_after_a_restart(
        tmp_path: Path, routers: list[RouterProcess]) -> None:
    args = ("--node", node("THOMPSON_SAMPLING"), "--experiment", "iris-7", "--state-dir", str(tmp_path / "state"))
    routers.append(first := RouterProcess(tmp_path, *args))
    rewards = np.random.default_rng(7)
    rates = (0.2, 0.9)
    chosen = []
    for _ in range(300):
        index = first.route()
        assert first.feedback(index, float(rewards.random() < rates[index])).status_code == 200
        chosen.append(index)
    assert chosen[-100:].count(1) > 80
    learned = first.status()["arms"]
    assert sum(arm["feedback"] for arm in learned) == 300, "every feedback counts, a reward of 0 too"
    assert first.stop() == 0

    routers.append(second := RouterProcess(tmp_path, *args))

    def restored() -> list[dict[str, Any]] | None:
        arms: list[dict[str, Any]] = second.status()["arms"]
        return arms if [a["feedback"] for a in arms] == [a["feedback"] for a in learned] else None

    arms = wait_until(restored, timeout=30, what="the restarted router's state")
    assert [a["mean_reward"] for a in arms] == pytest.approx([a["mean_reward"] for a in learned])
    assert [second.route() for _ in range(100)].count(1) > 80, "a restart must not forget what was learned"


def test_feedback_the_router_cannot_use_is_refused_and_not_counted(tmp_path: Path,
                                                                  routers: list[RouterProcess]) -> None:
    routers.append(router := RouterProcess(tmp_path, "--node", node("THOMPSON_SAMPLING")))
    outside = router.feedback(0, 2.0)
    assert outside.status_code == 400 and "between 0 and 1" in outside.json()["status"]["info"]
    no_routing = router.session.post(f"{router.url}/send-feedback", json={"reward": 1.0}, timeout=10)
    assert no_routing.status_code == 400 and "'bandit'" in no_routing.json()["status"]["info"]
    assert [arm["feedback"] for arm in router.status()["arms"]] == [0, 0]


def test_a_sticky_router_server_routes_a_tagged_unit_the_same_way_every_time(tmp_path: Path,
                                                                           routers: list[RouterProcess]) -> None:
    sticky = node("RANDOM_ABTEST", [{"name": "ratioA", "value": "0.5", "type": "FLOAT"},
                                    {"name": "unit", "value": "tag:user", "type": "STRING"}])
    routers.append(router := RouterProcess(tmp_path, "--node", sticky, "--graph-name", "iris-ab"))
    for user in ("ada", "grace", "edsger"):
        tagged = {**TUTORIAL_PAYLOAD, "meta": {"tags": {"user": user}}}
        assert len({router.route(tagged) for _ in range(10)}) == 1
    assert {router.route() for _ in range(40)} == {0, 1}
    metrics = router.session.get(f"{router.url}/metrics", timeout=10).text
    assert 'abflow_sticky_fallbacks_total{router="bandit"} 40.0' in metrics


def test_a_node_that_is_not_a_router_is_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "abflow.serving.routerserver", "--node",
                           json.dumps({"name": "m", "type": "MODEL"})], capture_output=True, text=True,
                          env=serving_env(), timeout=60)
    assert done.returncode == 2 and "a router server needs a router node" in done.stderr
