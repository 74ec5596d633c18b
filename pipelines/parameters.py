"""The pipeline's parameters as its compiled YAML declares them: names, KFP types and defaults.

The command line needs them to build its flags, but importing the pipeline means importing kfp
(and with it kubernetes and the Google libraries): half a second of start-up and tens of MiB in every
``abflow`` process, ``abflow serve`` included. The checked-in YAML is compiled from the pipeline
function and a test fails when it is stale, so reading it is reading the pipeline's own signature.
"""

from __future__ import annotations

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
