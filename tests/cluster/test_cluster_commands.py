"""``abflow images | render | submit | schedule`` through the real command line parser.

Stand-ins: ``tests/cluster/kfp_standin.py`` replaces the Kubeflow Pipelines API server (v2beta1 REST
on 127.0.0.1); ``abflow images`` drives a ``docker`` stub on PATH (no daemon can run here; the real
buildah build is tests/imaging/test_buildah.py). submit/schedule compile abflow's own pipeline, so the
parameter typing is checked against the real pipeline's declared types.
"""

from __future__ import annotations

import importlib.metadata
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from abflow.components.imaging import image_refs
from abflow.components.seldon_manifests import render_all
from abflow.pipelines.cli import main
from abflow.serving.graph import ab_graph
from tests.cluster.kfp_standin import API, KfpState, kfp_standin


@pytest.fixture
def kfp(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, KfpState]]:
    with kfp_standin() as (host, state):
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        yield host, state


def test_render_prints_what_deploy_applies(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["render", "--target", "seldon", "--model-a", "gs://b/m/v1", "--model-b", "gs://b/m/v2",
         "--ratio-a", "0.3", "--image", "reg/iris:1", "--namespace", "models"]
    )  # fmt: skip
    assert code == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    expected = render_all(
        ab_graph("iris-ab", "gs://b/m/v1", "gs://b/m/v2", 0.3), image="reg/iris:1", namespace="models"
    )
    assert documents == expected


def test_render_rejects_a_bad_ratio_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--model-a", "a", "--model-b", "b", "--ratio-a", "1.5"]) == 2
    assert "ratioA must be between 0 and 1, got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["render", "submit", "schedule"])
def test_help_shows_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"examples:\n  abflow {command}" in capsys.readouterr().out


REPO = "registry.example.com/ml"
ON_A_CLUSTER = ["--image-repo", REPO, "--param", "target=seldon", "--param", "artifact_root=gs://b/abflow",
                "--param", "builder=kaniko"]  # fmt: skip
CLUSTER_PARAMS = {"target": "seldon", "artifact_root": "gs://b/abflow", "builder": "kaniko"}


def test_submit_types_params_of_the_shipped_pipeline(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    host, state = kfp
    state.run_script = ["SUCCEEDED"]  # the first poll finds it done: no poll interval to wait out
    code = main(
        ["submit", *ON_A_CLUSTER, "--param", "ratio_a=0.3", "--param", "smoke_requests=200",
         "--service-account", "abflow-pipeline-runner", "--wait"]
    )  # fmt: skip
    assert code == 0
    (run,) = state.calls("POST", f"{API}/runs")
    assert run.body["runtime_config"]["parameters"] == {**CLUSTER_PARAMS, "ratio_a": 0.3, "smoke_requests": 200}
    (run_id,) = state.runs
    assert capsys.readouterr().out.splitlines() == [f"run {run_id}: SUCCEEDED", f"{host}/#/runs/details/{run_id}"]


def test_submit_wait_fails_when_the_run_fails(kfp: tuple) -> None:
    _, state = kfp
    state.run_script = ["FAILED"]
    assert main(["submit", *ON_A_CLUSTER, "--wait"]) == 1


def test_schedule_nightly_cron(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = kfp
    code = main(
        ["schedule", "--name", "iris-nightly", "--cron", "0 0 2 * * *", *ON_A_CLUSTER, "--param", "ratio_a=0.5"]
    )
    assert code == 0
    (created,) = state.calls("POST", f"{API}/recurringruns")
    assert created.body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert created.body["runtime_config"] == {"parameters": {**CLUSTER_PARAMS, "ratio_a": 0.5}}
    assert (created.body["max_concurrency"], created.body["no_catchup"]) == (1, True)
    assert "recurring run" in capsys.readouterr().out


def test_schedule_five_field_cron_fails_with_the_fix(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = kfp
    assert main(["schedule", "--name", "n", "--cron", "0 2 * * *"]) == 2
    assert "cron needs 6 fields (seconds first): '0 0 2 * * *' = 02:00 daily" in capsys.readouterr().err
    assert state.requests == []


def test_schedule_needs_cron_or_every() -> None:
    with pytest.raises(SystemExit) as done:
        main(["schedule", "--name", "n"])
    assert done.value.code == 2


def test_image_repo_compiles_the_pipeline_for_that_registry(kfp: tuple) -> None:
    """Nothing sent to a cluster names localhost: steps run the content-tagged components image, and
    the serving image's repository is the pipeline's image_repo default."""
    _, state = kfp
    assert main(["submit", *ON_A_CLUSTER]) == 0
    (run,) = state.calls("POST", f"{API}/runs")
    spec = run.body["pipeline_spec"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    refs = image_refs(REPO)
    assert refs.components in images
    assert refs.components.endswith(f":{importlib.metadata.version('abflow')}-{refs.components.rsplit('-', 1)[1]}")
    assert not any("localhost" in image for image in images)
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert declared["image_repo"]["defaultValue"] == f"{REPO}/iris-server"


def test_the_laptop_pipeline_is_refused_with_every_fix_and_nothing_sent(
    kfp: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    _, state = kfp
    assert main(["submit", "--param", "ratio_a=1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("abflow submit: this run would fail on the cluster:\n")
    for fix in ("--image-repo REGISTRY/PATH", "--param target=seldon", "--param artifact_root=gs://BUCKET/PREFIX",
                "--param builder=kaniko", "ratio_a must be between 0 and 1, got 1.5"):  # fmt: skip
        assert fix in err, fix
    assert state.requests == []


@pytest.mark.parametrize("repo", ["localhost:5000/abflow", "127.0.0.1:5000/ml"])
def test_a_laptop_registry_is_refused_as_image_repo(repo: str, kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, state = kfp
    assert main(["schedule", "--name", "n", "--every", "24h", "--image-repo", repo]) == 2
    assert f"--image-repo {repo} is a registry on this machine, which no cluster node can pull from" in (
        capsys.readouterr().err
    )
    assert state.requests == []


def test_image_repo_and_a_yaml_of_ones_own_do_not_mix(kfp: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "my-pipeline.yaml", "--image-repo", REPO]) == 2
    assert "drop one of the two" in capsys.readouterr().err


def test_images_push_builds_and_pushes_both_content_tagged_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fixtures.processes import free_port

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    docker = bin_dir / "docker"
    docker.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit 0\n')
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    repo = f"127.0.0.1:{free_port()}/abflow"  # nothing listens: the "already pushed?" probe says no
    assert main(["images", "push", "--repo", repo, "--builder", "docker", "--insecure"]) == 0
    components, serving = capsys.readouterr().out.split()
    assert components == image_refs(repo).components
    assert serving.startswith(f"{repo}/iris-server:")
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["build", "push", "build", "push"]
    assert lines[1] == f"push {components}" and lines[3] == f"push {serving}"
