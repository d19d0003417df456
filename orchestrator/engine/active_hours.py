"""Where each sent touch landed in its person's day, for ``recall simulate``'s responses.

The hours are the person's hour-of-week activity profile as ``at: best_hour`` reads it
(``audience.hours.user_profiles``: their own, else the journey audience's or the
population's), ranked by ``journeys.besthour.placement``: one definition of "active hours"
for the engine that picks the hour and the simulation that answers it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from orchestrator.audience.config import load_audience_config
from orchestrator.audience.hours import user_profiles
from orchestrator.clock import as_utc
from orchestrator.engine.cursors import user_timezone
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.besthour import Placement, placement
from orchestrator.store.tables import USERS


def placements(rt: Runtime, conn: Connection, touches: Sequence[Any], *, now: datetime,
               top: int) -> dict[int, Placement | None]:
    """``{touch id: placement}`` for sent touches (rows with ``id``, ``user_id``,
    ``journey_id``, ``journey_version`` and ``sent_at``), profiles as of ``now``."""
    if not touches:
        return {}
    activity = load_audience_config(settings=rt.settings).activity_events
    zones_of = dict(conn.execute(
        select(USERS.c.user_id, USERS.c.timezone)
        .where(USERS.c.user_id.in_({t.user_id for t in touches}))).all())
    by_journey: dict[str, list[Any]] = defaultdict(list)
    for t in touches:
        by_journey[t.journey_id].append(t)
    found: dict[int, Placement | None] = {}
    for journey_id, rows in by_journey.items():
        policy = rt.book.policy_for(rt.book.get(rt.db, journey_id, rows[0].journey_version))
        zones = {t.user_id: user_timezone({"timezone": zones_of.get(t.user_id)},
                                          policy.timezone) for t in rows}
        profiles = user_profiles(conn, zones, now=now, activity_events=activity,
                                 journey_id=journey_id, group_zone=policy.zone)
        for t in rows:
            local = as_utc(t.sent_at).astimezone(zones[t.user_id])
            found[t.id] = placement(profiles[t.user_id][0], local, top)
    return found


__all__ = ["placements"]
