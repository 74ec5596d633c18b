"""The one line a step tells the person watching: what it did, and how long its own work took.

A step's wall time is KFP's process start and executor plus the step's work; printing the work
(measured from this module's import, the first thing every step body does) lets the progress view and
``bench/pipeline_bench.py`` tell the two apart. ``abflow run`` shows every ``abflow:`` line.

Importing it also makes the step's process exit quickly: a process that imported scipy/scikit-learn
spends 0.3-0.4 s in the interpreter's final garbage collection, after the step's outputs are already
written. Freezing the heap at exit leaves those objects out of that collection (measured: a process
importing sklearn.linear_model and scipy.stats exits 0.29-0.40 s after its last statement, 0.04 s
with the freeze).
"""

import atexit
import gc
import time

_STARTED = time.monotonic()
atexit.register(gc.freeze)


def note(message: str) -> None:
    print(f"abflow: {message} [{time.monotonic() - _STARTED:.2f}s of work]", flush=True)
