"""Hour-of-week activity profiles: when each user is usually active, in their local time.

A profile is 168 counts of activity events, index ``weekday * 24 + hour`` (Monday = 0),
over the ``PROFILE_DAYS`` before ``now``. The database counts events per UTC hour of the
week (one ``GROUP BY``, no per-user query); each UTC hour then moves to the user's local
hour with the zone's offset at ``now`` (a half-hour offset assigns the hour by its
middle). Events from the other side of a DST change land one hour off: a habit is not
that precise.

A user with fewer than ``MIN_OWN_EVENTS`` events has too little history of their own:
they get the profile of the journey's audience (every user it has enrolled), else the
whole population's. Those group profiles are computed at most once per store, group and
local day.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from orchestrator.audience.features import epoch_seconds
from orchestrator.store.tables import ENROLLMENTS, EVENTS

PROFILE_DAYS = 90
MIN_OWN_EVENTS = 5
MIN_GROUP_EVENTS = 50
HOURS_OF_WEEK = 168
_THURSDAY = 3  # 1970-01-01, hour 0 of the epoch, was a Thursday

Profile = list[float]

_GROUPS: dict[tuple[str, str, str], Profile] = {}
_GROUPS_KEEP = 32


def user_profiles(
    conn: Connection,
    zones: Mapping[str, ZoneInfo],
    *,
    now: datetime,
    activity_events: Collection[str],
    journey_id: str | None = None,
    group_zone: ZoneInfo,
) -> dict[str, tuple[Profile, str]]:
    """``{user_id: (profile, source)}`` for the users in ``zones`` (their time zones);
    ``source`` is ``own``, ``journey`` or ``population`` (see the module docstring)."""
    utc = _utc_counts(conn, list(zones), now=now, activity=activity_events)
    found: dict[str, tuple[Profile, str]] = {}
    for user_id, zone in zones.items():
        counts = utc.get(user_id, {})
        if sum(counts.values()) >= MIN_OWN_EVENTS:
            found[user_id] = (localize(counts, zone, now), "own")
        else:
            found[user_id] = group_profile(
                conn, now=now, activity_events=activity_events, journey_id=journey_id,
                zone=group_zone,
            )
    return found


def group_profile(
    conn: Connection,
    *,
    now: datetime,
    activity_events: Collection[str],
    journey_id: str | None,
    zone: ZoneInfo,
) -> tuple[Profile, str]:
    """The journey audience's profile, else the population's (cached per local day)."""
    for source in (("journey",) if journey_id else ()) + ("population",):
        key = (str(conn.engine.url), f"{source}:{journey_id or ''}",
               now.astimezone(zone).date().isoformat())
        if key not in _GROUPS:
            counts = _group_counts(conn, now=now, activity=activity_events,
                                   journey_id=journey_id if source == "journey" else None)
            while len(_GROUPS) >= _GROUPS_KEEP:
                _GROUPS.pop(next(iter(_GROUPS)))
            _GROUPS[key] = localize(counts, zone, now) if sum(counts.values()) else []
        profile = _GROUPS[key]
        if sum(profile) >= MIN_GROUP_EVENTS or source == "population":
            return (profile or [0.0] * HOURS_OF_WEEK), source
    raise AssertionError("unreachable: the population is the last source")


def localize(utc_counts: Mapping[int, float], zone: ZoneInfo, now: datetime) -> Profile:
    """Counts per UTC hour of the week → a local profile, with ``zone``'s offset at ``now``."""
    offset = now.astimezone(zone).utcoffset() or timedelta(0)
    shift = offset.total_seconds() / 3600
    profile = [0.0] * HOURS_OF_WEEK
    for hour, count in utc_counts.items():
        local = int((hour + 0.5 + shift) // 1) % HOURS_OF_WEEK
        profile[local] += count
    return profile


def _utc_hour() -> Any:
    return (epoch_seconds(EVENTS.c.ts) // 3600 + _THURSDAY * 24) % HOURS_OF_WEEK


def _utc_counts(
    conn: Connection, user_ids: list[str], *, now: datetime, activity: Collection[str]
) -> dict[str, dict[int, float]]:
    if not user_ids:
        return {}
    e = EVENTS.c
    hour = _utc_hour().label("hour")
    rows = conn.execute(
        select(e.user_id, hour, func.count().label("n"))
        .where(e.user_id.in_(user_ids), e.name.in_(list(activity)))
        .where(e.ts > now - timedelta(days=PROFILE_DAYS), e.ts <= now)
        .group_by(e.user_id, hour)
    ).all()
    counts: dict[str, dict[int, float]] = {}
    for user_id, h, n in rows:
        counts.setdefault(user_id, {})[int(h)] = float(n)
    return counts


def _group_counts(
    conn: Connection, *, now: datetime, activity: Collection[str], journey_id: str | None
) -> dict[int, float]:
    e = EVENTS.c
    hour = _utc_hour().label("hour")
    stmt = (
        select(hour, func.count().label("n"))
        .where(e.name.in_(list(activity)))
        .where(e.ts > now - timedelta(days=PROFILE_DAYS), e.ts <= now)
        .group_by(hour)
    )
    if journey_id is not None:
        audience = select(ENROLLMENTS.c.user_id).where(ENROLLMENTS.c.journey_id == journey_id)
        stmt = stmt.where(e.user_id.in_(audience))
    return {int(h): float(n) for h, n in conn.execute(stmt).all()}


__all__ = ["MIN_OWN_EVENTS", "PROFILE_DAYS", "group_profile", "localize", "user_profiles"]
