"""Send-time optimisation, pure: when, within a day of its due time, a touch should go.

A send step with ``at: best_hour`` goes at the user's most active local hour. The hours come
from an *hour-of-week profile* (168 counts of activity events, index ``weekday * 24 +
hour`` in the user's local time, Monday = 0). Each candidate hour is scored by its own
count plus the mean count of the same hour on the other days, so a sparse week still
ranks the hours of the day.

Candidates are the due time itself and every local whole hour after it, up to 24 hours
later; only those inside the policy's send hours for the channel (holiday hours on rest
days) and inside the step's window count. The best-scoring one wins, the earliest on a
tie, so an empty profile changes nothing. When no candidate is allowed the due time
stands (quiet hours then defer the touch as usual). Local hours are read from instants,
never built from wall times, so a DST jump neither invents nor loses an hour: a skipped
hour is simply not a candidate, a repeated one is two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from orchestrator.journeys.durations import LocalWindow
from orchestrator.journeys.model import Policy

HOURS_OF_WEEK = 168
LOOK_AHEAD = timedelta(hours=24)
_STEP = timedelta(minutes=15)  # every zone's UTC offset is a whole number of quarter hours


def hour_of_week(local: datetime) -> int:
    """Index of a local time in a profile: ``weekday * 24 + hour`` (Monday = 0)."""
    return local.weekday() * 24 + local.hour


def candidates(due: datetime, tz: ZoneInfo, look_ahead: timedelta = LOOK_AHEAD) -> list[datetime]:
    """``due`` and every instant after it, up to ``due + look_ahead``, at which the local
    clock in ``tz`` reads a whole hour (UTC, in order)."""
    due = due.astimezone(UTC)
    first = datetime.fromtimestamp(
        (due.timestamp() // _STEP.total_seconds() + 1) * _STEP.total_seconds(), UTC
    )
    found = [due]
    at = first
    while at <= due + look_ahead:
        local = at.astimezone(tz)
        if local.minute == 0 and local.second == 0:
            found.append(at)
        at += _STEP
    return found


def hour_scores(profile: Sequence[float]) -> list[float]:
    """Each hour of the week's count plus the mean of the same hour over the week."""
    if len(profile) != HOURS_OF_WEEK:
        raise ValueError(f"a profile has {HOURS_OF_WEEK} hours of the week, got {len(profile)}")
    daily = [sum(profile[day * 24 + hour] for day in range(7)) / 7 for hour in range(24)]
    return [profile[i] + daily[i % 24] for i in range(HOURS_OF_WEEK)]


def best_time(
    due: datetime,
    tz: ZoneInfo,
    profile: Sequence[float],
    allowed: Callable[[datetime], bool],
    look_ahead: timedelta = LOOK_AHEAD,
) -> datetime:
    """The allowed candidate (``allowed`` gets the local time) whose hour scores highest;
    the earliest on a tie; ``due`` when none is allowed. Never later than ``due +
    look_ahead``, never earlier than ``due``."""
    scores = hour_scores(profile)
    best: tuple[float, datetime] | None = None
    for at in candidates(due, tz, look_ahead):
        local = at.astimezone(tz)
        if not allowed(local):
            continue
        score = scores[hour_of_week(local)]
        if best is None or score > best[0]:
            best = (score, at)
    return due if best is None else best[1]


Placement = Literal["top", "inside", "outside"]


def placement(profile: Sequence[float], local: datetime, top: int = 3) -> Placement | None:
    """Where a local time falls in the person's day, by the same scores ``best_time`` ranks
    hours with: ``top`` among the ``top`` best-scoring hours of that weekday, ``inside``
    their active hours (a score at least the day's mean), else ``outside``; ``None`` for an
    empty profile (nothing known about them)."""
    scores = hour_scores(profile)
    day = scores[local.weekday() * 24:local.weekday() * 24 + 24]
    if not any(day):
        return None
    score = day[local.hour]
    if score > 0 and score >= sorted(day, reverse=True)[min(top, 24) - 1]:
        return "top"
    return "inside" if score > 0 and score >= sum(day) / 24 else "outside"


def allowed_hours(
    policy: Policy, channel: str, window: LocalWindow | None
) -> Callable[[datetime], bool]:
    """Inside the channel's send hours (those of a rest day on a rest day) and ``window``."""

    def allowed(local: datetime) -> bool:
        hours = policy.send_window(channel, local.date())
        if hours is not None and not hours.contains(local.time()):
            return False
        return window is None or window.contains(local.time())

    return allowed


__all__ = [
    "HOURS_OF_WEEK",
    "LOOK_AHEAD",
    "allowed_hours",
    "best_time",
    "candidates",
    "hour_of_week",
    "hour_scores",
    "placement",
]
