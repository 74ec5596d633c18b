"""Which code a benchmark measured: every result names the commit, and says so when the measured
packages had uncommitted changes (a number from a dirty tree cannot be reproduced from git)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_revision(measured: Sequence[str]) -> str:
    """HEAD, plus a warning when any of the ``measured`` folders has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *measured], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in {', '.join(measured)}" if dirty else head
