"""One entry point for the deploy-ab and smoke-test steps, whatever the target.

The pipeline passes ``target`` as a run-time parameter, so the same compiled DAG deploys to the
local executor on a laptop or to Seldon Core on a cluster. The deployment record travels between the
steps as JSON (a pipeline parameter), and it names its own target, so rollback needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from abflow.components import deployment

TARGETS = ("local", "seldon")


class DeployedRecord(Protocol):
    """What every target's deploy returns: where the endpoint is, and how to serialise itself."""

    @property
    def endpoint(self) -> str: ...

    def to_json(self) -> str: ...


def deploy(
    target: str,
    *,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    image: str,
    namespace: str,
    name: str,
    local_state_dir: str,
    local_port: int,
) -> DeployedRecord:
    """Deploy the A/B graph to ``target`` and return its record (previous deployment included)."""
    if target == "local":
        return deployment.deploy_local(
            model_a_uri=model_a_uri,
            model_b_uri=model_b_uri,
            ratio_a=ratio_a,
            state_root=Path(local_state_dir),
            port=local_port,
            name=name,
        )
    if target == "seldon":
        from abflow.components.seldon_deploy import deploy_ab_seldon

        return deploy_ab_seldon(
            name=name,
            model_a_uri=model_a_uri,
            model_b_uri=model_b_uri,
            ratio_a=ratio_a,
            image=image,
            namespace=namespace,
        )
    raise ValueError(f"unknown deploy target {target!r}: use one of {', '.join(TARGETS)}")


def rollback(record_json: str) -> str:
    """Undo the deployment described by ``record_json``; returns what serves now, in words."""
    target = json.loads(record_json).get("target")
    if target == "local":
        record = deployment.DeploymentRecord.from_json(record_json)
        restored = deployment.rollback_local(Path(record.state_root), expected_release=record.release)
        return f"release {restored.release} at {restored.endpoint}" if restored else "nothing (endpoint stopped)"
    if target == "seldon":
        from abflow.components.seldon_deploy import DeploymentRecord, rollback_seldon

        seldon_record = DeploymentRecord.from_json(record_json)
        rollback_seldon(seldon_record)
        where = f"SeldonDeployment {seldon_record.namespace}/{seldon_record.name}"
        return f"the previous spec of {where}" if seldon_record.previous else f"nothing ({where} deleted)"
    raise ValueError(f"cannot roll back a deployment record of target {target!r}")
