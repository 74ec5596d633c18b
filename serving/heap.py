"""Give the memory that large request bodies held back to the kernel once they are gone.

After a burst of large uploads (``bench/abuse.py``, phase b: 40 connections each holding 7 MiB of a
body) the executor's RSS stayed 28 MiB up for as long as it ran. Two things held it, and both had to
go (measured: either step alone left RSS where it was):

* the chunks of a body that was cut off hang off the connection's reference cycles (protocol, stream
  reader, payload), which only the cyclic collector frees, and an idle server allocates too little to
  trigger a collection;
* freed, those socket-sized chunks (asyncio reads up to 256 KiB at a time) leave holes in glibc's heap,
  which glibc gives back on its own only from the top of the heap; ``malloc_trim(0)`` hands every free
  page of every arena back.

Both cost milliseconds (the collection is short: ``start_http`` froze the long-lived heap), so they run
once after the last large body of a burst is released, never per request. Where the C library has no
``malloc_trim`` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Callable

TRIM_DELAY_SECONDS = 0.5


def _malloc_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Coalesces "large bodies were freed" into one collection and trim ``TRIM_DELAY_SECONDS`` later,
    skipped when ``still_idle`` says large bodies are buffered again by then (the next release asks
    again)."""

    def __init__(self, still_idle: Callable[[], bool], trim: Callable[[], object] | None = None,
                 delay: float = TRIM_DELAY_SECONDS) -> None:
        self._still_idle = still_idle
        self._delay = delay
        self._trim = trim if trim is not None else _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None
        self.trims = 0

    def freed(self) -> None:
        if self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self._delay, self._run)

    @property
    def scheduled(self) -> bool:
        return self._pending is not None

    def _run(self) -> None:
        self._pending = None
        if not self._still_idle():
            return
        gc.collect()
        if self._trim is not None:
            self._trim()
        self.trims += 1
