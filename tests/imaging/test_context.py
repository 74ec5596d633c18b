"""Build contexts and their content tags, requirement pins, and builder resolution: no image is built.

Builder resolution and the docker path run against stub executables on PATH (docker cannot run
here); the real buildah build is in test_buildah.py.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abflow.components.imaging import (
    CONSTRAINTS_FILE,
    CONTAINERFILE,
    MODEL_RUNTIME_PACKAGES,
    REQUIREMENTS_FILE,
    SERVING_PACKAGES,
    ImageBuildError,
    build_image,
    context_digest,
    image_refs,
    is_local_registry,
    make_build_context,
    make_components_build_context,
    requirements_text,
    resolve_builder,
)
from abflow.components.oci_registry import registry_has_tag
from tests.fixtures.processes import free_port

REPO = "registry.example.com/ml/iris-server"


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.partition("==")
        assert sep and name and version, f"unpinned requirement line {line!r}"
        pins[name] = version
    return pins


def test_identical_contexts_get_the_same_tag(tmp_path: Path) -> None:
    first = make_build_context(tmp_path / "a")
    second = make_build_context(tmp_path / "b")
    assert first.tag == second.tag
    assert len(first.tag) == 12 and int(first.tag, 16) >= 0
    assert first.digest_inputs == second.digest_inputs


def test_tag_changes_with_base_image_versions_and_any_file(tmp_path: Path) -> None:
    base = make_build_context(tmp_path / "base")
    other_base = make_build_context(tmp_path / "slim-bookworm", base_image="python:3.11-slim-bookworm")
    older_sklearn = make_build_context(tmp_path / "old", versions={"sklearn": "1.5.2"})
    assert len({base.tag, other_base.tag, older_sklearn.tag}) == 3

    edited = tmp_path / "edited"
    shutil.copytree(base.path, edited)
    with (edited / "abflow" / "serving" / "artifact.py").open("a") as handle:
        handle.write("\n")
    assert context_digest(edited, base.base_image)[0][:12] != base.tag

    renamed = tmp_path / "renamed"
    shutil.copytree(base.path, renamed)
    (renamed / "abflow" / "serving" / "artifact.py").rename(renamed / "abflow" / "serving" / "artifact2.py")
    assert context_digest(renamed, base.base_image)[0][:12] != base.tag


def test_context_holds_only_what_the_image_needs(tmp_path: Path) -> None:
    context = make_build_context(tmp_path / "ctx")
    files = sorted(p.relative_to(context.path).as_posix() for p in context.path.rglob("*") if p.is_file())
    assert [f for f in files if "/" not in f] == [CONTAINERFILE, REQUIREMENTS_FILE]
    assert {"abflow/__init__.py", "abflow/serving/modelserver.py", "abflow/serving/artifact.py"} <= set(files)
    packaged = [f for f in files if "/" in f]
    assert all(f.startswith("abflow/serving/") or f == "abflow/__init__.py" for f in packaged)
    assert not any("__pycache__" in f for f in packaged)
    assert set(context.digest_inputs) == {*files, "BASE_IMAGE"}
    containerfile = (context.path / CONTAINERFILE).read_text()
    assert "FROM ${BASE_IMAGE}" in containerfile
    assert 'ENTRYPOINT ["python3", "-m", "abflow.serving.modelserver"]' in containerfile


def test_requirements_pin_the_installed_model_runtime_and_server_deps(tmp_path: Path) -> None:
    context = make_build_context(tmp_path / "ctx")
    pins = requirement_pins((context.path / REQUIREMENTS_FILE).read_text())
    assert set(pins) == {*MODEL_RUNTIME_PACKAGES, *SERVING_PACKAGES}
    for name, version in pins.items():
        assert version == importlib.metadata.version(name), name


def test_requirements_take_the_trainers_versions_from_model_metadata() -> None:
    trainer = {"python": "3.11.9", "sklearn": "1.5.2", "joblib": "1.4.2", "numpy": "1.26.4"}
    pins = requirement_pins(requirements_text(trainer))
    assert pins["scikit-learn"] == "1.5.2"
    assert pins["numpy"] == "1.26.4"
    assert pins["joblib"] == "1.4.2"
    assert pins["scipy"] == importlib.metadata.version("scipy"), "scipy is not in the metadata: keep ours"
    assert "python" not in pins and "sklearn" not in pins


@pytest.mark.parametrize("versions", [{"sklearn": "1.5.2\nevil==6.6.6"}, {"numpy": ""}, {"bad name": "1.0"}])
def test_versions_that_would_corrupt_requirements_are_refused(versions: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="pip distribution name and version"):
        requirements_text(versions)


def test_context_folder_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "leftover.txt").write_text("stale")
    with pytest.raises(FileExistsError, match="not empty"):
        make_build_context(tmp_path / "ctx")


def test_components_context_installs_abflow_with_pinned_dependencies(tmp_path: Path) -> None:
    context = make_components_build_context(tmp_path / "a")
    assert make_components_build_context(tmp_path / "b").tag == context.tag
    root = context.path
    assert (root / "pyproject.toml").is_file() and (root / "README.md").is_file()
    for module in ("serving/artifact.py", "components/imaging.py", "pipelines/cli.py", "serving/Containerfile"):
        assert (root / module).is_file(), module
    assert "pip install" in (root / CONTAINERFILE).read_text()
    pins = requirement_pins((root / CONSTRAINTS_FILE).read_text())
    assert pins["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert pins["kfp"] == importlib.metadata.version("kfp")
    assert not any("__pycache__" in p.parts for p in root.rglob("*"))


def test_components_context_needs_a_source_checkout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source checkout"):
        make_components_build_context(tmp_path / "ctx", repo_root=tmp_path)


def test_builder_none_records_the_context_and_tag(tmp_path: Path) -> None:
    context = make_build_context(tmp_path / "ctx")
    built = build_image(context, image_repo=REPO, builder="none")
    assert built.ref == f"{REPO}:{context.tag}"
    assert (built.tag, built.builder, built.context_path) == (context.tag, "none", context.path)
    assert not built.pushed and not built.skipped_existing


@pytest.mark.parametrize("repo", ["registry.example.com/ml/iris-server:v1", "iris@sha256:abc", ""])
def test_image_repo_must_not_carry_a_tag(tmp_path: Path, repo: str) -> None:
    context = make_build_context(tmp_path / "ctx")
    with pytest.raises(ValueError, match="without tag or digest"):
        build_image(context, image_repo=repo, builder="none")


def stub(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An otherwise empty PATH, so only the stubs a test writes exist as builders."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def test_auto_falls_back_to_none_without_builders(bin_dir: Path) -> None:
    assert resolve_builder("auto") == "none"


def test_auto_prefers_buildah(bin_dir: Path) -> None:
    stub(bin_dir, "docker", "exit 0")
    stub(bin_dir, "buildah", "exit 0")
    assert resolve_builder("auto") == "buildah"


def test_auto_uses_docker_only_when_its_daemon_answers(bin_dir: Path) -> None:
    stub(bin_dir, "docker", "exit 1")
    assert resolve_builder("auto") == "none"
    stub(bin_dir, "docker", '[ "$1" = info ] && exit 0; exit 1')
    assert resolve_builder("auto") == "docker"


def test_explicit_builder_must_be_installed_and_known(bin_dir: Path) -> None:
    with pytest.raises(ImageBuildError, match="not installed"):
        resolve_builder("buildah")
    with pytest.raises(ValueError, match="auto, buildah, docker, none"):
        resolve_builder("podman")


def test_docker_builds_and_pushes_the_content_tag(bin_dir: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    stub(bin_dir, "docker", f'echo "$*" >> {calls}; [ "$1 $2" = "image inspect" ] && exit 1; exit 0')
    context = make_build_context(tmp_path / "ctx", base_image="python:3.11-slim-bookworm")
    built = build_image(context, image_repo=REPO, builder="docker", push=False)
    ref = f"{REPO}:{context.tag}"
    assert calls.read_text().splitlines() == [
        f"image inspect {ref}",
        f"build --build-arg BASE_IMAGE=python:3.11-slim-bookworm -f {context.path}/Containerfile -t {ref} "
        f"{context.path}",
    ]
    assert (built.builder, built.pushed, built.skipped_existing) == ("docker", False, False)


def test_build_failure_shows_the_tools_output_and_what_to_do(bin_dir: Path, tmp_path: Path) -> None:
    stub(bin_dir, "docker", '[ "$1" = build ] || exit 1; echo "step 4: pip: No matching distribution" >&2; exit 7')
    context = make_build_context(tmp_path / "ctx")
    with pytest.raises(ImageBuildError) as failure:
        build_image(context, image_repo=REPO, builder="docker", push=False)
    message = str(failure.value)
    assert "exit 7" in message and "No matching distribution" in message
    assert "what to do:" in message and "base image's Python" in message


def test_an_unreachable_registry_means_build_it() -> None:
    assert registry_has_tag(f"127.0.0.1:{free_port()}/abflow/iris-server:abc", tls_verify=False) is False


def checkout_copy(dest: Path) -> Path:
    """The parts of this checkout a components context is made from, to edit without touching the real one."""
    repo = Path(__file__).resolve().parents[2]
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).is_file():
            shutil.copyfile(repo / name, dest / name)
    for package in ("abflow", "serving", "components", "pipelines"):
        shutil.copytree(repo / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_components_tag_is_the_package_version_and_the_code_hash(tmp_path: Path) -> None:
    """A moving ``0.1.0`` tag would run new step code (embedded in the compiled YAML) on an old image."""
    root = checkout_copy(tmp_path / "checkout")
    before = make_components_build_context(tmp_path / "a", repo_root=root)
    version, _, digest = before.tag.partition("-")
    assert version == importlib.metadata.version("abflow")
    assert len(digest) == 12 and int(digest, 16) >= 0

    with (root / "components" / "gating.py").open("a") as handle:
        handle.write("\n# a changed step\n")
    after = make_components_build_context(tmp_path / "b", repo_root=root)
    assert after.tag.startswith(f"{version}-") and after.tag != before.tag


def test_compiled_yaml_is_not_part_of_the_components_hash(tmp_path: Path) -> None:
    """The compiled pipeline names the components tag, so the tag cannot depend on it."""
    root = checkout_copy(tmp_path / "checkout")
    before = make_components_build_context(tmp_path / "a", repo_root=root)
    for compiled in (root / "pipelines" / "iris_ab_pipeline.yaml", *sorted((root / "components" / "yaml").glob("*"))):
        compiled.write_text(compiled.read_text() + "# recompiled for another registry\n")
    after = make_components_build_context(tmp_path / "b", repo_root=root)
    assert after.tag == before.tag
    assert not any(name.endswith(".yaml") for name in after.digest_inputs)


def test_image_refs_name_both_images_under_one_repo() -> None:
    refs = image_refs("registry.example.com/ml/")
    assert refs.serving_repo == "registry.example.com/ml/iris-server"
    repository, _, tag = refs.components.rpartition(":")
    assert repository == "registry.example.com/ml/abflow-components"
    assert tag.startswith(importlib.metadata.version("abflow") + "-")
    with pytest.raises(ValueError, match="without tag or digest"):
        image_refs("registry.example.com/ml:latest")


@pytest.mark.parametrize(
    ("ref", "local"),
    [
        ("localhost:5000/abflow/components:1", True),
        ("localhost/abflow", True),
        ("127.0.0.1:5000/x", True),
        ("[::1]:5000/x:tag", True),
        ("LOCALHOST:5000/x", True),
        ("registry.example.com/ml/iris", False),
        ("localhost.example.com/ml/iris", False),
        ("iris-server:1", False),
        ("library/python:3.11", False),
    ],
)
def test_local_registries_are_recognised(ref: str, local: bool) -> None:
    assert is_local_registry(ref) is local


@given(
    host=st.sampled_from(["localhost", "127.0.0.1", "[::1]"]),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.from_regex(r"[a-z0-9]+(/[a-z0-9-]+){0,3}", fullmatch=True),
    tag=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)),
)
def test_any_reference_to_this_machine_is_local(host: str, port: int | None, path: str, tag: str | None) -> None:
    ref = f"{host}{f':{port}' if port else ''}/{path}{f':{tag}' if tag else ''}"
    assert is_local_registry(ref)
    assert not is_local_registry(f"registry.{host.strip('[]').replace(':', '')}.example.com/{path}")
