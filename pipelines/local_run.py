"""Run the abflow pipeline on this machine with KFP's own local runner, showing progress per step.

``kfp.local`` streams every step's full log; a person at a terminal wants one line per step, the
number that matters, and — when a step fails — the reason and what to do. So the runner's output goes
to a log file and a ``ProgressLog`` reads it on the way through: it turns KFP's task start/finish
lines into progress lines and keeps each step's ``abflow:`` lines and last exception for the user.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from abflow.pipelines.pipeline import STEP_NAMES, iris_ab_pipeline

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
TASK_STARTED = re.compile(r"Executing task '([\w-]+)'")
TASK_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Failed|Exception|Exit)): (.+)$")
STEP_NOTE = "abflow: "


class PipelineRunFailed(RuntimeError):
    """A step failed; the message names the step, its error and where the full log is."""


@dataclass
class StepTiming:
    name: str
    started: float
    seconds: float | None = None
    status: str = "RUNNING"


@dataclass
class ProgressLog(io.TextIOBase):
    """A text stream that copies KFP's output to ``log`` and reports progress on ``terminal``."""

    log: TextIO
    terminal: TextIO
    steps: list[StepTiming] = field(default_factory=list)
    last_error: dict[str, str] = field(default_factory=dict)
    _pending: str = ""
    _error_continues: bool = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._observe(ANSI_ESCAPE.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def _current(self) -> StepTiming | None:
        return self.steps[-1] if self.steps and self.steps[-1].status == "RUNNING" else None

    def _observe(self, line: str) -> None:
        step = self._current()
        if self._error_continues and step and line and not TASK_FINISHED.search(line):
            self.last_error[step.name] += f"\n  {line}"
            return
        self._error_continues = False
        if started := TASK_STARTED.search(line):
            self.steps.append(StepTiming(started.group(1), time.monotonic()))
            self.terminal.write(f"[{len(self.steps)}/{len(STEP_NAMES)}] {started.group(1)} ...\n")
        elif (finished := TASK_FINISHED.search(line)) and step:
            step.seconds = time.monotonic() - step.started
            step.status = finished.group(2)
            mark = "ok" if step.status == "SUCCESS" else "FAILED"
            self.terminal.write(f"      {mark} in {step.seconds:.1f}s\n")
        elif line.startswith(STEP_NOTE) and step:
            self.terminal.write(f"      {line[len(STEP_NOTE) :]}\n")
        elif (error := EXCEPTION_LINE.match(line)) and step:
            # An exception's message may span lines (a list of failed checks); keep them all.
            self.last_error[step.name] = f"{error.group(1).rsplit('.', 1)[-1]}: {error.group(2)}"
            self._error_continues = True
        self.terminal.flush()


@dataclass(frozen=True)
class LocalRunResult:
    steps: list[StepTiming]
    log_path: Path
    pipeline_root: Path
    seconds: float
    run_dir: Path | None = None
    """This run's folder under ``pipeline_root`` (``<pipeline>-<time>/<task>/<output>``)."""

    def output(self, task: str, name: str) -> Path | None:
        """A step's output artifact file, if the step ran and wrote it."""
        path = self.run_dir / task / name if self.run_dir else None
        return path if path is not None and path.is_file() else None


def run_locally(
    arguments: Mapping[str, Any],
    *,
    data_dir: Path,
    terminal: TextIO = sys.stderr,
) -> LocalRunResult:
    """Run the pipeline under ``kfp.local`` (``SubprocessRunner(use_venv=False)``: every step runs
    this interpreter's abflow, nothing is installed) and raise ``PipelineRunFailed`` with the failed
    step's own error."""
    from kfp import local

    pipeline_root = data_dir / "runs"
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    earlier = set(pipeline_root.iterdir()) if pipeline_root.is_dir() else set()
    began = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        progress = ProgressLog(log=log, terminal=terminal)
        try:
            with contextlib.redirect_stdout(progress), warnings.catch_warnings():
                # The steps' image names a registry, not "python"; locally they run in this interpreter.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                iris_ab_pipeline(**arguments)
        except RuntimeError as exc:
            failed = next((s for s in progress.steps if s.status != "SUCCESS"), None)
            if failed is None:
                raise PipelineRunFailed(f"the pipeline failed: {exc}\nfull log: {log_path}") from exc
            reason = progress.last_error.get(failed.name, "see the log for the traceback")
            raise PipelineRunFailed(f"step '{failed.name}' failed: {reason}\nfull log: {log_path}") from exc
    ours = sorted(set(pipeline_root.iterdir()) - earlier) if pipeline_root.is_dir() else []
    return LocalRunResult(progress.steps, log_path, pipeline_root, time.monotonic() - began,
                          run_dir=ours[-1] if ours else None)
