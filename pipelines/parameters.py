"""The pipeline's parameters as its compiled YAML declares them: names, KFP types and defaults.

The command line needs them to build its flags, but importing the pipeline means importing kfp
(and with it kubernetes and the Google libraries): half a second of start-up and tens of MiB in every
``abflow`` process, ``abflow serve`` included. The checked-in YAML is compiled from the pipeline
function and a test fails when it is stale, so reading it is reading the pipeline's own signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

PIPELINE_YAML = Path(__file__).resolve().parent / "iris_ab_pipeline.yaml"
PYTHON_TYPES: dict[str, type] = {"NUMBER_DOUBLE": float, "NUMBER_INTEGER": int, "STRING": str, "BOOLEAN": bool}


@dataclass(frozen=True)
class PipelineParameter:
    name: str
    kfp_type: str
    default: Any

    @property
    def python_type(self) -> type:
        return PYTHON_TYPES[self.kfp_type]


@cache
def pipeline_parameters(path: Path = PIPELINE_YAML) -> dict[str, PipelineParameter]:
    spec = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    declared = spec["root"]["inputDefinitions"]["parameters"]
    parameters = {}
    for name, body in declared.items():
        kfp_type, default = body["parameterType"], body.get("defaultValue")
        # The IR stores every number as a double (an int default reads back as 200.0).
        typed_default = None if default is None else PYTHON_TYPES[kfp_type](default)
        parameters[name] = PipelineParameter(name, kfp_type, typed_default)
    return parameters


Spelling = Callable[[str], str]
"""How a caller's users write a parameter's name: ``--ratio-a`` for ``abflow run``, ``ratio_a`` for
``abflow submit --param``. Every problem names the parameter the way the user has to type the fix."""


def flag(name: str) -> str:
    """``abflow run``'s flag for parameter ``name``."""
    return f"--{name.replace('_', '-')}"


@dataclass(frozen=True)
class Bounds:
    """The numbers a parameter's step accepts, and what the number means (the hint in the message)."""

    low: float
    high: float
    meaning: str
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # NaN is neither

    def words(self) -> str:
        if math.isinf(self.high):
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        exclusive = ", exclusive" if self.low_open and self.high_open else ""
        return f"between {self.low:g} and {self.high:g}{exclusive}"


BOUNDS: dict[str, Bounds] = {
    "test_size": Bounds(0, 1, "the held-out share of the data, e.g. 0.25", low_open=True, high_open=True),
    "min_accuracy": Bounds(0, 1, "the held-out accuracy a model needs to be deployed, e.g. 0.9"),
    "max_regression": Bounds(0, 1, "how many accuracy points a challenger may trail the champion, e.g. 0.02"),
    "c": Bounds(0, math.inf, "LogisticRegression's inverse regularisation strength, e.g. 1.0", low_open=True),
    "max_iter": Bounds(1, math.inf, "the solver's iteration limit, e.g. 200"),
    "seed": Bounds(0, 2**32 - 1, "scikit-learn's random_state, e.g. 42"),
    "local_port": Bounds(1, 65535, "a TCP port on 127.0.0.1, e.g. 8000"),
    "smoke_requests": Bounds(1, math.inf, "how many requests the smoke test sends, e.g. 200"),
    "p99_budget_ms": Bounds(0, math.inf, "milliseconds, e.g. 500", low_open=True),
    "alpha": Bounds(0, 1, "the experiment test's false-promotion rate, e.g. 0.05", low_open=True, high_open=True),
    "min_feedback": Bounds(2, math.inf, "feedbacks per arm before the test is asked (it estimates a variance), "
                                        "e.g. 100"),
    "max_duration_hours": Bounds(0, math.inf, "hours, 0 for no limit"),
    "p99_slack_ms": Bounds(0, math.inf, "milliseconds the challenger's p99 may exceed 1.2 x the champion's, e.g. 5"),
    "keep": Bounds(1, math.inf, "how many model versions retention keeps besides those in use, e.g. 5"),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "target": ("local", "seldon"),
    "builder": ("none", "auto", "buildah", "docker", "kaniko"),
    "on_undecided": ("wait", "replace"),
    "deploy_mode": ("ab", "shadow"),
}


