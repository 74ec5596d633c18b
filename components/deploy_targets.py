"""One entry point for the deploy-ab and smoke-test steps, whatever the target.

The pipeline passes ``target`` as a run-time parameter, so the same compiled DAG deploys to the
local executor on a laptop or to Seldon Core on a cluster. The deployment record travels between the
steps as JSON (a pipeline parameter), and it names its own target, so rollback needs nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from abflow.components import local_target
from abflow.components.experiment import (
    CHALLENGER,
    CHAMPION,
    PROMETHEUS,
    Arm,
    Experiment,
    ledger_source,
    new_experiment_id,
    parse_ratio_schedule,
    start_experiment,
)
from abflow.serving.graph import AB_MODE, DEFAULT_ARM_NAMES, DEPLOY_MODES, SHADOW_MODE, mirror_percent

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
    experiment_id: str = "",
    shadow_fraction: float = 0.0,
) -> DeployedRecord:
    """Deploy the A/B graph to ``target`` and return its record (previous deployment included).
    ``experiment_id`` names the experiment the graph serves (empty: none); a ``shadow_fraction`` above
    0 deploys model B as a shadow of model A instead."""
    if target == "local":
        return local_target.deploy_local(
            model_a_uri=model_a_uri,
            model_b_uri=model_b_uri,
            ratio_a=ratio_a,
            state_root=Path(local_state_dir),
            port=local_port,
            name=name,
            experiment_id=experiment_id,
            shadow_fraction=shadow_fraction,
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
            experiment_id=experiment_id,
            shadow_fraction=shadow_fraction,
        )
    raise ValueError(f"unknown deploy target {target!r}: use one of {', '.join(TARGETS)}")


@dataclass(frozen=True)
class AbDeployment:
    """A deployed graph, the split it was deployed with, the experiment it started (``None`` when
    both arms serve the same version, a first deployment, or for a shadow, which no user sees), and
    how it was deployed (``mode``: ``ab`` or ``shadow``)."""

    record: DeployedRecord
    ratio_a: float
    experiment: Experiment | None
    mode: str = AB_MODE


def deploy_challenger(
    target: str,
    *,
    artifact_root: str,
    model_name: str,
    champion_version: str,
    challenger_version: str,
    model_a_uri: str,
    model_b_uri: str,
    ratio_a: float,
    ratio_schedule: str,
    image: str,
    namespace: str,
    name: str,
    local_state_dir: str,
    local_port: int,
    prometheus_url: str,
    run_id: str,
    mode: str = AB_MODE,
    shadow_fraction: float = 1.0,
) -> AbDeployment:
    """Deploy champion (arm A) against challenger (arm B) and, when they are different versions, record
    the experiment in the artifact store. With a ``ratio_schedule`` the experiment starts at its
    first step instead of ``ratio_a``.

    ``mode="shadow"`` deploys the challenger as a shadow of the champion instead, mirrored
    ``shadow_fraction`` of the traffic: no user sees its answers, so no experiment starts. Without a
    champion there is nothing to shadow, and the model is deployed as an A/B graph of itself."""
    if mode not in DEPLOY_MODES:
        raise ValueError(f"unknown deploy mode {mode!r}: use one of {', '.join(DEPLOY_MODES)}")
    schedule = parse_ratio_schedule(ratio_schedule)
    is_experiment = bool(champion_version) and champion_version != challenger_version
    if mode == SHADOW_MODE and is_experiment:
        mirror_percent(shadow_fraction)
        record = deploy(target, model_a_uri=model_a_uri, model_b_uri=model_b_uri, ratio_a=1.0, image=image,
                        namespace=namespace, name=name, local_state_dir=local_state_dir, local_port=local_port,
                        shadow_fraction=shadow_fraction)
        return AbDeployment(record, 1.0, None, SHADOW_MODE)
    experiment_id = new_experiment_id(model_name) if is_experiment else ""
    first_ratio = schedule[0] if is_experiment and schedule else ratio_a
    record = deploy(target, model_a_uri=model_a_uri, model_b_uri=model_b_uri, ratio_a=first_ratio, image=image,
                    namespace=namespace, name=name, local_state_dir=local_state_dir, local_port=local_port,
                    experiment_id=experiment_id)
    if not is_experiment:
        return AbDeployment(record, first_ratio, None)
    arms = (Arm(DEFAULT_ARM_NAMES[0], champion_version, model_a_uri, CHAMPION),
            Arm(DEFAULT_ARM_NAMES[1], challenger_version, model_b_uri, CHALLENGER))
    experiment = start_experiment(
        artifact_root, experiment_id=experiment_id, model_name=model_name, target=target, deployment_name=name,
        endpoint=record.endpoint, arms=arms, ratio_a=first_ratio,
        outcomes=outcome_source(target, record.to_json(), prometheus_url), run_id=run_id, ratio_schedule=schedule,
    )
    return AbDeployment(record, first_ratio, experiment)


def outcome_source(target: str, record_json: str, prometheus_url: str) -> str:
    """Where the deployed endpoint's per-arm outcomes are read: the local endpoint's ledger in its
    serving state directory, or a cluster's Prometheus."""
    if target == "local":
        return ledger_source(local_target.LocalRelease.from_json(record_json).serving_state_dir)
    return f"{PROMETHEUS}{prometheus_url}"


def rollback(record_json: str) -> str:
    """Undo the deployment described by ``record_json``; returns what serves now, in words."""
    target = json.loads(record_json).get("target")
    if target == "local":
        record = local_target.LocalRelease.from_json(record_json)
        restored = local_target.rollback_local(Path(record.state_root), expected_release=record.release)
        return f"release {restored.release} at {restored.endpoint}" if restored else "nothing (endpoint stopped)"
    if target == "seldon":
        from abflow.components.seldon_deploy import SeldonRelease, rollback_seldon

        seldon_record = SeldonRelease.from_json(record_json)
        rollback_seldon(seldon_record)
        where = f"SeldonDeployment {seldon_record.namespace}/{seldon_record.name}"
        return f"the previous spec of {where}" if seldon_record.previous else f"nothing ({where} deleted)"
    raise ValueError(f"cannot roll back a deployment record of target {target!r}")
