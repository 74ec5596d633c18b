import re

import pytest

from abflow.components import steplog


def test_note_says_what_and_how_long_the_work_took(capsys: pytest.CaptureFixture[str]) -> None:
    steplog.note("trained, accuracy 0.974")
    assert re.fullmatch(r"abflow: trained, accuracy 0\.974 \[\d+\.\d\ds of work\]\n", capsys.readouterr().out)
