"""The ``seldon`` target labels a deployment's metrics with the experiment it serves: Seldon's
orchestrator reads ``predictor_version`` from the predictor's ``version`` annotation, its model
containers from the predictor's ``version`` label (``PREDICTOR_LABELS``), and the Prometheus reader
selects an experiment's series by it."""

from __future__ import annotations

from typing import Any

import pytest

from abflow.components.seldon_manifests import render_seldon_deployment
from abflow.serving.graph import ab_graph
from tests.cluster.test_seldon_manifests import IMAGE, URI_A, URI_B, check_against_crd
from tests.cluster.test_seldon_manifests import crd_schemas as crd_schemas  # the module fixture, shared

EXPERIMENT = "iris-20261203-170000-abc123"


@pytest.mark.parametrize("image", [IMAGE, None], ids=["abflow-image", "sklearn-server"])
def test_the_experiment_is_the_predictors_version(image: str | None, crd_schemas: dict[str, Any]) -> None:
    manifest = render_seldon_deployment(ab_graph("iris-ab", URI_A, URI_B, 0.3), image=image, namespace="models",
                                        experiment_id=EXPERIMENT)
    check_against_crd(manifest, crd_schemas)
    for predictor in manifest["spec"]["predictors"]:
        assert predictor["annotations"]["version"] == EXPERIMENT
        assert predictor["labels"]["version"] == EXPERIMENT


def test_no_experiment_no_version() -> None:
    manifest = render_seldon_deployment(ab_graph("iris-ab", URI_A, URI_B, 0.3), image=IMAGE, namespace="models")
    for predictor in manifest["spec"]["predictors"]:
        assert "version" not in predictor.get("annotations", {})
        assert "version" not in predictor.get("labels", {})
