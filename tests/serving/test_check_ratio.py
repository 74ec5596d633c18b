"""serving.graph.check_ratio, the one validator of a share of traffic, on every kind of value."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from abflow.serving.graph import check_ratio


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers())
def test_a_number_is_accepted_exactly_when_it_is_in_the_closed_unit_interval(value: float) -> None:
    if not math.isnan(value) and 0 <= value <= 1:
        assert check_ratio(value) == value
    else:
        with pytest.raises(ValueError, match=r"^ratioA must be between 0 and 1, got .*e\.g\. 0\.5$"):
            check_ratio(value)


@given(st.none() | st.booleans() | st.text() | st.lists(st.floats(0, 1)))
def test_anything_but_a_number_is_refused_naming_what_and_where(value: object) -> None:
    with pytest.raises(ValueError) as refused:
        check_ratio(value, "--ratio-a", " (flag)")
    assert str(refused.value).startswith(f"--ratio-a must be between 0 and 1, got {value!r} (flag): ")
