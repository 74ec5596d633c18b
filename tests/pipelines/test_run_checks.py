"""``abflow run`` refuses, before any step runs, every flag a step would refuse later: the message names
the flag and the fix, and the data folder stays empty (nothing trained, stored or deployed)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.local_target import deploy_local, port_in_use, stop_local
from abflow.pipelines.cli import main


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "abflow-data"


def refused(data_dir: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """Run ``abflow run`` in-process; assert it refused at once and left nothing behind; its stderr."""
    assert main(["run", "--data-dir", str(data_dir), *flags]) == 2
    assert not data_dir.exists(), f"a refused run wrote {sorted(p.name for p in data_dir.iterdir())}"
    err = capsys.readouterr().err
    *problems, last = err.splitlines()
    assert problems and last == "abflow run: nothing ran and nothing was stored; see abflow run --help"
    return "\n".join(problems)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--min-accuracy", "2"), "--min-accuracy must be between 0 and 1, got 2.0: the held-out accuracy"),
        (("--local-port", "80000"), "--local-port must be between 1 and 65535, got 80000: a TCP port"),
        (("--local-port", "0"), "--local-port must be between 1 and 65535, got 0"),
        (("--builder", "podman"), "--builder must be one of none, auto, buildah, docker, kaniko, got 'podman'"),
        (("--builder", "kaniko"), "--builder kaniko runs in a cluster: use it with `abflow submit`"),
        (("--ratio-a", "1.5"), "--ratio-a must be between 0 and 1, got 1.5: it is the share of traffic arm A"),
        (("--ratio-a", "nan"), "--ratio-a must be between 0 and 1, got nan"),
        (("--ratio-schedule", "0.9,1.2"), "--ratio-schedule: ratio_schedule step 2 must be between 0 and 1, got 1.2"),
        (("--max-regression", "-0.1"), "--max-regression must be between 0 and 1, got -0.1"),
        (("--test-size", "0"), "--test-size must be between 0 and 1, exclusive, got 0.0"),
        (("--c", "0"), "--c must be greater than 0, got 0.0"),
        (("--max-iter", "0"), "--max-iter must be at least 1, got 0"),
        (("--seed", "-1"), "--seed must be between 0 and 4.29497e+09, got -1"),
        (("--smoke-requests", "0"), "--smoke-requests must be at least 1, got 0"),
        (("--p99-budget-ms", "0"), "--p99-budget-ms must be greater than 0, got 0.0"),
        (("--alpha", "1"), "--alpha must be between 0 and 1, exclusive, got 1.0"),
        (("--min-feedback", "1"), "--min-feedback must be at least 2, got 1"),
        (("--max-duration-hours", "-1"), "--max-duration-hours must be at least 0, got -1.0"),
        (("--on-undecided", "later"), "--on-undecided must be one of wait, replace, got 'later'"),
        (("--target", "kserve"), "--target must be one of local, seldon, got 'kserve'"),
        (("--model-name", "Iris"), "--model-name: model name 'Iris' must be 1-63 lower-case letters"),
        (("--image-repo", "localhost:5000/iris:v1"), "--image-repo: image_repo must be a repository without tag"),
        (("--data-uri", "no-such.csv"), "--data-uri no-such.csv: no such file here; pass a CSV path"),
        (("--data-uri", "file:///no/such.csv"), "--data-uri file:///no/such.csv: no such file here"),
    ],
)
def test_a_bad_flag_fails_at_once_naming_the_flag(data_dir: Path, capsys: pytest.CaptureFixture[str],
                                                  flags: tuple[str, ...], message: str) -> None:
    assert message in refused(data_dir, capsys, *flags)


def test_a_csv_that_exists_passes(tmp_path: Path) -> None:
    from abflow.pipelines.parameters import machine_problems

    csv = tmp_path / "iris.csv"
    csv.write_text("sepallengthcm,sepalwidthcm,petallengthcm,petalwidthcm,species\n5.1,3.5,1.4,0.2,setosa\n")
    for uri in (str(csv), csv.as_uri()):
        assert machine_problems({"data_uri": uri, "builder": "none", "target": "seldon"}) == []


def test_every_problem_is_reported_at_once(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(data_dir, capsys, "--min-accuracy", "2", "--ratio-a", "-1", "--local-port", "80000")
    assert sorted(line.split(" ", 3)[2] for line in err.splitlines()) == ["--local-port", "--min-accuracy",
                                                                          "--ratio-a"]


def test_a_builder_that_is_not_installed_fails_at_once(data_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    err = refused(data_dir, capsys, "--builder", "buildah")
    assert "--builder buildah cannot run here: buildah is not installed (not on PATH)" in err
    assert "--builder none" in err


def test_docker_without_a_daemon_fails_at_once(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A docker client whose daemon does not answer (here: one that fails every command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    err = refused(data_dir, capsys, "--builder", "docker")
    assert "--builder docker cannot run here: no docker daemon answers `docker info`" in err


def test_a_port_held_by_another_program_fails_at_once_naming_local_port(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        err = refused(data_dir, capsys, "--local-port", str(port))
    assert f"--local-port {port}: port {port} on 127.0.0.1 is in use by another program" in err
    assert "pick a free port with --local-port N" in err
    assert "--port " not in err


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    yield root
    stop_local(root)


def test_the_port_of_the_endpoint_a_run_replaces_is_not_in_use(state_root: Path, iris_model_dir: Path) -> None:
    """A new run replaces its own endpoint on the same port: that holder is expected, any other is not."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert port_in_use(state_root, port) is None
    deploy_local(model_a_uri=str(iris_model_dir), model_b_uri=str(iris_model_dir), ratio_a=1.0,
                 state_root=state_root, port=port)
    assert port_in_use(state_root, port) is None
    held = port_in_use(state_root.parent / "another-state-root", port)
    assert held is not None and f"port {port} on 127.0.0.1 is in use by another program" in held
    stop_local(state_root)
    in_use_by_nobody = port_in_use(state_root, port)
    assert in_use_by_nobody is None
