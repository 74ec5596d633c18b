"""abflow installs one top-level package, and its code reaches its own modules only through it.

Users' KFP projects very often hold ``pipelines/`` and ``components/`` folders of their own; a
top-level ``serving``/``components``/``pipelines`` in site-packages would shadow them or be shadowed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("abflow", "serving", "components", "pipelines", "tests", "bench")
BARE_NAMES = {"serving", "components", "pipelines"}


@pytest.mark.slow
def test_the_wheel_holds_only_the_abflow_package(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    built = subprocess.run([*command, str(REPO)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("abflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"abflow"}
    for shipped in ("abflow/serving/modelserver.py", "abflow/components/yaml/train.yaml",
                    "abflow/pipelines/iris_ab_pipeline.yaml", "abflow/serving/Containerfile"):
        assert shipped in names, f"{shipped} missing from the wheel"


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in BARE_NAMES]
    return found


def test_no_module_imports_serving_components_or_pipelines_outside_the_namespace() -> None:
    """A bare ``import serving`` would load a second copy of a module (and its state) under another name."""
    sources = [path for folder in SOURCE_FOLDERS for path in (REPO / folder).rglob("*.py")]
    offenders = [hit for path in sources for hit in _bare_imports(path)]
    assert offenders == []
