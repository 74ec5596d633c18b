"""Build the serving image inside the cluster with kaniko, from a build context in the artifact store.

On a cluster no step can run buildah or talk to a Docker daemon, so the image is built by kaniko's
executor in its own pod. Kaniko reads its context from object storage, hence two halves:

* ``upload_build_context`` (plain logic, runs in the step before): packs the folder made by
  ``abflow.components.imaging.make_build_context`` into a byte-for-byte reproducible ``context.tar.gz`` and
  writes it to ``<artifact root>/build-contexts/<tag>/`` through ``abflow.serving.store`` — the tag is the
  context's content hash, so an unchanged context is neither re-packed differently nor re-uploaded.
* ``kaniko_build`` (a KFP container component): runs ``gcr.io/kaniko-project/executor`` with
  ``--context gs://…/context.tar.gz --destination IMAGE:TAG --cache=true`` and outputs the pushed
  digest. Skipping the build when ``IMAGE:TAG`` already exists is the pipeline's job
  (``abflow.components.imaging.registry_has_tag`` in a ``dsl.If``): the executor image has no shell to
  check with.

Kaniko pushes with the credentials in ``/kaniko/.docker/config.json`` (mount a registry secret there,
or use Workload Identity on GKE) and reads ``gs://`` with the pod's Google credentials.
"""

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kfp import dsl

from abflow.components.imaging import BuildContext
from abflow.components.oci_registry import registry_has_tag
from abflow.serving.store import open_store

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
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
    store = open_store(artifact_root_uri)
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