def parameter_problems(values: Mapping[str, Any], spell: Spelling = flag) -> list[str]:
    """Every value in ``values`` (parameter name → value) that a step would refuse, each naming the
    parameter as ``spell`` writes it, the numbers it takes and an example.

    The one place the pipeline's parameter values are checked before a run: ``abflow run`` (with
    ``machine_problems``) and ``abflow submit``/``schedule`` (with the cluster checks) call it, so a
    run that could only fail inside a step fails here first, before anything is trained or stored."""
    from abflow.components.experiment import parse_ratio_schedule
    from abflow.serving.graph import check_ratio, mirror_percent

    problems = []
    for name, value in values.items():
        spelled = spell(name)
        if name == "ratio_a":
            try:
                check_ratio(value, spelled)
            except ValueError as error:
                problems.append(str(error))
        elif name == "shadow_fraction":
            try:
                mirror_percent(value)
            except (TypeError, ValueError) as error:
                problems.append(f"{spelled}: {error}")
        elif name == "ratio_schedule":
            try:
                parse_ratio_schedule(str(value))
            except ValueError as error:
                problems.append(f"{spelled}: {error}")
        elif name in BOUNDS:
            bounds = BOUNDS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not bounds.admits(value):
                problems.append(f"{spelled} must be {bounds.words()}, got {value!r}: {bounds.meaning}")
        elif name in CHOICES and value not in CHOICES[name]:
            problems.append(f"{spelled} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    if "model_name" in values:
        from abflow.components.registry import check_name

        try:
            check_name(str(values["model_name"]))
        except ValueError as error:
            problems.append(f"{spell('model_name')}: {error}")
    if "image_repo" in values:
        from abflow.components.imaging import check_repo

        try:
            check_repo(str(values["image_repo"]))
        except ValueError as error:
            problems.append(f"{spell('image_repo')}: {error}")
    return problems


def machine_problems(values: Mapping[str, Any], spell: Spelling = flag) -> list[str]:
    """What would stop a run on this machine (``abflow run``) once its values are valid: a builder
    that cannot run here, a port another program holds."""
    import shutil

    problems = []
    builder = values.get("builder")
    if builder == "kaniko":
        problems.append(f"{spell('builder')} kaniko runs in a cluster: use it with `abflow submit`, or pick "
                        "buildah/docker/none")
    elif builder in ("buildah", "docker"):
        from abflow.components.imaging import docker_answers

        fallback = (f"pass {spell('builder')} auto (whichever works here) or {spell('builder')} none (the local "
                    "target needs no image)")
        if not shutil.which(builder):
            problems.append(f"{spell('builder')} {builder} cannot run here: {builder} is not installed (not on "
                            f"PATH); install it, or {fallback}")
        elif builder == "docker" and not docker_answers():
            problems.append(f"{spell('builder')} docker cannot run here: no docker daemon answers `docker info`; "
                            f"start one, or {fallback}")
    from abflow.components.datasets import BUNDLED_IRIS

    data_uri = str(values.get("data_uri", BUNDLED_IRIS))
    if data_uri != BUNDLED_IRIS and not data_uri.startswith("gs://"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(data_uri).path)) if data_uri.startswith("file://") else Path(data_uri)
        if not path.expanduser().is_file():
            problems.append(f"{spell('data_uri')} {data_uri}: no such file here; pass a CSV path, a file:// or "
                            f"gs:// URI, or {spell('data_uri')} {BUNDLED_IRIS} for the bundled data")
    port = values.get("local_port")
    if values.get("target") == "local" and isinstance(port, int) and BOUNDS["local_port"].admits(port):
        from abflow.components.local_target import port_in_use

        held = port_in_use(Path(values["local_state_dir"]), port)
        if held:
            problems.append(f"{spell('local_port')} {port}: {held}; pick a free port with {spell('local_port')} "
                            "N, or stop the program that listens there")
    return problems
