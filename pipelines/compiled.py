"""Compiled pipelines: the YAML checked in, and the pipeline compiled for a cluster's registry.

The checked-in files (the pipeline, and each component on its own) are loaded without installing
abflow (``load_component_from_url``, ``abflow run``'s flags), so they must never lag the code:
``abflow compile --regenerate`` rewrites them all and a test fails when any is stale. They name the
laptop registry (``localhost:5000``), which no cluster can pull from: for a cluster,
``compile_for_registry`` names the images ``abflow images push --repo`` pushed, the components image
by its content tag, so the step code in the YAML and the code in the image are the same code.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

from abflow.components.imaging import ImageRefs, image_refs, is_local_registry
from abflow.components.steps import DEFAULT_COMPONENTS_IMAGE, STEP_FUNCTIONS, make_components
from abflow.pipelines.parameters import PIPELINE_YAML
from abflow.pipelines.pipeline import build_pipeline

REPO_ROOT = PIPELINE_YAML.parent.parent
COMPONENTS_YAML_DIR = REPO_ROOT / "components" / "yaml"
SERVING_REPO_PARAMETER = "image_repo"


def compile_pipeline(output: Path, components_image: str = DEFAULT_COMPONENTS_IMAGE) -> Path:
    compiler.Compiler().compile(build_pipeline(components_image), str(output))
    return output


def compile_for_registry(output: Path, image_repo: str) -> ImageRefs:
    """Compile the pipeline for images under ``image_repo`` (``REGISTRY/PATH``): steps on the
    content-tagged components image, the serving image's repository as ``image_repo``'s default."""
    if is_local_registry(f"{image_repo.rstrip('/')}/x"):
        raise ValueError(
            f"--image-repo {image_repo} is a registry on this machine, which no cluster node can pull from: "
            "push to a registry the cluster reaches (abflow images push --repo REGISTRY/PATH) and pass that"
        )
    refs = image_refs(image_repo)
    compiler.Compiler().compile(build_pipeline(refs.components), str(output))
    _set_default(output, SERVING_REPO_PARAMETER, refs.serving_repo)
    return refs


def _set_default(path: Path, parameter: str, value: str) -> None:
    """Rewrite one root parameter's default in a compiled pipeline (the pipeline function's own default
    names the laptop registry; the IR keeps defaults in one place, ``root.inputDefinitions``)."""
    documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    declared = documents[0]["root"]["inputDefinitions"]["parameters"]
    if parameter not in declared:
        raise ValueError(f"the pipeline declares no {parameter!r} parameter; its parameters: {sorted(declared)}")
    declared[parameter]["defaultValue"] = value
    path.write_text(yaml.safe_dump_all(documents, sort_keys=True), encoding="utf-8")


def checked_in_files(components_image: str = DEFAULT_COMPONENTS_IMAGE) -> dict[Path, object]:
    """Every checked-in YAML and the KFP object it is compiled from."""
    components = make_components(components_image)
    files: dict[Path, object] = {PIPELINE_YAML: build_pipeline(components_image)}
    for func in STEP_FUNCTIONS:
        files[COMPONENTS_YAML_DIR / f"{func.__name__}.yaml"] = getattr(components, func.__name__)
    return files


def regenerate(target_dir: Path | None = None) -> list[Path]:
    """Write every checked-in YAML (under ``target_dir`` instead of the repo, for the staleness
    test) and return the paths written."""
    written = []
    for path, kfp_object in checked_in_files().items():
        destination = path if target_dir is None else target_dir / path.relative_to(REPO_ROOT)
        destination.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(kfp_object, str(destination))
        written.append(destination)
    return written
