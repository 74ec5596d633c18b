"""What ``abflow submit``/``schedule`` refuse before sending, each with the parameter and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from abflow.pipelines.cluster_checks import cluster_problems

REGISTRY_IMAGES = ["registry.example.com/ml/abflow-components:0.1.0-3f2a9c0d1e2f"]
GOOD: dict[str, Any] = {
    "ratio_a": 0.5,
    "min_accuracy": 0.9,
    "max_regression": 0.02,
    "c": 1.0,
    "max_iter": 200,
    "test_size": 0.25,
    "artifact_root": "gs://bucket/abflow",
    "image_repo": "registry.example.com/ml/iris-server",
    "builder": "kaniko",
    "target": "seldon",
    "namespace": "seldon",
    "deployment_name": "iris-ab",
    "service_account": "abflow-model-reader",
    "smoke_requests": 200,
    "p99_budget_ms": 500.0,
}


def test_a_run_that_can_work_on_a_cluster_passes() -> None:
    assert cluster_problems(GOOD, REGISTRY_IMAGES) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"target": "local"},
            "target=local: the local target serves from the deploy step's own pod, which is deleted when the step "
            "ends; use --param target=seldon",
        ),
        (
            {"artifact_root": "abflow-data"},
            "artifact_root=abflow-data is a folder inside each step's pod: the model the store step writes is gone "
            "before deploy runs, and model pods cannot read it; use --param artifact_root=gs://BUCKET/PREFIX",
        ),
        ({"builder": "buildah"}, "builder=buildah needs a container daemon or privileges"),
        ({"builder": "auto"}, "builder=auto needs a container daemon or privileges"),
        ({"builder": "none"}, "builder=none serves the arms with Seldon's SKLEARN_SERVER"),
        (
            {"image_repo": "localhost:5000/abflow/iris-server"},
            "image_repo=localhost:5000/abflow/iris-server is a registry on the machine that compiled the pipeline",
        ),
        ({"ratio_a": 1.5}, "ratio_a must be between 0 and 1, got 1.5"),
        ({"test_size": 1.0}, "test_size must be between 0 and 1, exclusive, got 1.0"),
        ({"smoke_requests": 0}, "smoke_requests must be at least 1, got 0"),
        ({"p99_budget_ms": 0.0}, "p99_budget_ms must be greater than 0, got 0.0"),
        ({"namespace": "Seldon_NS"}, "namespace='Seldon_NS' is not a Kubernetes name"),
        ({"deployment_name": "iris ab"}, "deployment_name='iris ab' is not a Kubernetes name"),
        ({"service_account": "Model Reader"}, "service_account='Model Reader' is not a Kubernetes service account"),
    ],
)
def test_each_problem_names_the_parameter_and_the_fix(change: dict[str, Any], expected: str) -> None:
    (problem,) = cluster_problems({**GOOD, **change}, REGISTRY_IMAGES)
    assert problem.startswith(expected)


def test_steps_on_a_laptop_registry_are_refused_once_per_image() -> None:
    images = ["localhost:5000/abflow/components:0.1.0"] * 7 + ["registry.example.com/kaniko:v1"]
    (problem,) = cluster_problems(GOOD, images)
    assert problem == (
        "the pipeline's steps run localhost:5000/abflow/components:0.1.0, a registry on the machine that compiled "
        "it, which no cluster node can pull from: abflow images push --repo REGISTRY/PATH, then pass "
        "--image-repo REGISTRY/PATH"
    )


def test_the_shipped_defaults_show_every_laptop_choice_at_once() -> None:
    laptop = {**GOOD, "target": "local", "artifact_root": "abflow-data", "builder": "none"}
    laptop["image_repo"] = "localhost:5000/abflow/iris-server"
    problems = cluster_problems(laptop, ["localhost:5000/abflow/components:0.1.0"])
    assert [p.split(" ", 1)[0] for p in problems] == [
        "the",
        "target=local:",
        "artifact_root=abflow-data",
        "builder=none",
        "image_repo=localhost:5000/abflow/iris-server",
    ]


def test_only_declared_parameters_are_checked() -> None:
    """A pipeline of one's own shares some parameters with abflow's, or none."""
    assert cluster_problems({"ratio_a": 0.3}, REGISTRY_IMAGES) == []
    assert cluster_problems({}, []) == []
