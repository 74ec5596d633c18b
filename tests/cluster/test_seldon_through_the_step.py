"""deploy-ab and smoke-test's rollback for target ``seldon``, through the same calls the pipeline
steps make (``abflow.components.deploy_targets``), with the client configured from a kubeconfig file
as on a workstation: the pipeline's ServiceAccount token, against the real kube-apiserver, with the
checked-in ``manifests/rbac/`` applied as they are (namespace ``seldon``, runner in ``kubeflow``).
Seldon's operator is played by ``tests.cluster.seldon_operator_standin``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from abflow.components.deploy_targets import deploy, rollback
from tests.cluster.namespaces import Namespace, Runner, new_namespace
from tests.cluster.seldon_operator_standin import SeldonOperatorStandIn
from tests.fixtures.control_plane import ControlPlane

RBAC = Path(__file__).resolve().parents[2] / "manifests" / "rbac"


@pytest.fixture
def seldon(control_plane: ControlPlane, runner: Runner, operator: SeldonOperatorStandIn,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Namespace]:  # fmt: skip
    namespace = new_namespace(control_plane, runner, operator, "seldon")
    namespace.grant([yaml.safe_load(path.read_text()) for path in sorted(RBAC.glob("*.yaml"))])
    monkeypatch.setenv("KUBECONFIG", str(runner.kubeconfig))
    yield namespace
    namespace.clear()


def test_step_deploys_with_routing_injection_and_rolls_back_a_first_deploy(seldon: Namespace) -> None:
    record = deploy(
        "seldon",
        model_a_uri="gs://bucket/abflow/models/iris/v1",
        model_b_uri="gs://bucket/abflow/models/iris/v2",
        ratio_a=0.3,
        image="",
        namespace=seldon.name,
        name="iris-ab",
        local_state_dir="unused",
        local_port=0,
    )
    assert record.endpoint == "http://iris-ab-default.seldon:8000/api/v1.0/predictions"
    assert json.loads(record.to_json())["target"] == "seldon"
    stored = seldon.stored()
    assert stored is not None
    predictor = stored["spec"]["predictors"][0]
    assert {"name": "SELDON_ENABLE_ROUTING_INJECTION", "value": "true"} in predictor["svcOrchSpec"]["env"]
    assert predictor["graph"]["parameters"][0]["value"] == "0.3"
    assert [c["implementation"] for c in predictor["graph"]["children"]] == ["SKLEARN_SERVER"] * 2

    said = rollback(record.to_json())
    assert said == f"nothing (SeldonDeployment {seldon.name}/iris-ab deleted)"
    assert seldon.stored() is None
