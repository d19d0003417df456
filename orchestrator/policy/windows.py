"""Pure cap and calendar arithmetic: no I/O, every function takes its ``now``.

Scores are whole **milliseconds since the Unix epoch** of business time (``to_ms``): exact in
a Redis sorted-set score (a double holds integers up to 2**53) and in Lua numbers.

Window semantics (the Lua script and the reference model both follow them):

- a **rolling** window of ``R`` ms counts reservations with score ``> now - R`` (also those
  "in the future", which only a caller with a lagging clock can see). Counting the future too
  keeps the invariant "every interval ``(t - R, t]`` holds at most ``max``" even when callers'
  ``now`` values arrive out of order; a slot frees at ``s_k + R`` where ``s_k`` is the k-th
  oldest counted score, ``k = count - max + 1``.
- a **calendar** window (day, week from Monday, month) is ``[start, end)`` of local wall time
  in a time zone; a slot frees at ``end``.

Local wall times that a DST change skips resolve forward: a local time means "the first
instant whose wall clock reads at least that" (``resolve_local``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

CalendarUnit = Literal["day", "week", "month"]
CALENDAR_UNITS: tuple[CalendarUnit, ...] = ("day", "week", "month")
# The longest any calendar window can be, DST included (a month of 31 days plus a shifted hour).
CALENDAR_LONGEST_S: dict[CalendarUnit, int] = {
    "day": 25 * 3600,
    "week": 7 * 86400 + 3600,
    "month": 31 * 86400 + 3600,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(at: datetime) -> int:
    """Business time as whole epoch milliseconds (floored); ``at`` must be timezone-aware."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at.isoformat()}: pass a timezone-aware business time")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds ``ms``."""
    return _EPOCH + timedelta(milliseconds=ms)


def resolve_local(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local wall time in ``tz`` is at or after naive ``wall``.

    An existing wall time gives its first occurrence (``fold=0`` when the clock repeats an
    hour); a wall time skipped by a DST jump gives the instant of the jump (02:30 on a
    spring-forward night becomes 03:00 local).
    """
    naive = wall.replace(tzinfo=None)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap: fold=1 reads the wall time with the later offset and lands before the jump,
    # fold=0 after it. Bisect (to the second) for the first instant at or after ``naive``.
    low, high = sorted((first, naive.replace(tzinfo=tz, fold=1).astimezone(UTC)))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) of local ``day`` in ``tz``."""
    return resolve_local(datetime.combine(day, time(0)), tz)


def _period_start_day(day: date, unit: CalendarUnit) -> date:
    if unit == "day":
        return day
    if unit == "week":  # ISO weeks start on Monday, as Chinese calendars do
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_period_day(start: date, unit: CalendarUnit) -> date:
    if unit == "day":
        return start + timedelta(days=1)
    if unit == "week":
        return start + timedelta(days=7)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def calendar_window(now: datetime, unit: CalendarUnit, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC of the calendar ``unit`` (local to ``tz``) that contains ``now``."""
    start_day = _period_start_day(now.astimezone(tz).date(), unit)
    return local_midnight(start_day, tz), local_midnight(_next_period_day(start_day, unit), tz)


def rolling_low_ms(now_ms: int, rolling_ms: int) -> int:
    """A rolling window at ``now_ms`` counts every score strictly above this one."""
    return now_ms - rolling_ms


def rolling_retry_ms(counted_scores: list[int], cap_max: int, rolling_ms: int) -> int | None:
    """When a full rolling window frees a slot, given the scores it counts (any order).

    ``None`` when it never does (``cap_max == 0``).
    """
    if cap_max <= 0:
        return None
    ordered = sorted(counted_scores)
    return ordered[len(ordered) - cap_max] + rolling_ms


def latest_retry(retries: list[int | None]) -> int | None:
    """When every refusing window has a slot again: the latest; ``None`` if one never frees."""
    if any(r is None for r in retries):
        return None
    return max(r for r in retries if r is not None)


__all__ = [
    "CALENDAR_LONGEST_S",
    "CALENDAR_UNITS",
    "CalendarUnit",
    "calendar_window",
    "from_ms",
    "latest_retry",
    "local_midnight",
    "resolve_local",
    "rolling_low_ms",
    "rolling_retry_ms",
    "to_ms",
]
