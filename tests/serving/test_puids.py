"""The executor's memory of recent puids keeps the window it states: always the last capacity/2 puids
of the last window/2, never one beyond the last capacity or older than the window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abflow.serving.puids import PuidMemory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# Each step: seconds to wait, then remember one new puid (answered by arm 0 or 1).
steps = st.lists(st.tuples(st.floats(min_value=0, max_value=40), st.integers(0, 1)), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(steps=steps, capacity=st.integers(2, 40))
def test_the_stated_window_holds_whatever_the_traffic(steps: list[tuple[float, int]], capacity: int) -> None:
    window = 100.0
    clock = Clock()
    memory = PuidMemory(capacity=capacity, window=window, clock=clock)
    history: list[tuple[str, float, int]] = []
    for number, (wait, arm) in enumerate(steps):
        clock.now += wait
        puid = f"p{number}"
        memory.remember(puid, arm)
        history.append((puid, clock.now, arm))
    clock.now += steps[0][0]  # look a little later, as feedback comes after its prediction
    for age_rank, (puid, at, arm) in enumerate(reversed(history)):
        age = clock.now - at
        if age_rank < capacity // 2 and age < window / 2:
            assert memory.arm(puid) == arm, (puid, age_rank, age)
        if age_rank >= capacity or age >= window:
            assert memory.arm(puid) is None, (puid, age_rank, age)
    assert len(memory) <= capacity


def test_a_counted_puid_stays_counted_and_a_new_prediction_with_it_starts_over() -> None:
    memory = PuidMemory(capacity=10)
    memory.remember("a", 1)
    assert (memory.arm("a"), memory.counted("a")) == (1, False)
    memory.mark_counted("a", 1)
    assert (memory.arm("a"), memory.counted("a")) == (1, True)
    memory.mark_counted("unseen", 0)  # feedback with routing for a prediction not remembered
    assert (memory.arm("unseen"), memory.counted("unseen")) == (0, True)
    memory.remember("a", 0)
    assert (memory.arm("a"), memory.counted("a")) == (0, False)


def test_nothing_is_remembered_after_a_whole_idle_window() -> None:
    clock = Clock()
    memory = PuidMemory(capacity=10, window=60, clock=clock)
    memory.remember("a", 1)
    clock.now = 60
    assert memory.arm("a") is None and len(memory) == 0


@pytest.mark.parametrize(("capacity", "window"), [(1, 10.0), (10, 0.0), (10, -1.0)])
def test_a_memory_that_could_hold_nothing_is_refused(capacity: int, window: float) -> None:
    with pytest.raises(ValueError, match="capacity must be at least 2"):
        PuidMemory(capacity=capacity, window=window)
