"""Every ``abflow`` command in docs/cluster.md, run in order as a reader would paste it.

Stand-in: ``tests/cluster/kfp_standin.py`` replaces the Kubeflow Pipelines API server (v2beta1 REST
on 127.0.0.1) that ``KF_PIPELINES_ENDPOINT`` points at; ``kubectl``/``helm``/``buildah`` lines need a
cluster or registry and are not run. Shell variables are filled from the doc's own settings.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from abflow.pipelines.cli import main
from tests.cluster.kfp_standin import API, kfp_standin

DOC = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"
SETTINGS = {
    "BUCKET": "my-abflow-bucket",
    "REGISTRY": "europe-docker.pkg.dev/my-project/abflow",
    "COMPONENTS_IMAGE": "europe-docker.pkg.dev/my-project/abflow/abflow-components:0.1.0",
    "SERVING_REPO": "europe-docker.pkg.dev/my-project/abflow/iris-server",
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
    commands = abflow_commands(DOC.read_text())
    assert [argv[0] for argv in commands] == ["render", "render", "compile", "submit", "schedule", "render"]
    with kfp_standin() as (host, state):
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        state.run_script = ["SUCCEEDED"]
        for argv in commands:
            assert main(argv) == 0, argv
    assert (tmp_path / "iris_ab_pipeline.yaml").is_file()
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
