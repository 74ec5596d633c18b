"""Build the serving image inside the cluster with kaniko, from a build context in the artifact store.

On a cluster no step can run buildah or talk to a Docker daemon, so the image is built by kaniko's
executor in its own pod. Kaniko reads its context from object storage, hence two halves:

* ``upload_build_context`` (plain logic, runs in the step before): packs the folder made by
  ``abflow.components.imaging.make_build_context`` into a byte-for-byte reproducible ``context.tar.gz`` and
  writes it to ``<artifact root>/build-contexts/<tag>/`` through ``abflow.components.store_writes`` — the tag is the
  context's content hash, so an unchanged context is neither re-packed differently nor re-uploaded.
* ``kaniko_build`` (a KFP container component): runs kaniko's executor with
  ``--context gs://…/context.tar.gz --destination IMAGE:TAG --cache=true`` and outputs the pushed
  digest. Skipping the build when ``IMAGE:TAG`` already exists is the pipeline's job
  (``abflow.components.oci_registry.registry_has_tag`` in the step before, with a ``dsl.If``).

Google archived kaniko (GoogleContainerTools/kaniko) in June 2025. Of its successors, the
osscontainertools fork is the drop-in one: the same ``/kaniko/executor`` and flags, maintained
dependencies, and public images (``ghcr.io/osscontainertools/kaniko``). Chainguard's fork publishes
images to its customers only; BuildKit rootless needs the pod's seccomp and AppArmor profiles
unconfined (a KFP step cannot set them) and cannot read a ``gs://`` context.

Kaniko pushes with the credentials in ``/kaniko/.docker/config.json``: ``use_registry_secret`` mounts
a named Secret's ``config.json`` there (on the kaniko step, and on the step that asks the registry
whether the tag exists, via ``DOCKER_CONFIG``). The Secret is optional, so Workload Identity on GKE
works without one; ``gs://`` is read with the pod's Google credentials.
"""

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import dsl

from abflow.components.imaging import BuildContext
from abflow.components.oci_registry import registry_has_tag
from abflow.components.store_writes import open_writable_store

# Pinned by tag: no registry can be reached from where this was written to confirm a digest (see
# docs/cluster.md for the digest published for this tag and how to check it before pinning it).
KANIKO_IMAGE = "ghcr.io/osscontainertools/kaniko:v1.28.2-alpine"
REGISTRY_CONFIG_DIR = "/kaniko/.docker"
DEFAULT_REGISTRY_SECRET = "abflow-registry"
CONTEXT_ARCHIVE = "context.tar.gz"
CONTEXT_PREFIX = "build-contexts"
DOCKERFILE = "Containerfile"


def pack_build_context(context_dir: Path) -> bytes:
    """A tar.gz of ``context_dir`` that depends only on file paths, contents and executable bits.

    Sorted entries, zeroed times and owners, and a gzip header without a timestamp: packing the
    same context twice gives the same bytes, so its key and kaniko's layer cache stay stable.
    """
    root = Path(context_dir)
    if not (root / DOCKERFILE).is_file():
        raise ValueError(
            f"{root} is not a build context: it has no {DOCKERFILE}; make one with "
            "abflow.components.imaging.make_build_context"
        )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(root.rglob("*")):
            if "__pycache__" in path.parts or path.is_symlink():
                continue
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
                continue
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def upload_build_context(context_dir: Path, artifact_root_uri: str, *, tag: str | None = None) -> str:
    """Upload the packed context under the artifact root and return the ``gs://`` URI kaniko reads.

    ``tag`` (the context's content hash, ``BuildContext.tag``) names the folder; without it the
    archive's own sha256 does. An archive already there with that name is not uploaded again.
    """
    if not artifact_root_uri.startswith("gs://"):
        raise ValueError(
            f"kaniko reads its build context from object storage, but the artifact root is "
            f"{artifact_root_uri!r}: use a gs://bucket/prefix artifact root on a cluster"
        )
    data = pack_build_context(context_dir)
    name = tag or hashlib.sha256(data).hexdigest()[:32]
    store = open_writable_store(artifact_root_uri)
    key = f"{CONTEXT_PREFIX}/{name}/{CONTEXT_ARCHIVE}"
    if store.exists(key):
        return store.uri_for(key)
    return store.write_bytes(key, data)


@dataclass(frozen=True)
class KanikoStage:
    """What the pipeline's kaniko branch needs: the ref to push, and whether a build is needed at all."""

    image_ref: str
    context_uri: str
    build_needed: bool


def stage_for_kaniko(context: BuildContext, *, image_repo: str, artifact_root_uri: str) -> KanikoStage:
    """Upload ``context`` for kaniko unless ``image_repo:<content tag>`` is already in the registry
    (then nothing is uploaded and the pipeline skips the build)."""
    image_ref = f"{image_repo}:{context.tag}"
    if registry_has_tag(image_ref):
        return KanikoStage(image_ref=image_ref, context_uri="", build_needed=False)
    context_uri = upload_build_context(context.path, artifact_root_uri, tag=context.tag)
    return KanikoStage(image_ref=image_ref, context_uri=context_uri, build_needed=True)


@dsl.container_component  # type: ignore[untyped-decorator]
def kaniko_build(context_uri: str, image: str, digest: dsl.OutputPath(str)):  # type: ignore[no-untyped-def,valid-type]
    """Build ``image`` (``registry/repo:tag``) from the build context at ``context_uri`` and push it.

    Args:
        context_uri: ``gs://…/context.tar.gz`` written by ``upload_build_context``.
        image: Where to push, tag included (the context's content hash).

    Returns:
        digest: The pushed image's ``sha256:…`` digest, for pinning the deployment to it.
    """
    return dsl.ContainerSpec(
        image=KANIKO_IMAGE,
        command=["/kaniko/executor"],
        args=[
            "--context",
            context_uri,
            "--dockerfile",
            DOCKERFILE,
            "--destination",
            image,
            "--cache=true",
            "--digest-file",
            digest,
        ],
    )


def use_registry_secret(task: dsl.PipelineTask, secret_name: str | Any) -> dsl.PipelineTask:
    """Mount the Secret ``secret_name`` (a name or a pipeline parameter) at ``/kaniko/.docker``, where
    kaniko reads ``config.json``, and point ``DOCKER_CONFIG`` there for abflow's registry probe.

    Create it from a Docker config: ``kubectl create secret generic abflow-registry
    --from-file=config.json=$HOME/.docker/config.json``. Optional: without it the pod starts anyway
    (Workload Identity, or a registry that takes anonymous pushes).
    """
    from kfp import kubernetes  # kfp-kubernetes: imported here, so only a pipeline that mounts the Secret needs it

    kubernetes.use_secret_as_volume(task, secret_name=secret_name, mount_path=REGISTRY_CONFIG_DIR, optional=True)
    task.set_env_variable("DOCKER_CONFIG", REGISTRY_CONFIG_DIR)
    return task
