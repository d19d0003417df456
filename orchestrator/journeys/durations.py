"""Durations (``30s``, ``90m``, ``24h``, ``1d``, ``2w``, ``1d12h``) and local time windows.

Durations are elapsed time: ``1d`` is always 86,400 s, whatever the calendar does.
A ``LocalWindow`` ("10:00-20:00") is a range of local wall-clock times, start included,
end excluded; it may cross midnight ("22:00-06:00"); "24:00" is accepted as an end.
``next_in_window`` is the one place that turns "wait until the window" into a UTC instant,
exact across DST changes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

DURATION_PATTERN = r"^(\d+[smhdw])+$"
WINDOW_PATTERN = r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(DURATION_PATTERN)
_PART = re.compile(r"(\d+)([smhdw])")
_WINDOW = re.compile(WINDOW_PATTERN)
_DURATION_HELP = "write a number and a unit (s, m, h, d, w), e.g. 30s, 90m, 24h, 1d, 2w or 1d12h"


def parse_duration(text: str) -> timedelta:
    """``"1d12h"`` → ``timedelta(days=1, hours=12)``; raises ``ValueError`` saying how to fix it."""
    if not isinstance(text, str) or not _DURATION.match(text.strip()):
        raise ValueError(f"bad duration {text!r}: {_DURATION_HELP}")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(text.strip()))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The canonical text of a duration: ``timedelta(hours=36)`` → ``"1d12h"`` (no weeks:
    ``14d`` reads better than ``2w``)."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class LocalWindow:
    """Local wall-clock times ``[start, end)``; ``start > end`` crosses midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> LocalWindow:
        """``"10:00-20:00"`` → ``LocalWindow(time(10), time(20))``; raises ``ValueError``."""
        if not isinstance(text, str) or not _WINDOW.match(text.strip()):
            raise ValueError(
                f"bad window {text!r}: write local times as HH:MM-HH:MM, e.g. 10:00-20:00 "
                "(it may cross midnight, e.g. 22:00-06:00)"
            )
        first, second = text.strip().split("-")
        start = time.fromisoformat(first)
        end = time(0) if second == "24:00" else time.fromisoformat(second)
        if start == end:
            raise ValueError(f"bad window {text!r}: start and end are the same time")
        return cls(start, end)

    def contains(self, t: time) -> bool:
        """Is local time ``t`` inside the window (start included, end excluded)?"""
        t = t.replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def within(self, other: LocalWindow) -> bool:
        """Is every minute of this window also inside ``other``? (Used for "only tighten".)"""
        minutes = (time(m // 60, m % 60) for m in range(24 * 60))
        return all(other.contains(t) for t in minutes if self.contains(t))

    @property
    def length(self) -> timedelta:
        start = self.start.hour * 60 + self.start.minute
        end = self.end.hour * 60 + self.end.minute
        return timedelta(minutes=(end - start) % (24 * 60))

    def __str__(self) -> str:
        end = "24:00" if self.end == time(0) else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end}"


# A window start recurs every local day; two days plus a DST jump always contain the next one.
_HORIZON = timedelta(hours=52)


def next_in_window(at_utc: datetime, tz: ZoneInfo, window: LocalWindow) -> datetime:
    """The first instant ``>= at_utc`` whose local time in ``tz`` lies inside ``window``.

    ``at_utc`` itself when it is already inside. Exact across DST: when the window start
    does not exist locally (skipped by a spring-forward) the result is the first instant
    after the jump; when the clocks fall back into the window, the fall-back instant.
    """
    at_utc = at_utc.astimezone(UTC)
    for seg_start, seg_end in _constant_offset_segments(at_utc, at_utc + _HORIZON, tz):
        found = _first_in_segment(seg_start, seg_end, tz, window)
        if found is not None:
            return found
    raise AssertionError(f"no instant inside {window} within {_HORIZON} of {at_utc}")


def _first_in_segment(
    seg_start: datetime, seg_end: datetime, tz: ZoneInfo, window: LocalWindow
) -> datetime | None:
    """Inside one stretch of constant UTC offset, local time = UTC + offset moves linearly."""
    offset = _utc_offset(seg_start, tz)
    local = (seg_start + offset).replace(tzinfo=None)
    if window.contains(local.time()):
        return seg_start
    start = datetime.combine(local.date(), window.start)
    if start <= local:
        start += timedelta(days=1)
    candidate = (start - offset).replace(tzinfo=UTC)
    return candidate if candidate < seg_end else None


def _constant_offset_segments(
    begin: datetime, stop: datetime, tz: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    """Split ``[begin, stop)`` at every UTC-offset change of ``tz`` (found to the second)."""
    segments = []
    cursor = begin
    while cursor < stop:
        change = _next_offset_change(cursor, stop, tz)
        segments.append((cursor, change))
        cursor = change
    return segments


def _utc_offset(at: datetime, tz: ZoneInfo) -> timedelta:
    return at.astimezone(tz).utcoffset() or timedelta(0)


def _next_offset_change(begin: datetime, stop: datetime, tz: ZoneInfo) -> datetime:
    base = _utc_offset(begin, tz)
    probe = begin
    while probe < stop:
        ahead = min(probe + timedelta(hours=1), stop)
        if _utc_offset(ahead, tz) != base:
            return _first_second_with_other_offset(probe, ahead, base, tz)
        probe = ahead
    return stop


def _first_second_with_other_offset(
    lo: datetime, hi: datetime, base: timedelta, tz: ZoneInfo
) -> datetime:
    """Offset changes fall on whole UTC seconds: bisect integer timestamps in ``(lo, hi]``."""
    lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if _utc_offset(datetime.fromtimestamp(mid, UTC), tz) == base:
            lo_s = mid
        else:
            hi_s = mid
    return datetime.fromtimestamp(hi_s, UTC)
