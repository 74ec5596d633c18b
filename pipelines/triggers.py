"""When a recurring run starts: KFP's six-field cron, or an interval, checked before anything is sent.

KFP's scheduler reads cron with a seconds field first (``'0 0 2 * * *'`` is 02:00 daily); the usual
five-field cron is accepted by the API and then fires at the wrong times, so it is refused here with
the six-field form that was probably meant.
"""

from __future__ import annotations

import re

from abflow.pipelines.package import SubmissionError

CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_EXAMPLE = "'0 0 2 * * *' = 02:00 daily"
EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_CRON_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_NAMES = {
    4: ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    5: ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"),
}


def parse_cron(cron: str) -> str:
    """Check a KFP cron expression: six fields, seconds first (or a descriptor such as @daily)."""
    text = " ".join(cron.split())
    if text.startswith("@"):
        if text in CRON_DESCRIPTORS:
            return text
        hint = "; for an interval use --every (e.g. --every 24h)" if text.startswith("@every") else ""
        raise SubmissionError(f"unknown cron descriptor {text!r}: use one of {', '.join(CRON_DESCRIPTORS)}{hint}")
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        hint = f"; did you mean '0 {text}'?" if len(fields) == 5 else ""
        raise SubmissionError(
            f"cron needs 6 fields (seconds first): {CRON_EXAMPLE}; got {len(fields)} in {cron!r}{hint}"
        )
    for index, field in enumerate(fields):
        _check_cron_field(field, index)
    return text


def _check_cron_field(field: str, index: int) -> None:
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES.get(index, ())
    where = f"cron {_CRON_FIELDS[index]} field {field!r}"
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise SubmissionError(f"{where}: step {step!r} must be a positive whole number ({CRON_EXAMPLE})")
        if base in ("*", "?"):
            continue
        for bound in base.split("-", 1):
            value = names.index(bound.upper()) + (1 if index == 4 else 0) if bound.upper() in names else None
            if value is None and bound.isdigit():
                value = int(bound)
            if value is None or not low <= value <= high:
                raise SubmissionError(f"{where}: {bound!r} is not in {low}-{high} ({CRON_EXAMPLE})")


def parse_every(every: str) -> int:
    """``24h``, ``30m``, ``1h30m``, ``2d``, ``90s`` → seconds, for KFP's periodic trigger."""
    text = every.strip().lower()
    parts = re.findall(r"(\d+)([smhd])", text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise SubmissionError(f"--every expects a duration such as 24h, 30m, 1h30m or 2d, got {every!r}")
    seconds = sum(int(number) * EVERY_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise SubmissionError(f"--every must be longer than zero, got {every!r}")
    return seconds
