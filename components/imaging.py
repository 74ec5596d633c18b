"""Build contexts and images for the serving image and the components image.

A build context is a folder holding exactly what the image needs, tagged by the hash of its content,
so an unchanged model runtime gets the same tag on every run and a scheduled retrain does not rebuild
(or re-push) an identical image. The serving image pins scikit-learn, numpy, joblib and scipy to the
trainer's versions because a pickled model only loads faithfully under the versions that wrote it.

The components image (abflow itself, which every pipeline step runs in) is tagged
``<abflow version>-<content hash>``: the step code KFP embeds in a compiled pipeline changes with the
source, so a tag that stayed ``0.1.0`` would run new YAML against old code. ``image_refs`` names both
images under one repository prefix (``REGISTRY/PATH/abflow-components:…``, ``REGISTRY/PATH/iris-server``).

Builders: buildah (daemonless, works as root inside containers with vfs storage and chroot
isolation), docker (when a daemon answers), or ``none``, which only records the context and its tag
(the local deploy target runs the serving code in-process and needs no image). No KFP import here: the
typed component lives in ``abflow.components.steps``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

import abflow
import abflow.serving
from abflow.components.oci_registry import registry_has_tag

Builder = Literal["auto", "buildah", "docker", "none"]
ResolvedBuilder = Literal["buildah", "docker", "none"]

DEFAULT_BASE_IMAGE = "python:3.11-slim"
CONTAINERFILE = "Containerfile"
REQUIREMENTS_FILE = "requirements.txt"
CONSTRAINTS_FILE = "constraints.txt"
TAG_LENGTH = 12

# Distributions whose versions decide whether a pickled model loads faithfully; pinned to the trainer's.
MODEL_RUNTIME_PACKAGES = ("scikit-learn", "numpy", "joblib", "scipy")
# What the model server imports besides the model runtime (google-cloud-storage only for gs:// models).
SERVING_PACKAGES = ("aiohttp", "orjson", "prometheus-client", "PyYAML", "google-cloud-storage")
# ``abflow.serving.artifact.runtime_versions()`` names scikit-learn by its import name.
VERSION_KEY_ALIASES = {"sklearn": "scikit-learn"}
# Not pip-installable: the base image decides the Python version.
UNPINNED_VERSION_KEYS = frozenset({"python"})
# Mirrors pyproject's package-data, so a context holds what ``pip install`` would ship.
PACKAGE_FILE_PATTERNS = ("*.py", "*.yaml", "*.json", "*.txt", "*.html")
COMPONENTS_PACKAGES = ("abflow", "serving", "components", "pipelines")
COMPONENTS_TOP_FILES = ("pyproject.toml", "README.md", "LICENSE")
# Compiled from the code and naming the components image's tag, so they cannot be part of the hash that
# tag is made of; the steps never read them (they are for the KFP UI, load_component_from_url and the CLI).
COMPILED_YAML = ("pipelines/iris_ab_pipeline.yaml", "components/yaml/")
COMPONENTS_IMAGE_NAME = "abflow-components"
SERVING_IMAGE_NAME = "iris-server"
# A registry on the machine itself: fine for a laptop, unpullable by any cluster node.
LOCAL_REGISTRY_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

LOG_TAIL_LINES = 40
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
_DISTRIBUTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


class ImageBuildError(RuntimeError):
    """A build or push failed; the message carries the tool's last output lines and what to do."""


@dataclass(frozen=True)
class BuildContext:
    """A folder ready for ``buildah bud``/``docker build``, with ``Containerfile`` at its root.

    ``digest_inputs`` maps each file's relative path to its sha256 (plus ``BASE_IMAGE``): what the tag
    was computed from, so a changed tag can be explained by diffing two records.
    """

    path: Path
    tag: str
    digest_inputs: Mapping[str, str]
    base_image: str


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    tag: str
    builder: ResolvedBuilder
    pushed: bool
    skipped_existing: bool
    context_path: Path


@dataclass(frozen=True)
class _Command:
    argv: list[str]
    hint: str


