"""The README's two commands are the project's front door: CI must run exactly the second one."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, re.S)


def test_readme_has_two_commands_and_ci_runs_the_test_one() -> None:
    setup_and_run, test = readme_commands()
    assert "abflow run" in setup_and_run and "pip install" in setup_and_run
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert f"exec {test}" in ci_script



def test_every_abflow_command_in_the_readme_parses() -> None:
    """The tour is copy-pasted by newcomers: a renamed flag must fail here, not on their screen."""
    import shlex

    from abflow.pipelines.cli import build_parser

    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [line.strip() for block in re.findall(r"```bash\n(.+?)```", text, re.S) for line in block.splitlines()]
    abflow_lines = [part for line in commands if (part := line.split("&&")[-1].strip()).startswith("abflow ")]
    assert len(abflow_lines) >= 5
    for line in abflow_lines:
        build_parser().parse_args(shlex.split(line)[1:])


RUN_SAMPLE_INTRO = "**1. Run locally.**"
# What differs from one run to the next, masked in both the README's sample and a real run's output.
VARYING = [
    (re.compile(r"(?:file://)?/[^\s'\"]*?/abflow-data"), "<data-dir>"),
    (re.compile(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{6}"), "<version>"),
    (re.compile(r"iris-ab-[\d-]+"), "<run>"),
    (re.compile(r"run-\d{8}T\d+Z"), "<log>"),
    (re.compile(r":[0-9a-f]{12}\b"), ":<tag>"),
    (re.compile(r"\d+(?:\.\d+)?(?:e-?\d+)?"), "N"),
]


def masked(text: str) -> list[str]:
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text.strip("\n").splitlines()


def shape(text: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The masked lines before the steps, each step's lines (sorted: kfp.local runs independent steps,
    such as store and build-image, in either order) and the lines after them."""
    head: list[str] = []
    steps: list[list[str]] = []
    tail: list[str] = []
    for line in masked(text):
        if line.startswith("[N/N] "):
            steps.append([line])
        elif steps and not tail and line.startswith("      "):
            steps[-1].append(line)
        elif steps:
            tail.append(line)
        else:
            head.append(line)
    return head, sorted(steps), tail


def readme_run_sample() -> str:
    section = (ROOT / "README.md").read_text().split(RUN_SAMPLE_INTRO, 1)[1]
    return re.findall(r"```text\n(.+?)```", section, re.S)[0]


def test_masking_keeps_what_a_reader_compares() -> None:
    assert masked("      ok in 3.7s\n[2/9] train ...") == ["      ok in Ns", "[N/N] train ..."]
    assert masked("stored file:///tmp/x/abflow-data/models/iris/20261203-171146-654-32e57d") == [
        "stored <data-dir>/models/iris/<version>"]
    run = "start\n[1/2] b ...\n      ok\n[2/2] a ...\n      ok in 1s\ndone\n  try"
    assert shape(run) == (["start"], [["[N/N] a ...", "      ok in Ns"], ["[N/N] b ...", "      ok"]],
                          ["done", "  try"])


@pytest.mark.slow
def test_the_readme_run_sample_is_what_a_first_run_prints(tmp_path: Path) -> None:
    """The tour's sample is pasted from a real first run; every line must still be what a first run
    prints, up to numbers, paths, versions and the port (regenerate it with a real run when this fails)."""
    from tests.fixtures.processes import free_port

    port = free_port()
    try:
        result = subprocess.run([sys.executable, "-m", "abflow.pipelines.cli", "run", "--local-port", str(port),
                                 "--p99-budget-ms", "5000"],  # a loaded machine must not fail the smoke test
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([sys.executable, "-m", "abflow.pipelines.cli", "down", "--state-dir",
                        str(tmp_path / "abflow-data" / "serving")], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert shape(readme_run_sample()) == shape(result.stderr + result.stdout)
