"""The cluster tests' fixtures on the real control plane of the run (``tests.fixtures.control_plane``):
the pipeline's runner, the Seldon operator stand-in (it watches every namespace but reconciles only
those a test registered a scenario for) and a fresh namespace per test with abflow's RBAC enforced.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from abflow.components.seldon_manifests import DEFAULT_SERVICE_ACCOUNT
from tests.cluster.namespaces import RUNNER_NAMESPACE, Namespace, Runner, new_namespace
from tests.cluster.seldon_operator_standin import SeldonOperatorStandIn
from tests.fixtures.control_plane import ControlPlane


@pytest.fixture(scope="session")
def runner(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """The checked-in ``manifests/rbac/serviceaccount.yaml``, applied, and a token for it."""
    repo = Path(__file__).resolve().parents[2]
    service_account = yaml.safe_load((repo / "manifests" / "rbac" / "serviceaccount.yaml").read_text())
    control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RUNNER_NAMESPACE}},
                         service_account])  # fmt: skip
    kubeconfig = tmp_path_factory.mktemp("runner") / "kubeconfig"
    control_plane.service_account_kubeconfig(kubeconfig, RUNNER_NAMESPACE, DEFAULT_SERVICE_ACCOUNT)
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    return Runner(token=token, kubeconfig=kubeconfig)


@pytest.fixture(scope="session")
def operator(control_plane: ControlPlane) -> Iterator[SeldonOperatorStandIn]:
    with SeldonOperatorStandIn(control_plane).running() as running:
        yield running


@pytest.fixture
def namespace(control_plane: ControlPlane, runner: Runner, operator: SeldonOperatorStandIn) -> Namespace:
    """A fresh namespace with abflow's rendered Role and RoleBinding, enforced."""
    created = new_namespace(control_plane, runner, operator, f"models-{uuid.uuid4().hex[:8]}")
    created.grant(created.rbac())
    return created
