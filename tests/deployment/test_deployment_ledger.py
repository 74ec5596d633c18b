"""The local deploy target's endpoint records its experiment's outcomes where the experiment record
says they are: a real blue/green ``deploy_local`` of one experiment, twice, read back through
``outcome_source``."""

from __future__ import annotations

from pathlib import Path

import requests

from abflow.components.deploy_targets import outcome_source
from abflow.components.experiment import LEDGER
from abflow.components.local_target import LocalRelease, deploy_local, stop_local
from abflow.serving.ledger import read_outcomes
from tests.fixtures.processes import free_port
from tests.fixtures.serving import TUTORIAL_PAYLOAD

EXPERIMENT = "iris-20261203-180000-abc123"


def traffic(record: LocalRelease, count: int) -> dict[str, int]:
    """``count`` predictions, each with feedback as Seldon's client sends a 0 (no reward key), by arm."""
    served = {name: 0 for name in record.arm_names}
    with requests.Session() as session:
        for _ in range(count):
            prediction = session.post(f"{record.endpoint}/api/v1.0/predictions", json=TUTORIAL_PAYLOAD, timeout=30)
            assert prediction.status_code == 200, prediction.text
            answer = prediction.json()
            assert session.post(f"{record.endpoint}/api/v1.0/feedback", json={"response": answer},
                                timeout=30).status_code == 200
            served[record.arm_names[answer["meta"]["routing"][record.router_name]]] += 1
    return served


def ledger_path(record: LocalRelease) -> Path:
    source = outcome_source("local", record.to_json(), "")
    assert source.startswith(LEDGER)
    return Path(source[len(LEDGER):])


def test_each_release_of_an_experiment_records_its_outcomes_where_its_record_says(
        tmp_path: Path, iris_model_dir: Path, iris_model_dir_b: Path) -> None:
    state_root = tmp_path / "local"
    port = free_port()

    def deploy(ratio_a: float) -> LocalRelease:
        return deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir_b), ratio_a=ratio_a,
                            state_root=state_root, port=port, experiment_id=EXPERIMENT)

    try:
        first = deploy(0.5)
        sent_first = traffic(first, 30)
        second = deploy(0.8)  # the split moved: a blue/green replace of the same experiment
        sent_second = traffic(second, 20)
    finally:
        stop_local(state_root)
    assert second.experiment_id == EXPERIMENT and ledger_path(first) != ledger_path(second)
    for record, sent in ((first, sent_first), (second, sent_second)):
        outcomes = read_outcomes(ledger_path(record), EXPERIMENT)
        assert {arm: (o.requests, o.feedback, o.reward_sum) for arm, o in outcomes.items()} == {
            arm: (count, count, 0.0) for arm, count in sent.items() if count}
