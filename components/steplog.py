"""The one line a step tells the person watching: what it did, and how long its own work took.

A step's wall time is KFP's process start and executor plus the step's work; printing the work
(measured from this module's import, the first thing every step body does) lets the progress view and
``bench/pipeline_bench.py`` tell the two apart. ``abflow run`` shows every ``abflow:`` line.
"""

import time

_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"abflow: {message} [{time.monotonic() - _STARTED:.2f}s of work]", flush=True)
