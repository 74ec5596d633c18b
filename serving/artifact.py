"""The model artifact contract shared by the trainer (writes it) and the model server (checks it).

A model version is a folder holding ``model.joblib`` (Seldon's SKLEARN_SERVER convention, so the
same ``modelUri`` also works with the prepackaged server) and ``metadata.json`` describing it, whose
sha256 is what lets a server unpickle the model at all; with a signing key configured, also
``metadata.json.sig``. Writer (``abflow.components.registry``) and reader (``abflow.serving.model``)
share these definitions so the two sides cannot drift.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as distribution_version
from typing import Any

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "metadata.json.sig"
SIGNING_KEY_ENV = "ABFLOW_MODEL_SIGNING_KEY"
ALLOW_UNVERIFIED_FLAG = "--allow-unverified-model"
ALLOW_UNVERIFIED_ENV = "ABFLOW_ALLOW_UNVERIFIED_MODEL"
DEFAULT_CLASS_NAMES = ("iris-setosa", "iris-versicolor", "iris-virginica")
DEFAULT_FEATURE_NAMES = ("sepallengthcm", "sepalwidthcm", "petallengthcm", "petalwidthcm")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signing_key_from_env() -> bytes | None:
    """The key that signs ``metadata.json`` (``ABFLOW_MODEL_SIGNING_KEY``), or None when unset.

    The same variable is read by the publisher (which then signs) and by every model loader (which then
    refuses unsigned or wrongly signed metadata), so one secret in both environments is all it takes."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def allow_unverified_from_env() -> bool:
    """The fallback for ``--allow-unverified-model`` (the serving image has no command line to add it to)."""
    return os.environ.get(ALLOW_UNVERIFIED_ENV) == "1"


def sign_metadata(metadata_bytes: bytes, key: bytes) -> bytes:
    """What ``metadata.json.sig`` holds: the hex HMAC-SHA256 of the exact ``metadata.json`` bytes.

    Signing the metadata is enough: it carries the model's sha256, which the loader checks against the
    model's bytes, so one signature vouches for both files."""
    return hmac.new(key, metadata_bytes, hashlib.sha256).hexdigest().encode()


def signature_matches(metadata_bytes: bytes, signature: bytes, key: bytes) -> bool:
    return hmac.compare_digest(sign_metadata(metadata_bytes, key), signature.strip())


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