def pinned_versions(versions: Mapping[str, str] | None = None) -> dict[str, str]:
    """Model-runtime pins: the trainer's ``versions`` over the versions installed here.

    ``versions`` may be a model's ``metadata.versions`` as is: ``sklearn`` is read as scikit-learn and
    ``python`` is ignored. A package it leaves out (scipy, which the metadata does not record) keeps the
    version installed here, which is the one the trainer's numpy was tested with when they train here.
    """
    pins = {name: importlib.metadata.version(name) for name in MODEL_RUNTIME_PACKAGES}
    for key, version in (versions or {}).items():
        if key in UNPINNED_VERSION_KEYS:
            continue
        name = VERSION_KEY_ALIASES.get(key, key)
        if not _DISTRIBUTION_RE.fullmatch(name) or not _VERSION_RE.fullmatch(version):
            raise ValueError(
                f"versions[{key!r}] = {version!r} is not a pip distribution name and version; expected "
                "e.g. {'sklearn': '1.5.2', 'numpy': '2.1.3'} (a model's metadata.json 'versions')"
            )
        pins[name] = version
    return pins


def requirements_text(versions: Mapping[str, str] | None = None) -> str:
    """``requirements.txt`` for the serving image: trainer-pinned model runtime + the server's deps."""
    pins = pinned_versions(versions)
    for name in SERVING_PACKAGES:
        pins.setdefault(name, _installed_version(name))
    return "".join(f"{name}=={pins[name]}\n" for name in sorted(pins, key=str.lower))


def make_build_context(
    dest: Path,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    versions: Mapping[str, str] | None = None,
) -> BuildContext:
    """Write the serving image's build context into ``dest`` (created; must be empty if it exists).

    The context holds ``Containerfile``, ``requirements.txt`` and the ``abflow.serving`` package's source, and
    nothing else, so the tag changes exactly when the image would.
    """
    _prepare_empty(dest)
    package_dir = Path(abflow.serving.__file__).resolve().parent
    namespace_dir = Path(abflow.__file__).resolve().parent
    _copy_package(namespace_dir, dest / "abflow")
    _copy_package(package_dir, dest / "abflow" / "serving")
    shutil.copyfile(package_dir / CONTAINERFILE, dest / CONTAINERFILE)
    (dest / REQUIREMENTS_FILE).write_text(requirements_text(versions))
    return _context_of(dest, base_image)


def make_components_build_context(
    dest: Path, *, base_image: str = DEFAULT_BASE_IMAGE, repo_root: Path | None = None
) -> BuildContext:
    """Write the components image's build context (abflow itself, installable with ``pip install .``).

    Compiled KFP components import ``components``/``serving`` on the cluster, so the image must hold
    abflow; ``constraints.txt`` pins abflow's direct dependencies to the versions installed here so the
    same tag always means the same image. The tag is ``<abflow version>-<content hash>``. Needs a source
    checkout (``repo_root``, default: the checkout this module was imported from).
    """
    root = (repo_root or Path(__file__).resolve().parents[1]).resolve()
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(
            f"no pyproject.toml in {root}: the components image is built from an abflow source checkout; "
            "run from a clone (pip install -e .) or pass repo_root=PATH_TO_CHECKOUT"
        )
    _prepare_empty(dest)
    for name in COMPONENTS_TOP_FILES:
        if (root / name).is_file():
            shutil.copyfile(root / name, dest / name)
    for package in COMPONENTS_PACKAGES:
        _copy_package(root / package, dest / package, extra_patterns=(CONTAINERFILE,), skip=COMPILED_YAML)
    shutil.copyfile(root / "components" / CONTAINERFILE, dest / CONTAINERFILE)
    (dest / CONSTRAINTS_FILE).write_text(_constraints_text(pyproject))
    context = _context_of(dest, base_image)
    return dataclasses.replace(context, tag=f"{importlib.metadata.version('abflow')}-{context.tag}")


@dataclass(frozen=True)
class ImageRefs:
    """Where abflow's two images live under one repository prefix."""

    components: str
    """The components image, with its ``<version>-<content hash>`` tag."""
    serving_repo: str
    """The serving image's repository; the tag is the serving context's hash, added by the build."""


def image_refs(repo: str, *, base_image: str = DEFAULT_BASE_IMAGE, repo_root: Path | None = None) -> ImageRefs:
    """The components image and serving repository under ``repo`` (``REGISTRY/PATH``), as
    ``abflow images push --repo`` pushes them and ``abflow compile --image-repo`` names them."""
    check_repo(repo)
    with tempfile.TemporaryDirectory(prefix="abflow-components-") as folder:
        context = make_components_build_context(Path(folder) / "ctx", base_image=base_image, repo_root=repo_root)
    prefix = repo.rstrip("/")
    return ImageRefs(
        components=f"{prefix}/{COMPONENTS_IMAGE_NAME}:{context.tag}", serving_repo=f"{prefix}/{SERVING_IMAGE_NAME}"
    )


