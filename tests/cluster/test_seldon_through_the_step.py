"""deploy-ab and smoke-test's rollback for target ``seldon``, through the same calls the pipeline
steps make (``abflow.components.deploy_targets``), with the client configured from a kubeconfig file as on
a workstation.

Stand-ins (no Kubernetes API server or Seldon operator can run here): kmock's KubernetesEmulator on
127.0.0.1 replaces the API server, ``SeldonOperatorStandIn`` replaces Seldon Core's operator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import pytest_asyncio
import yaml

from abflow.components.deploy_targets import deploy, rollback
from tests.cluster.kube_standin import SELDON_RESOURCE, Cluster, SeldonOperatorStandIn, seldon_cluster

NAMESPACE = "models"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    async with seldon_cluster() as running:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": running.url}}],
            "users": [{"name": "pipeline", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "pipeline"}}],
            "current-context": "standin",
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(path))
        async with SeldonOperatorStandIn(running.url, NAMESPACE, healthy=lambda _: True).running():
            yield running


@pytest.mark.asyncio
async def test_step_deploys_with_routing_injection_and_rolls_back_a_first_deploy(cluster: Cluster) -> None:
    record = await asyncio.to_thread(
        deploy,
        "seldon",
        model_a_uri="gs://bucket/abflow/models/iris/v1",
        model_b_uri="gs://bucket/abflow/models/iris/v2",
        ratio_a=0.3,
        image="",
        namespace=NAMESPACE,
        name="iris-ab",
        local_state_dir="unused",
        local_port=0,
    )
    assert record.endpoint.endswith("/api/v1.0/predictions") or "iris-ab" in record.endpoint
    assert json.loads(record.to_json())["target"] == "seldon"
    key = (kmock.resource(SELDON_RESOURCE), NAMESPACE, "iris-ab")
    predictor = cluster.api.objects[key].raw["spec"]["predictors"][0]
    assert {"name": "SELDON_ENABLE_ROUTING_INJECTION", "value": "true"} in predictor["svcOrchSpec"]["env"]
    assert predictor["graph"]["parameters"][0]["value"] == "0.3"
    assert [c["implementation"] for c in predictor["graph"]["children"]] == ["SKLEARN_SERVER"] * 2

    said = await asyncio.to_thread(rollback, record.to_json())
    assert said == f"nothing (SeldonDeployment {NAMESPACE}/iris-ab deleted)"
    assert cluster.api.objects[key].deleted
