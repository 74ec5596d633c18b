"""The model artifact contract shared by the trainer (writes it) and the model server (checks it).

A model version is a folder holding ``model.joblib`` (Seldon's SKLEARN_SERVER convention, so the
same ``modelUri`` also works with the prepackaged server) and ``metadata.json`` describing it.
Writer and reader live here together so the two sides cannot drift.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
DEFAULT_CLASS_NAMES = ("iris-setosa", "iris-versicolor", "iris-virginica")
DEFAULT_FEATURE_NAMES = ("sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def runtime_versions() -> dict[str, str]:
    """Versions that decide whether a pickled sklearn model loads faithfully elsewhere.

    Read from the installed distributions rather than by importing them: importing sklearn costs
    a second and a half of CPU, and the store step needs only the version strings."""
    return {
        "python": platform.python_version(),
        "sklearn": distribution_version("scikit-learn"),
        "joblib": distribution_version("joblib"),
        "numpy": distribution_version("numpy"),
    }


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@dataclass(frozen=True)
class ModelMetadata:
    """What ``metadata.json`` holds. Unknown keys are kept in ``extra`` so newer writers don't break
    older readers."""

    name: str
    version: str
    sha256: str
    versions: dict[str, str]
    class_names: list[str] = field(default_factory=lambda: list(DEFAULT_CLASS_NAMES))
    feature_names: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURE_NAMES))
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""
    created_at: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = asdict(self)
        extra = body.pop("extra")
        return json.dumps({**extra, **body}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelMetadata:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("metadata.json must hold a JSON object")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = {"name", "version", "sha256", "versions"} - raw.keys()
        if missing:
            raise ValueError(f"metadata.json lacks {sorted(missing)}")
        kwargs = {k: v for k, v in raw.items() if k in known}
        extra = {k: v for k, v in raw.items() if k not in known}
        return cls(**kwargs, extra=extra)


def write_model_folder(folder: Path, model_bytes: bytes, metadata: ModelMetadata) -> Path:
    """Write ``model.joblib`` + ``metadata.json`` into ``folder``; the sha256 must match the bytes."""
    if metadata.sha256 != sha256_of(model_bytes):
        raise ValueError("metadata.sha256 does not match the model bytes")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(model_bytes)
    (folder / METADATA_FILE).write_bytes(metadata.to_json())
    return folder
