"""Rebuild the caps in Redis from SQL, the source of truth.

Redis holds nothing SQL cannot rebuild: a touch holds its cap reservation while it is
``sending``, ``unknown``, ``sent`` or ``delivered`` (or ``failed`` as ``unknown_outcome``);
its ``reserved_at`` is the business time of the reservation, its member key
``{enrollment_id}:{step_id}``. Test sends (``touches.test``) are never counted.

A touch still ``claimed`` with a ``reserved_at`` is being gated: the caps gate writes that
mark before it reserves, so a rebuild running meanwhile sees it. Whether its check passed
SQL cannot say, so it is loaded *provisionally*: it counts against the person's other
touches, and is checked again when it reserves (``caps.lua``). Without the mark, a touch
reserved just before the rebuild and frozen just after would hold a slot Redis no longer
counts.

Only reservations inside the longest window can refuse anything, so the engine rebuilds
from ``since = now - horizon`` (an index on ``reserved_at`` serves it), in a task of its
own, never inside a send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.policy.caps import CapsRebuildInterrupted, CapStore, HeldReservation, touch_key
from orchestrator.store.tables import TOUCHES as _TOUCHES

HELD_STATUSES = ("sending", "unknown", "sent", "delivered")
GATING = "claimed"  # with reserved_at: the caps gate is reserving it right now


def _held_filter(since: datetime | None) -> list[sa.ColumnElement[bool]]:
    t = _TOUCHES.c
    # A touch whose outcome stayed unknown keeps its slot (it may have reached the person).
    held = sa.or_(t.status.in_((*HELD_STATUSES, GATING)),
                  sa.and_(t.status == "failed", t.reason == "unknown_outcome"))
    where = [held, t.reserved_at.is_not(None), t.test.is_(False)]
    if since is not None:
        where.append(t.reserved_at >= since)
    return where


def held_reservations(
    engine: Engine, *, since: datetime | None = None
) -> Iterator[HeldReservation]:
    """Every held reservation (reserved at or after ``since``), streamed in one query."""
    t = _TOUCHES.c
    query = sa.select(
        t.user_id, t.channel, t.enrollment_id, t.step_id, t.reserved_at, t.status
    ).where(*_held_filter(since))
    with engine.connect() as conn:
        for row in conn.execute(query.execution_options(yield_per=5000)):
            key = touch_key(row.enrollment_id, row.step_id)
            yield HeldReservation(row.user_id, row.channel, key, row.reserved_at,
                                  provisional=row.status == GATING)


def count_held(engine: Engine, *, since: datetime | None = None) -> int:
    """How many reservations ``held_reservations`` would yield (for a progress bar)."""
    query = sa.select(sa.func.count()).select_from(_TOUCHES).where(*_held_filter(since))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def rebuild_from_store(
    engine: Engine,
    cap_store: CapStore,
    *,
    reset: bool = False,
    since: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    attempts: int = 3,
) -> int:
    """Load every held touch into ``cap_store`` and mark the caps rebuilt; returns the count.

    Call it when ``reserve`` raises ``CapsNeedRebuild``. Another rebuild in progress raises
    ``RetryLater``; a rebuild that Redis interrupts (it restarted again) is started over, at
    most ``attempts`` times. ``since`` may skip reservations older than any cap window.
    """
    for attempt in range(1, attempts + 1):
        try:
            return cap_store.rebuild(
                held_reservations(engine, since=since), reset=reset, progress=progress
            )
        except CapsRebuildInterrupted:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


__all__ = ["HELD_STATUSES", "count_held", "held_reservations", "rebuild_from_store"]
