import re
import subprocess
import sys

import pytest

from abflow.components import steplog


def test_note_says_what_and_how_long_the_work_took(capsys: pytest.CaptureFixture[str]) -> None:
    steplog.note("trained, accuracy 0.974")
    assert re.fullmatch(r"abflow: trained, accuracy 0\.974 \[\d+\.\d\ds of work\]\n", capsys.readouterr().out)


def test_importing_steplog_registers_nothing_at_exit() -> None:
    """A library import must not change how the importing process exits."""
    code = ("import atexit, sys; before = atexit._ncallbacks(); import abflow.components.steplog; "
            "sys.exit(atexit._ncallbacks() - before)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
