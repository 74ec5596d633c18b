"""The in-cluster image build: kaniko's compiled KFP spec and the build-context upload.

Stand-ins: fake-gcs-server on 127.0.0.1 (``gcs_root`` fixture) replaces Google Cloud Storage; no
kaniko runs here (it needs a cluster), so its half is checked as compiled KFP IR — the exact
container, command and arguments a KFP backend would start.
"""

import io
import os
import tarfile
from pathlib import Path

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from abflow.components.imaging import BuildContext, make_build_context
from abflow.components.kaniko import (
    KANIKO_IMAGE,
    kaniko_build,
    pack_build_context,
    upload_build_context,
    use_registry_secret,
)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> BuildContext:
    return make_build_context(tmp_path_factory.mktemp("ctx") / "context")


def test_compiled_component_runs_the_kaniko_executor(tmp_path: Path) -> None:
    path = tmp_path / "kaniko.yaml"
    compiler.Compiler().compile(kaniko_build, str(path))
    spec = yaml.safe_load(path.read_text())
    container = spec["deploymentSpec"]["executors"]["exec-kaniko-build"]["container"]
    assert container == {
        "image": KANIKO_IMAGE,
        "command": ["/kaniko/executor"],
        "args": [
            "--context",
            "{{$.inputs.parameters['context_uri']}}",
            "--dockerfile",
            "Containerfile",
            "--destination",
            "{{$.inputs.parameters['image']}}",
            "--cache=true",
            "--digest-file",
            "{{$.outputs.parameters['digest'].output_file}}",
        ],
    }
    outputs = spec["components"]["comp-kaniko-build"]["outputDefinitions"]["parameters"]
    assert outputs["digest"]["parameterType"] == "STRING"


def test_a_pipeline_using_it_is_valid_ir(tmp_path: Path) -> None:
    @dsl.pipeline(name="build-serving-image")
    def build(context_uri: str, image: str) -> str:
        return kaniko_build(context_uri=context_uri, image=image).outputs["digest"]

    path = tmp_path / "build.yaml"
    compiler.Compiler().compile(build, str(path))
    parsed = json_format.ParseDict(yaml.safe_load(path.read_text()), pipeline_spec_pb2.PipelineSpec())
    assert parsed.root.dag.tasks["kaniko-build"].component_ref.name == "comp-kaniko-build"


def test_push_credentials_come_from_a_named_secret(tmp_path: Path) -> None:
    """Kaniko pushes with /kaniko/.docker/config.json; the probe step reads the same file via DOCKER_CONFIG."""

    @dsl.component(base_image="python:3.11-slim")
    def probe(image: str) -> str:
        return image

    @dsl.pipeline(name="build-with-credentials")
    def build(context_uri: str, image: str, registry_secret: str = "abflow-registry") -> str:
        probed = use_registry_secret(probe(image=image), registry_secret)
        built = use_registry_secret(kaniko_build(context_uri=context_uri, image=probed.output), registry_secret)
        return built.outputs["digest"]

    path = tmp_path / "build.yaml"
    compiler.Compiler().compile(build, str(path))
    pipeline_spec, platform = yaml.safe_load_all(path.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-kaniko-build", "exec-probe"):
        (volume,) = executors[name]["secretAsVolume"]
        assert volume["mountPath"] == "/kaniko/.docker"
        assert volume["optional"] is True
        assert volume["secretNameParameter"] == {"componentInputParameter": "registry_secret"}
        container = pipeline_spec["deploymentSpec"]["executors"][name]["container"]
        assert {"name": "DOCKER_CONFIG", "value": "/kaniko/.docker"} in container["env"]


def test_the_executor_is_a_maintained_kaniko() -> None:
    """GoogleContainerTools/kaniko is archived (June 2025): its images get no fixes any more."""
    assert KANIKO_IMAGE.startswith("ghcr.io/osscontainertools/kaniko:v")
    assert "gcr.io/kaniko-project" not in KANIKO_IMAGE


def test_packing_is_reproducible_and_keeps_only_the_context(context: BuildContext) -> None:
    first = pack_build_context(context.path)
    containerfile = context.path / "Containerfile"
    os.utime(containerfile, (1, 1))  # a touched file is the same context
    assert pack_build_context(context.path) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "Containerfile" in names and "requirements.txt" in names
    assert not any("__pycache__" in n for n in names)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}


def test_not_a_context_says_how_to_make_one(tmp_path: Path) -> None:
    message = "has no Containerfile; make one with abflow.components.imaging.make_build_context"
    with pytest.raises(ValueError, match=message):
        pack_build_context(tmp_path)


def test_upload_writes_the_archive_kaniko_reads_once(context: BuildContext, gcs_root: str) -> None:
    uri = upload_build_context(context.path, gcs_root, tag=context.tag)
    assert uri == f"{gcs_root}/build-contexts/{context.tag}/context.tar.gz"
    bucket_name, _, name = uri.removeprefix("gs://").partition("/")
    client = storage.Client(project="abflow-local", credentials=AnonymousCredentials())
    blob = client.bucket(bucket_name).get_blob(name)
    assert blob is not None and blob.download_as_bytes() == pack_build_context(context.path)

    assert upload_build_context(context.path, gcs_root, tag=context.tag) == uri
    again = client.bucket(bucket_name).get_blob(name)
    assert again is not None and again.generation == blob.generation, "an unchanged context is not re-uploaded"


def test_upload_needs_object_storage(context: BuildContext, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use a gs://bucket/prefix artifact root"):
        upload_build_context(context.path, str(tmp_path))


def test_stage_uploads_the_context_when_the_tag_is_not_pushed(context: BuildContext, gcs_root: str) -> None:
    """The registry is a closed port on 127.0.0.1 (it cannot say the tag exists), so kaniko must build."""
    from abflow.components.kaniko import stage_for_kaniko
    from tests.fixtures.processes import free_port

    stage = stage_for_kaniko(context, image_repo=f"127.0.0.1:{free_port()}/ml/iris", artifact_root_uri=gcs_root)
    assert stage.build_needed
    assert stage.image_ref.endswith(f":{context.tag}")
    assert stage.context_uri == f"{gcs_root}/build-contexts/{context.tag}/context.tar.gz"


def test_the_shipped_pipeline_is_strict_kfp_ir_with_the_kaniko_branch() -> None:
    from abflow.pipelines.parameters import PIPELINE_YAML

    spec = yaml.safe_load(PIPELINE_YAML.read_text())
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    executors = parsed.deployment_spec["executors"].values()
    assert [e["container"]["image"] for e in executors].count(KANIKO_IMAGE) == 1
