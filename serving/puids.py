"""Which arm answered each recent prediction, by its puid, and whether its feedback was counted.

Feedback that carries no ``response.meta.routing`` (Seldon's ``feedback()`` may omit the response)
names its prediction only by ``meta.puid``; the executor finds the arm here. The same memory makes
a prediction's feedback count once, and lets the executor refuse feedback whose routing contradicts
the arm that really answered, so nobody can credit the wrong arm.

Bounded in count and in age, with two generations of plain dicts (O(1) per prediction, no per-entry
objects but the puid string the response already holds): new puids go into the current generation;
when it holds ``capacity / 2`` puids or is ``window / 2`` old, it becomes the previous one and the
one before is dropped; a previous generation that began a whole window ago is dropped too. So a
puid among the last ``capacity / 2`` predictions and younger than ``window / 2`` is always
remembered, and none beyond the last ``capacity`` or older than ``window`` is. With the defaults
(100 000 puids, 1 h): at most ~12 MiB, always the last 50 000 puids of the last 30 minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CAPACITY = 100_000
WINDOW_SECONDS = 3600.0
_COUNTED = 1 << 16
"""Added to an arm index once that prediction's feedback was counted (arm indexes are tiny)."""


class PuidMemory:
    def __init__(self, capacity: int = CAPACITY, window: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 2 or not window > 0:
            raise ValueError(f"capacity must be at least 2 and window positive, got {capacity}, {window}")
        self.capacity = capacity
        self.window = window
        self._clock = clock
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._started = self._previous_started = clock()

    def remember(self, puid: str, arm: int) -> None:
        """``puid`` was answered by ``arm`` (a puid a client sends again starts over, uncounted)."""
        self._age(self._clock(), full=len(self._current) >= self.capacity // 2)
        self._previous.pop(puid, None)
        self._current[puid] = arm

    def arm(self, puid: str) -> int | None:
        """The arm that answered ``puid``, or ``None`` if it is not (or no longer) remembered."""
        value = self._lookup(puid)
        return None if value is None else value % _COUNTED

    def counted(self, puid: str) -> bool:
        value = self._lookup(puid)
        return value is not None and value >= _COUNTED

    def mark_counted(self, puid: str, arm: int) -> None:
        """Feedback for ``puid`` (answered by ``arm``) was counted: a repeat will not be."""
        self._lookup(puid)  # ages the generations first, so the mark lands where lookups look
        for generation in (self._current, self._previous):
            if puid in generation:
                generation[puid] = arm + _COUNTED
                return
        self.remember(puid, arm)
        self._current[puid] = arm + _COUNTED

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _lookup(self, puid: str) -> int | None:
        self._age(self._clock())
        value = self._current.get(puid)
        return self._previous.get(puid) if value is None else value

    def _age(self, now: float, full: bool = False) -> None:
        """Start a new generation when the current one is full or ``window / 2`` old (so each holds
        puids of at most half a window), and drop the previous one once it began a window ago."""
        if full or now - self._started >= self.window / 2:
            self._previous, self._previous_started = self._current, self._started
            self._current, self._started = {}, now
        if now - self._previous_started >= self.window:
            self._previous = {}
