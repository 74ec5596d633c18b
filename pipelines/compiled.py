"""The compiled YAML that is checked in: the pipeline, and each component on its own.

Users load these without installing abflow (``kfp run create -f``, ``load_component_from_url``), so
they must never lag the code: ``abflow compile --regenerate`` rewrites them all and a test fails
when any is stale.
"""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from abflow.components.steps import DEFAULT_COMPONENTS_IMAGE, STEP_FUNCTIONS, make_components
from abflow.pipelines.parameters import PIPELINE_YAML
from abflow.pipelines.pipeline import build_pipeline

REPO_ROOT = PIPELINE_YAML.parent.parent
COMPONENTS_YAML_DIR = REPO_ROOT / "components" / "yaml"


def compile_pipeline(output: Path, components_image: str = DEFAULT_COMPONENTS_IMAGE) -> Path:
    compiler.Compiler().compile(build_pipeline(components_image), str(output))
    return output


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
