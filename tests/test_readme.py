"""The README's two commands are the project's front door: CI must run exactly the second one."""

import re
from pathlib import Path

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
