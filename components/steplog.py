"""The one line a step tells the person watching: what it did, and how long its own work took.

A step's wall time is KFP's process start and executor plus the step's work; printing the work
(measured from this module's import, the first thing every step body does) lets the progress view and
``bench/pipeline_bench.py`` tell the two apart. ``abflow run`` shows every ``abflow:`` line.

``finish`` is a step's last line. A process that imported scipy/scikit-learn spends 0.3-0.4 s in the
interpreter's final garbage collection after the step's outputs are written; freezing the heap once
nothing but exit follows leaves those objects out of that collection (measured: a process importing
sklearn.linear_model and scipy.stats exits 0.29-0.40 s after its last statement, 0.04 s with the
freeze). It is an explicit call, not an import-time hook, so importing this module changes nothing.
"""

import gc
import time

_STARTED = time.monotonic()


def note(message: str) -> None:
    print(f"abflow: {message} [{time.monotonic() - _STARTED:.2f}s of work]", flush=True)


def finish(message: str) -> None:
    """``note`` the step's outcome, then freeze the heap: only the process's exit comes after this."""
    note(message)
    gc.freeze()
