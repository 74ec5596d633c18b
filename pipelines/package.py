"""A compiled pipeline package, made ready to submit: read it, switch caching off, type its parameters.

Two traps of KFP's own tooling are closed here, before anything is sent:

* **Typed parameters.** ``kfp run create``/``kfp recurring-run create`` send ``--param`` values as
  raw strings, and a ``float`` parameter then fails at run time. Here values are typed by the
  parameter types the pipeline spec declares (``ratio_a=0.5`` → 0.5, ``smoke_requests=200`` → 200,
  ``true`` → True), and an unknown name or an unparseable value fails before anything is sent.
* **Caching off.** A nightly retrain with unchanged inputs would otherwise replay yesterday's cached
  steps. ``kfp.Client``'s ``enable_caching`` only reaches the root DAG's tasks (and is ignored for
  stored pipelines), so caching is switched off in the spec itself, on every task of every DAG.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


class SubmissionError(RuntimeError):
    """A submit/schedule request would be wrong, or KFP refused it; the message says what to change."""


class ParameterError(SubmissionError):
    """A ``--param`` names no pipeline parameter, or its value does not parse as the declared type."""


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its spec, and the platform spec KFP puts in a second YAML document."""

    pipeline_spec: dict[str, Any]
    platform_spec: dict[str, Any] | None

    @property
    def name(self) -> str:
        return str(self.pipeline_spec.get("pipelineInfo", {}).get("name") or "pipeline")

    def to_yaml(self) -> bytes:
        documents = [self.pipeline_spec, *([self.platform_spec] if self.platform_spec else [])]
        text: str = yaml.safe_dump_all(documents, sort_keys=True)
        return text.encode()

    def content_hash(self) -> str:
        both = {"pipeline_spec": self.pipeline_spec, "platform_spec": self.platform_spec}
        return hashlib.sha256(json.dumps(both, sort_keys=True).encode()).hexdigest()

    def images(self) -> list[str]:
        """Every container image the pipeline's steps run, in executor order."""
        executors = self.pipeline_spec.get("deploymentSpec", {}).get("executors", {})
        return [e["container"]["image"] for e in executors.values() if "container" in e]

    @contextmanager
    def written(self) -> Iterator[Path]:
        """The package as a ``.yaml`` file, for ``kfp.Client``, which reads packages from paths."""
        with tempfile.TemporaryDirectory(prefix="abflow-package-") as folder:
            path = Path(folder) / f"{self.name}.yaml"
            path.write_bytes(self.to_yaml())
            yield path


def load_package(path: str | Path) -> PipelinePackage:
    """Read a pipeline YAML compiled by ``kfp.compiler`` (``abflow compile``)."""
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise SubmissionError(
            f"cannot read pipeline YAML {str(path)!r}: {exc}; compile it with abflow compile"
        ) from exc
    if not documents or not isinstance(documents[0], dict) or "root" not in documents[0]:
        raise SubmissionError(
            f"{str(path)!r} is not a compiled KFP v2 pipeline (no 'root'): compile it with abflow compile"
        )
    platform: dict[str, Any] = {}
    for document in documents[1:]:
        platform.update(document)
    return PipelinePackage(documents[0], platform or None)


def without_caching(package: PipelinePackage) -> PipelinePackage:
    """The same package with ``enableCache: false`` on every task, nested DAGs included."""
    spec = copy.deepcopy(package.pipeline_spec)
    dags = [spec.get("root", {}).get("dag", {})]
    dags += [component.get("dag", {}) for component in spec.get("components", {}).values()]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {**task.get("cachingOptions", {}), "enableCache": False}
    return PipelinePackage(spec, package.platform_spec)


def declared_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameter name → its declaration (``parameterType``, ``defaultValue``, ``isOptional``)."""
    root = spec.get("pipeline_spec", spec).get("root", {})
    parameters: dict[str, dict[str, Any]] = root.get("inputDefinitions", {}).get("parameters", {})
    return parameters


def parse_param(option: str, spec: Mapping[str, Any]) -> tuple[str, Any]:
    """Split ``key=value`` and type the value as the spec declares ``key``."""
    key, sep, value = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"--param expects key=value (e.g. ratio_a=0.3), got {option!r}")
    return key, typed_value(key, value, spec)


def typed_value(key: str, value: Any, spec: Mapping[str, Any]) -> Any:
    declared = declared_parameters(spec)
    if key not in declared:
        close = difflib.get_close_matches(key, declared, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(
            f"unknown pipeline parameter {key!r}{hint}; the pipeline declares: {', '.join(sorted(declared))}"
        )
    kind = declared[key].get("parameterType", "STRING")
    try:
        return _convert(value, kind)
    except (ValueError, TypeError) as exc:
        raise ParameterError(f"parameter {key!r} is {_TYPE_WORDS.get(kind, kind)}: {exc}") from None


def typed_params(params: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters typed by the spec; required ones (no default, not optional) must be given."""
    typed = {key: typed_value(key, value, spec) for key, value in params.items()}
    missing = [
        name
        for name, declaration in declared_parameters(spec).items()
        if name not in typed and "defaultValue" not in declaration and not declaration.get("isOptional")
    ]
    if missing:
        raise ParameterError(f"the pipeline needs parameter(s) {', '.join(missing)}: pass --param NAME=VALUE")
    return typed


_TYPE_WORDS = {
    "NUMBER_DOUBLE": "a number",
    "NUMBER_INTEGER": "an integer",
    "BOOLEAN": "a boolean",
    "STRING": "a string",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


def _convert(value: Any, kind: str) -> Any:
    if kind == "STRING":
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"got {value!r}; use true or false")
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"got {value!r}; use a whole number such as 200")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip())
        except ValueError:
            raise ValueError(f"got {value!r}; use a whole number such as 200") from None
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise ValueError(f"got {value!r}; use a number such as 0.5")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"got {value!r}; use a number such as 0.5") from None
        if not math.isfinite(number):
            raise ValueError(f"got {value!r}; use a finite number")
        return number
    if kind in ("LIST", "STRUCT"):
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, list if kind == "LIST" else dict):
            example = "[1, 2]" if kind == "LIST" else '{"k": 1}'
            raise ValueError(f"got {value!r}; use JSON such as {example}")
        return parsed
    raise ValueError(f"abflow cannot type parameters of KFP type {kind!r}")