def is_local_registry(ref: str) -> bool:
    """Whether ``ref`` (``host[:port]/path[:tag]``) names a registry on this machine (localhost)."""
    first = ref.split("/", 1)[0]
    host = first[: first.index("]") + 1] if first.startswith("[") and "]" in first else first.split(":", 1)[0]
    return "/" in ref and host.lower() in LOCAL_REGISTRY_HOSTS


def context_digest(path: Path, base_image: str) -> tuple[str, dict[str, str]]:
    """Hash every file under ``path`` (sorted relative paths, their bytes) and the base image.

    Returns the hex digest and the per-file inputs. Paths and contents are length-delimited so moving
    bytes from one file to another changes the digest.
    """
    digest = hashlib.sha256()
    inputs: dict[str, str] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        content = file.read_bytes()
        inputs[relative] = hashlib.sha256(content).hexdigest()
        for part in (relative.encode(), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    digest.update(b"BASE_IMAGE\0" + base_image.encode())
    inputs["BASE_IMAGE"] = base_image
    return digest.hexdigest(), inputs


def resolve_builder(builder: str) -> ResolvedBuilder:
    """``auto`` → buildah when installed, else docker when its daemon answers, else ``none``."""
    if builder not in get_args(Builder):
        raise ValueError(f"builder must be one of {', '.join(get_args(Builder))}, got {builder!r}")
    if builder == "auto":
        if shutil.which("buildah"):
            return "buildah"
        if shutil.which("docker") and docker_answers():
            return "docker"
        return "none"
    if builder != "none" and not shutil.which(builder):
        raise ImageBuildError(
            f"builder {builder!r} is not installed (not on PATH); install it, or pass builder='auto' to use "
            "whichever is available, or builder='none' to only record the build context"
        )
    return cast(ResolvedBuilder, builder)  # checked against Builder above


def build_image(
    context: BuildContext,
    *,
    image_repo: str,
    builder: Builder | str,
    push: bool = True,
    tls_verify: bool = True,
    storage_root: Path | None = None,
) -> BuiltImage:
    """Build ``image_repo:<context.tag>`` and push it, unless that tag already exists.

    ``builder`` is one of ``Builder`` (``auto`` resolves as in ``resolve_builder``); plain ``str`` is
    accepted because KFP hands parameters over as strings, and it is checked here.

    "Exists" means in the registry when pushing (probed over the registry's v2 HTTP API) and in the
    builder's local storage otherwise. ``tls_verify=False`` is for registries served over plain HTTP or
    with self-signed certificates. ``storage_root`` is buildah's storage (default: a per-user cache, so
    base layers are pulled once).
    """
    check_repo(image_repo)
    ref = f"{image_repo}:{context.tag}"
    resolved = resolve_builder(builder)

    def result(*, pushed: bool, skipped: bool) -> BuiltImage:
        return BuiltImage(
            ref=ref,
            tag=context.tag,
            builder=resolved,
            pushed=pushed,
            skipped_existing=skipped,
            context_path=context.path,
        )

    if resolved == "none":
        return result(pushed=False, skipped=False)
    if resolved == "buildah":
        build, publish, exists_locally = _buildah_commands(context, ref, tls_verify, storage_root)
    else:
        build, publish, exists_locally = _docker_commands(context, ref)
    already = registry_has_tag(ref, tls_verify=tls_verify) if push else _succeeds(exists_locally)
    if already:
        where = "in the registry" if push else "locally"
        _say(f"{ref} already exists {where}; not rebuilding")
        return result(pushed=push, skipped=True)
    _run(build, what=f"building {ref}")
    if push:
        _run(publish, what=f"pushing {ref}")
    return result(pushed=push, skipped=False)


def check_repo(image_repo: str) -> None:
    last = image_repo.rsplit("/", 1)[-1]
    if not image_repo or ":" in last or "@" in image_repo or image_repo != image_repo.strip():
        raise ValueError(
            f"image_repo must be a repository without tag or digest, e.g. registry.example.com/ml/iris-server, "
            f"got {image_repo!r}: abflow tags the image with the build context's content hash"
        )


def _buildah_commands(
    context: BuildContext, ref: str, tls_verify: bool, storage_root: Path | None
) -> tuple[_Command, _Command, _Command]:
    root = storage_root or _default_storage_root()
    base = ["buildah", "--root", str(root / "root"), "--runroot", str(root / "runroot"), "--storage-driver", "vfs"]
    tls = f"--tls-verify={str(tls_verify).lower()}"
    build = _Command(
        [
            *base,
            "bud",
            "--isolation",
            "chroot",
            tls,
            "--build-arg",
            f"BASE_IMAGE={context.base_image}",
            "-f",
            str(context.path / CONTAINERFILE),
            "-t",
            ref,
            str(context.path),
        ],
        hint=_BUILD_HINT,
    )
    publish = _Command([*base, "push", tls, ref, f"docker://{ref}"], hint=_PUSH_HINT)
    exists = _Command([*base, "inspect", "--type", "image", ref], hint="")
    return build, publish, exists


def _docker_commands(context: BuildContext, ref: str) -> tuple[_Command, _Command, _Command]:
    build = _Command(
        [
            "docker",
            "build",
            "--build-arg",
            f"BASE_IMAGE={context.base_image}",
            "-f",
            str(context.path / CONTAINERFILE),
            "-t",
            ref,
            str(context.path),
        ],
        hint=_BUILD_HINT,
    )
    publish = _Command(
        ["docker", "push", ref],
        hint=_PUSH_HINT + (" With docker, a plain-HTTP registry must be listed in the daemon's insecure-registries."),
    )
    return build, publish, _Command(["docker", "image", "inspect", ref], hint="")


_BUILD_HINT = (
    "If the base image could not be pulled, check that base_image exists and is reachable (a registry "
    "on plain HTTP needs tls_verify=False). If pip could not install requirements.txt, the pinned "
    "versions need wheels for the base image's Python: use a base image with the trainer's Python. "
    "The full context is in the folder above; rerun the command there to see the whole log."
)
_PUSH_HINT = (
    "Check that image_repo names a registry you can push to: log in first (buildah login HOST / "
    "docker login HOST), and pass tls_verify=False for a registry on plain HTTP."
)


def _run(command: _Command, *, what: str) -> None:
    """Run ``command`` with its output passed through to stderr as it comes (a build takes minutes and
    this is what a KFP step's log shows), keeping the tail for the error message."""
    _say(f"{what}: {' '.join(command.argv)}")
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    try:
        process = subprocess.Popen(
            command.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as error:
        raise ImageBuildError(f"{what} failed: cannot run {command.argv[0]}: {error}. {command.hint}") from error
    assert process.stdout is not None  # piped above
    with process:
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip())
    if process.returncode != 0:
        output = "\n".join(f"  | {line}" for line in tail)
        raise ImageBuildError(
            f"{what} failed (exit {process.returncode}).\n  command: {' '.join(command.argv)}\n"
            f"  last output:\n{output}\n  what to do: {command.hint}"
        )


def _say(message: str) -> None:
    print(f"abflow: {message}", file=sys.stderr, flush=True)


def _succeeds(command: _Command) -> bool:
    return (
        subprocess.run(command.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode == 0
    )


def docker_answers() -> bool:
    """Whether a docker daemon answers ``docker info``: an installed client alone builds nothing."""
    try:
        return (
            subprocess.run(
                ["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _default_storage_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "abflow" / "buildah"


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(
            f"{name} is not installed here, so its version cannot be pinned in the image; "
            "install abflow with its dependencies (pip install -e .)"
        ) from error


def _constraints_text(pyproject: Path) -> str:
    dependencies: Sequence[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    names: Iterable[str] = (m.group(0) for d in dependencies if (m := _DISTRIBUTION_RE.match(d)))
    return "".join(f"{name}=={_installed_version(name)}\n" for name in sorted(names, key=str.lower))


def _prepare_empty(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(
            f"{dest} is not empty; a build context must hold only what it is hashed from: pass a new folder"
        )
    dest.mkdir(parents=True, exist_ok=True)


def _copy_package(source: Path, dest: Path, extra_patterns: Sequence[str] = (), skip: Sequence[str] = ()) -> None:
    """Copy a package's shippable files (sources and package data), never caches or build leftovers;
    ``skip`` holds paths (``pkg/file`` or ``pkg/folder/``) relative to the package's parent."""
    for pattern in (*PACKAGE_FILE_PATTERNS, *extra_patterns):
        for file in source.rglob(pattern):
            relative = file.relative_to(source)
            if "__pycache__" in relative.parts or not file.is_file():
                continue
            if f"{source.name}/{relative.as_posix()}".startswith(tuple(skip)):
                continue
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def _context_of(path: Path, base_image: str) -> BuildContext:
    digest, inputs = context_digest(path, base_image)
    return BuildContext(path=path, tag=digest[:TAG_LENGTH], digest_inputs=inputs, base_image=base_image)
