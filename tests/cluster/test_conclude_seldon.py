"""``conclude`` moving the split of a Seldon experiment one ``ratio_schedule`` step, on the real
kube-apiserver with abflow's RBAC, as the pipeline's ServiceAccount (the fixture of
``test_seldon_through_the_step``); Seldon's operator is played by ``tests.cluster.seldon_operator_standin``.
The outcomes are a real ledger (the Prometheus path has its own tests)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from abflow.components.conclusion import MOVED, WAIT, WAITING, conclude_experiment
from abflow.components.decision import Rules
from abflow.components.deploy_targets import deploy_challenger
from abflow.components.experiment import LEDGER, PROMETHEUS, Experiment, read_experiment, update_experiment
from abflow.components.seldon_deploy import SplitNotMoved, move_split_seldon
from abflow.serving.ledger import OutcomeLedger
from tests.cluster.namespaces import Namespace
from tests.cluster.test_seldon_through_the_step import seldon  # noqa: F401 - the fixture

V1, V2 = "gs://bucket/abflow/models/iris/v1", "gs://bucket/abflow/models/iris/v2"


def router_of(stored: dict[str, Any] | None) -> dict[str, Any]:
    assert stored is not None
    graph: dict[str, Any] = stored["spec"]["predictors"][0]["graph"]
    return graph


def start(root: str, namespace: Namespace) -> Experiment:
    deployed = deploy_challenger(
        "seldon", artifact_root=root, model_name="iris", champion_version="v1", challenger_version="v2",
        model_a_uri=V1, model_b_uri=V2, ratio_a=0.5, ratio_schedule="0.8,0.5", image="", namespace=namespace.name,
        name="iris-ab", local_state_dir="unused", local_port=0, prometheus_url="http://127.0.0.1:9", run_id="run-2")
    assert deployed.experiment is not None
    return deployed.experiment


def test_an_undecided_experiment_with_guardrails_passed_moves_its_split(seldon: Namespace, tmp_path: Path) -> None:  # noqa: F811
    root = str(tmp_path / "store")
    experiment = start(root, seldon)
    assert router_of(seldon.stored())["parameters"][0] == {"name": "ratioA", "value": "0.8", "type": "FLOAT"}
    assert experiment.outcomes == (f"{PROMETHEUS}http://127.0.0.1:9",)
    ledger = tmp_path / "outcomes.sqlite"
    update_experiment(root, "iris", experiment.id, lambda stored: replace(stored, outcomes=(f"{LEDGER}{ledger}",)))
    with OutcomeLedger(ledger) as writer:
        for arm, requests in (("classifier-1", 400), ("classifier-2", 100)):
            for _ in range(requests):
                writer.record_request(experiment.id, arm, 200, 0.002)

    moved = conclude_experiment(root, "iris", on_undecided=WAIT, rules=Rules(), run_id="run-3",
                                local_state_dir="unused", namespace=seldon.name)

    assert moved.action == MOVED and not moved.proceed
    stored = seldon.stored()
    assert router_of(stored)["parameters"][0] == {"name": "ratioA", "value": "0.5", "type": "FLOAT"}
    assert stored is not None and stored["spec"]["predictors"][0]["labels"]["version"] == experiment.id
    assert [child["modelUri"] for child in router_of(stored)["children"]] == [V1, V2]
    record = read_experiment(root, "iris", experiment.id)
    assert record.ratio_a == 0.5 and [step["ratio_a"] for step in record.traffic] == [0.8, 0.5]
    assert record.outcomes == (f"{LEDGER}{ledger}",), "the same source: Prometheus sees every split"

    at_the_end = conclude_experiment(root, "iris", on_undecided=WAIT, rules=Rules(), run_id="run-4",
                                     local_state_dir="unused", namespace=seldon.name)
    assert at_the_end.action == WAITING
    assert router_of(seldon.stored())["parameters"][0]["value"] == "0.5"


def test_the_split_of_another_experiments_deployment_is_left_alone(seldon: Namespace, tmp_path: Path) -> None:  # noqa: F811
    experiment = start(str(tmp_path / "store"), seldon)
    with pytest.raises(SplitNotMoved, match=f"serves experiment {experiment.id}, not iris-other: its split is left"):
        move_split_seldon(name="iris-ab", namespace=seldon.name, ratio_a=0.5, experiment_id="iris-other")
    with pytest.raises(SplitNotMoved, match="does not exist any more"):
        move_split_seldon(name="iris-gone", namespace=seldon.name, ratio_a=0.5, experiment_id=experiment.id)
    assert router_of(seldon.stored())["parameters"][0]["value"] == "0.8"
