"""``at: best_hour`` in the engine: new touches of such steps move to the user's best hour.

Profiles for every such touch of a cursor batch come from one query
(``audience.hours.user_profiles``); the choice itself is pure
(``journeys.besthour.best_time``). The touch keeps the chosen time as both its due time and
its first due time, so caps' deferral counts from when it was meant to go.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from orchestrator.audience.config import load_audience_config
from orchestrator.audience.hours import user_profiles
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.assign import variant_for
from orchestrator.journeys.besthour import allowed_hours, best_time
from orchestrator.journeys.model import Journey, Policy, SendStep


@dataclass(frozen=True)
class BestHour:
    """A touch row about to be written, of send step ``index`` of ``journey``."""

    touch: dict[str, Any]
    journey: Journey
    index: int
    tz: ZoneInfo


def schedule_best_hours(
    rt: Runtime, conn: Connection, timed: list[BestHour], *, now: datetime
) -> None:
    """Set each touch's due time to its best hour (in place)."""
    activity = load_audience_config(settings=rt.settings).activity_events
    by_journey: dict[str, list[BestHour]] = defaultdict(list)
    for item in timed:
        by_journey[item.journey.id].append(item)
    for journey_id, items in by_journey.items():
        policy = rt.book.policy_for(items[0].journey)
        profiles = user_profiles(
            conn, {i.touch["user_id"]: i.tz for i in items}, now=now,
            activity_events=activity, journey_id=journey_id, group_zone=policy.zone,
        )
        for item in items:
            step = item.journey.steps[item.index]
            assert isinstance(step, SendStep)
            allowed = allowed_hours(policy, step.send, item.journey.window_before(item.index))
            profile, _ = profiles[item.touch["user_id"]]
            chosen = best_time(item.touch["due_at"], item.tz, profile, allowed)
            item.touch["due_at"] = item.touch["first_due_at"] = chosen


def preview_times(
    db: Engine,
    journey: Journey,
    policy: Policy,
    user: Mapping[str, Any],
    *,
    now: datetime,
    activity_events: Collection[str],
) -> dict[str, tuple[datetime, ZoneInfo, str]]:
    """For ``recall preview``: each step that goes at ``best_hour`` for this user (the step's
    or their variant's ``at``), the time if it came due at ``now``,
    the user's zone and where the profile came from (own, journey, population)."""
    from orchestrator.engine.cursors import user_timezone  # cursors imports us

    steps = [(i, s) for i, s in enumerate(journey.steps) if isinstance(s, SendStep)
             and s.at_for(variant_for(journey.id, s, user["user_id"])) == "best_hour"]
    if not steps:
        return {}
    tz = user_timezone(user, policy.timezone)
    with db.connect() as conn:
        profiles = user_profiles(
            conn, {user["user_id"]: tz}, now=now, activity_events=activity_events,
            journey_id=journey.id, group_zone=policy.zone,
        )
    profile, source = profiles[user["user_id"]]
    return {
        step.id: (
            best_time(now, tz, profile, allowed_hours(policy, step.send, journey.window_before(i))),
            tz,
            source,
        )
        for i, step in steps
    }
