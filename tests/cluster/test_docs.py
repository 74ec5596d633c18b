"""Every ``abflow`` command in docs/cluster.md, run in order as a reader would paste it.

Stand-ins: ``tests/cluster/kfp_standin.py`` replaces the Kubeflow Pipelines API server (v2beta1 REST
on 127.0.0.1) that ``KF_PIPELINES_ENDPOINT`` points at; ``abflow images push`` runs a recording
``buildah`` stub and asks a registry stand-in (a function that has no tag) instead of the doc's
registry, which no test may reach; ``kubectl``/``helm`` lines need a cluster and are not run. Shell
variables are filled from the doc's own settings.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from abflow.components import imaging
from abflow.components.imaging import image_refs
from abflow.pipelines.cli import main
from tests.cluster.kfp_standin import API, kfp_standin

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
SETTINGS = {
    "BUCKET": "my-abflow-bucket",
    "REGISTRY": "europe-docker.pkg.dev/my-project/abflow",
    "SERVING_TAG": "3f2a9c0d1e2f",
}


def abflow_commands(markdown: str) -> list[list[str]]:
    """The doc's ``abflow`` command lines (continuations joined, pipes cut), as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("abflow "):
                command = line.split(" | ")[0]
                commands.append(shlex.split(os.path.expandvars(command))[1:])
    return commands


def test_every_abflow_command_in_the_cluster_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    builds = tmp_path / "builds"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("buildah", "docker"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {builds}\n')
        (stubs / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    asked: list[str] = []
    monkeypatch.setattr(imaging, "registry_has_tag", lambda ref, **_: asked.append(ref) or False)
    commands = abflow_commands(DOC.read_text())
    assert [argv[0] for argv in commands] == [
        "render", "render", "images", "compile", "submit", "schedule", "render"
    ]  # fmt: skip
    with kfp_standin() as (host, state):
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        state.run_script = ["SUCCEEDED"]
        for argv in commands:
            assert main(argv) == 0, argv
    refs = image_refs(SETTINGS["REGISTRY"])
    assert asked[0] == refs.components and asked[1].startswith(f"{refs.serving_repo}:")
    pushes = [line for line in builds.read_text().splitlines() if " push " in line]
    assert [line.split()[-1] for line in pushes] == [f"docker://{ref}" for ref in asked]
    compiled = yaml.safe_load((tmp_path / "iris_ab_pipeline.yaml").read_text())
    assert refs.components in {e["container"]["image"] for e in compiled["deploymentSpec"]["executors"].values()}
    (run,) = state.calls("POST", f"{API}/runs")
    assert run.body["runtime_config"]["parameters"]["ratio_a"] == 0.5
    assert run.body["service_account"] == "abflow-pipeline-runner"
    (recurring,) = state.calls("POST", f"{API}/recurringruns")
    assert recurring.body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}


def test_the_guide_matches_the_checked_in_rbac() -> None:
    role = yaml.safe_load((DOC.parents[1] / "manifests/rbac/role.yaml").read_text())
    text = DOC.read_text()
    for rule in role["rules"]:
        for resource in rule["resources"]:
            for verb in rule["verbs"]:
                assert f"`{verb}`" in text and f"`{resource}`" in text, (verb, resource)
