"""The checked-in YAML must be exactly what the code compiles to, and be valid KFP IR."""

from pathlib import Path

import yaml

from abflow.components.kaniko import KANIKO_IMAGE
from abflow.pipelines.compiled import PIPELINE_YAML, REPO_ROOT, compile_pipeline, regenerate
from abflow.pipelines.pipeline import STEP_NAMES


def test_checked_in_yaml_is_current(tmp_path: Path) -> None:
    for fresh in regenerate(tmp_path):
        checked_in = REPO_ROOT / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run `abflow compile --regenerate`"
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in.relative_to(REPO_ROOT)} is stale: run `abflow compile --regenerate`"
        )


def test_pipeline_has_every_step_uncached_on_the_components_image(tmp_path: Path) -> None:
    output = compile_pipeline(tmp_path / "p.yaml", components_image="registry.example.com/abflow:1")
    spec = yaml.safe_load(output.read_text())
    tasks = dict(spec["root"]["dag"]["tasks"])
    for name, component in spec["components"].items():
        if name.startswith("comp-condition"):
            tasks.update(component["dag"]["tasks"])
    assert set(STEP_NAMES) | {"kaniko-build"} <= set(tasks)
    for name, task in tasks.items():
        assert not task.get("cachingOptions", {}).get("enableCache", False), f"{name} is cached"
    executors = spec["deploymentSpec"]["executors"]
    images = {executor["container"]["image"] for executor in executors.values()}
    assert images == {"registry.example.com/abflow:1", KANIKO_IMAGE}
    commands = " ".join(" ".join(executor["container"].get("command", [])) for executor in executors.values())
    assert "pip install" not in commands, "steps must not install packages when they start"


def test_every_knob_is_a_typed_parameter() -> None:
    spec = yaml.safe_load(PIPELINE_YAML.read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["ratio_a"] == {"defaultValue": 0.5, "isOptional": True, "parameterType": "NUMBER_DOUBLE"}
    assert parameters["smoke_requests"]["parameterType"] == "NUMBER_INTEGER"
    assert parameters["target"]["defaultValue"] == "local"
    assert parameters["builder"]["defaultValue"] == "none"
