"""The Kubeflow Pipelines backend's own Argo compiler accepts the YAML ``abflow compile`` writes.

Each test runs ``kfp-argo-compile`` (``tests/tools/kfp-compile``, built by
``scripts/build-kfp-compiler.sh``): KFP's ``argocompiler.Compile`` behind a main that parses the file as
the KFP API server parses an upload, strictly. What it prints is the Argo Workflow a KFP cluster would
run, so the tests check that every step of the IR and every ``dsl.If`` survives into it — the SDK's own
checks say nothing about what the backend makes of the YAML.

Which backend: the release ``tests/tools/kfp-compile/KFP_VERSION`` names (its go.mod says why it is that
one).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from abflow.pipelines.compiled import PIPELINE_YAML, REPO_ROOT
from abflow.pipelines.pipeline import STEP_NAMES

TOOL_DIR = REPO_ROOT / "tests" / "tools" / "kfp-compile"
BIN_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "abflow" / "bin"  # as the script
KFP_RELEASE = (TOOL_DIR / "KFP_VERSION").read_text().strip()


def compiler() -> Path:
    path = BIN_DIR / f"kfp-argo-compile-{KFP_RELEASE}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not built: run scripts/build-kfp-compiler.sh "
                                "(scripts/install-test-deps.sh does)")  # fmt: skip
    return path


def backend_compile(pipeline: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(compiler()), str(pipeline)], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    result = backend_compile(PIPELINE_YAML)
    assert result.returncode == 0, f"KFP {KFP_RELEASE}'s backend rejected {PIPELINE_YAML.name}:\n{result.stderr}"
    compiled: dict[str, Any] = yaml.safe_load(result.stdout)
    return compiled


@pytest.fixture(scope="module")
def ir() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(PIPELINE_YAML.read_text())
    return spec


def dags(ir: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every DAG of the IR by the name the backend gives its template: ``root`` and the sub-DAGs."""
    found = {"root": ir["root"]["dag"]["tasks"]}
    found.update({name: c["dag"]["tasks"] for name, c in ir["components"].items() if "dag" in c})
    return found


def dag_tasks(workflow: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return {t["name"]: {task["name"]: task for task in t["dag"]["tasks"]}
            for t in workflow["spec"]["templates"] if "dag" in t}  # fmt: skip


def stored_specs(workflow: dict[str, Any]) -> list[str]:
    """The component specs and container implementations the backend hands its driver. Where it keeps
    them moved between releases (workflow annotations, later workflow arguments): read both."""
    annotations = workflow["metadata"].get("annotations", {})
    arguments = workflow["spec"].get("arguments", {}).get("parameters", [])
    return [*annotations.values(), *(str(p.get("value", "")) for p in arguments)]


def test_the_backend_compiles_the_pipeline_into_an_argo_workflow(workflow: dict[str, Any]) -> None:
    assert workflow["apiVersion"] == "argoproj.io/v1alpha1"
    assert workflow["kind"] == "Workflow"
    assert workflow["metadata"]["generateName"] == "iris-ab-"
    names = {t["name"] for t in workflow["spec"]["templates"]}
    assert workflow["spec"]["entrypoint"] in names


def test_every_step_and_sub_dag_of_the_ir_is_a_task_of_the_workflow(
    ir: dict[str, Any], workflow: dict[str, Any]
) -> None:
    compiled = dag_tasks(workflow)
    for dag, tasks in dags(ir).items():
        assert dag in compiled, f"no template for the IR's DAG {dag}"
        for task in tasks:
            # Each IR task becomes a driver (resolves inputs, evaluates the condition) and the task itself.
            assert {task, f"{task}-driver"} <= set(compiled[dag]), f"{dag}: {task} is missing"
    steps = {task for tasks in compiled.values() for task in tasks}
    assert {*STEP_NAMES, "kaniko-build"} <= steps


def test_every_condition_gates_its_branch(ir: dict[str, Any], workflow: dict[str, Any]) -> None:
    compiled = dag_tasks(workflow)
    conditional = {(dag, name): task["triggerPolicy"]["condition"]
                   for dag, tasks in dags(ir).items() for name, task in tasks.items()
                   if task.get("triggerPolicy", {}).get("condition")}  # fmt: skip
    assert len(conditional) >= 3, "new-model-to-test, kaniko-build-needed and its else branch"
    for (dag, name), condition in conditional.items():
        branch, driver = compiled[dag][name], compiled[dag][f"{name}-driver"]
        # The driver evaluates the IR's CEL condition; Argo skips the branch when it says false.
        assert f"tasks.{name}-driver.outputs.parameters.condition" in branch.get("when", ""), (dag, name)
        task_spec = json.loads(next(p["value"] for p in driver["arguments"]["parameters"] if p["name"] == "task"))
        assert task_spec["triggerPolicy"]["condition"] == condition


def test_the_image_digest_reaches_deploy_ab_through_the_one_of(ir: dict[str, Any], workflow: dict[str, Any]) -> None:
    outputs = [c["dag"].get("outputs", {}).get("parameters", {}) for c in ir["components"].values() if "dag" in c]
    assert any("valueFromOneof" in o for params in outputs for o in params.values()), "the IR has no dsl.OneOf"
    specs = [json.loads(s) for s in stored_specs(workflow) if s.startswith("{")]
    one_ofs = [s for s in specs if "valueFromOneof" in json.dumps(s.get("dag", {}).get("outputs", {}))]
    assert one_ofs, "the OneOf did not survive into the spec the driver resolves"


def test_every_step_runs_the_image_and_command_the_ir_names(ir: dict[str, Any], workflow: dict[str, Any]) -> None:
    implementations = [spec for spec in (json.loads(s) for s in stored_specs(workflow) if s.startswith("{"))
                       if "image" in spec]  # fmt: skip
    compiled = {(i["image"], json.dumps(i.get("command", [])), json.dumps(i.get("args", []))) for i in implementations}
    assert len(implementations) >= len(ir["deploymentSpec"]["executors"])
    for name, executor in ir["deploymentSpec"]["executors"].items():
        c = executor["container"]
        assert (c["image"], json.dumps(c.get("command", [])), json.dumps(c.get("args", []))) in compiled, name


def test_the_backend_refuses_a_field_it_does_not_know(tmp_path: Path) -> None:
    """The tool parses as strictly as the API server: what it accepts is not accepted by default."""
    spec = yaml.safe_load(PIPELINE_YAML.read_text())
    first_task = next(iter(spec["root"]["dag"]["tasks"].values()))
    first_task["retryPolicyy"] = {"maxRetryCount": 1}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(spec))
    result = backend_compile(broken)
    assert result.returncode == 1
    assert "retryPolicyy" in result.stderr
