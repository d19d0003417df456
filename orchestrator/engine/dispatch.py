"""Due-work claims. Due times live in the database; a tick claims what is due.

- PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` so that several dispatchers (or a
  dispatcher racing a reclaim) never take the same row.
- SQLite: the claim runs in a ``BEGIN IMMEDIATE`` transaction: one writer at a time.

A claim sets a *lease* in real time (never business time). Touches get a fresh
``claim_token``; the task carries it, so a stale or redelivered task finds no touch with its
token and does nothing. Stale work is reclaimed: a claimed touch whose lease ran out goes
back to ``scheduled``; a touch left ``sending`` becomes ``unknown`` (the call may have
happened) and is reconciled with the provider, never blindly resent.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple, cast

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    or_,
    select,
    update,
)

from orchestrator.store.db import session_scope
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from orchestrator.store.tables import JOURNEY_STATES as STATES

BATCHED = frozenset({"wechat_article", "wecom_group_invite"})
_Columns = TypeVarTuple("_Columns")


@dataclass(frozen=True)
class TouchClaim:
    token: str
    channel: str
    touch_ids: tuple[int, ...]


def _paused() -> Select[Any]:
    return select(STATES.c.journey_id).where(STATES.c.state != "active")


def _lock(query: Select[*_Columns], conn: Connection) -> Select[*_Columns]:
    if conn.dialect.name == "postgresql":
        # Every claim query selects table columns first: lock the rows of that table only.
        first = cast(ColumnClause[Any], query.selected_columns[0])
        return query.with_for_update(skip_locked=True, of=first.table)
    return query


def reclaim_stale(conn: Connection, *, real_now: datetime) -> dict[str, int]:
    """Release leases that ran out (their worker died or their task was lost)."""
    cursors = conn.execute(
        update(ENROLLMENTS)
        .where(ENROLLMENTS.c.lease_until < real_now)
        .values(lease_until=None)
    ).rowcount
    claimed = conn.execute(
        update(TOUCHES)
        .where(TOUCHES.c.status == "claimed", TOUCHES.c.lease_until < real_now)
        .values(status="scheduled", claim_token=None, lease_until=None)
    ).rowcount
    unknown = conn.execute(
        update(TOUCHES)
        .where(TOUCHES.c.status == "sending", TOUCHES.c.lease_until < real_now)
        .values(status="unknown", reason="worker_lost", lease_until=None)
    ).rowcount
    return {"cursors": cursors, "touches": claimed, "unknown": unknown}


def claim_cursors(
    conn: Connection, *, now: datetime, real_now: datetime, lease: timedelta, limit: int
) -> list[int]:
    query = (
        select(ENROLLMENTS.c.id)
        .where(
            ENROLLMENTS.c.state == "active",
            ENROLLMENTS.c.due_at <= now,
            ENROLLMENTS.c.lease_until.is_(None),
            ENROLLMENTS.c.journey_id.not_in(_paused()),
        )
        .order_by(ENROLLMENTS.c.due_at, ENROLLMENTS.c.id)
        .limit(limit)
    )
    ids = list(conn.execute(_lock(query, conn)).scalars())
    if ids:
        conn.execute(
            update(ENROLLMENTS).where(ENROLLMENTS.c.id.in_(ids))
            .values(lease_until=real_now + lease)
        )
    return ids


def claimable(now: datetime, gather: timedelta) -> ColumnElement[bool]:
    """Due now; batched channels wait out the gathering window so that a step's touches
    that fall due together leave in one provider call."""
    return or_(
        and_(TOUCHES.c.channel.in_(BATCHED), TOUCHES.c.due_at <= now - gather),
        and_(TOUCHES.c.channel.not_in(BATCHED), TOUCHES.c.due_at <= now),
    )


def claim_touches(
    conn: Connection,
    *,
    now: datetime,
    real_now: datetime,
    lease: timedelta,
    gather: timedelta,
    limit: int,
    max_batch: dict[str, int],
) -> list[TouchClaim]:
    query = (
        select(TOUCHES.c.id, TOUCHES.c.channel, TOUCHES.c.journey_id, TOUCHES.c.step_id)
        .where(
            TOUCHES.c.status == "scheduled",
            claimable(now, gather),
            TOUCHES.c.journey_id.not_in(_paused()),
        )
        .order_by(TOUCHES.c.due_at, TOUCHES.c.priority.desc(), TOUCHES.c.enrollment_id)
        .limit(limit + 1)
    )
    rows = conn.execute(_lock(query, conn)).all()
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for row in rows[:limit]:
        groups[(row.channel, row.journey_id, row.step_id)].append(row.id)
    if len(rows) > limit and len(groups) > 1:
        # The limit cut the last step's touches: leave that step whole for the next tick,
        # so its batches are formed from everything due (no lone article recipient).
        last = rows[limit - 1]
        groups.pop((last.channel, last.journey_id, last.step_id))
    claims: list[TouchClaim] = []
    for (channel, _journey, _step), ids in groups.items():
        size = even_chunk(len(ids), max_batch.get(channel, 500))
        for start in range(0, len(ids), size):
            chunk = tuple(ids[start : start + size])
            token = secrets.token_hex(8)
            conn.execute(
                update(TOUCHES).where(TOUCHES.c.id.in_(chunk))
                .values(status="claimed", claim_token=token, lease_until=real_now + lease)
            )
            claims.append(TouchClaim(token, channel, chunk))
    return claims


def even_chunk(n: int, limit: int) -> int:
    """The chunk size that splits ``n`` into the fewest chunks of at most ``limit``, as even
    as possible: 10,001 is 5,001 + 5,000, never 10,000 + a lone one (a mass send needs two)."""
    chunks = max(1, -(-n // limit))
    return max(1, -(-n // chunks))


def claim_unknown(
    conn: Connection, *, real_now: datetime, lease: timedelta, limit: int
) -> list[str]:
    """Batches holding touches whose outcome is unknown, leased for reconciliation."""
    free = or_(TOUCHES.c.lease_until.is_(None), TOUCHES.c.lease_until < real_now)
    query = (
        select(TOUCHES.c.batch_id)
        .where(TOUCHES.c.status == "unknown", TOUCHES.c.batch_id.is_not(None), free)
        .distinct()
        .limit(limit)
    )
    batches = [b for b in conn.execute(query).scalars() if b]
    if batches:
        conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.status == "unknown", TOUCHES.c.batch_id.in_(batches))
            .values(lease_until=real_now + lease)
        )
    return batches


@dataclass
class Tick:
    cursors: list[int]
    touches: list[TouchClaim]
    unknown_batches: list[str]
    reclaimed: dict[str, int]

    @property
    def empty(self) -> bool:
        return not (self.cursors or self.touches or self.unknown_batches)


def claim_due(
    engine: Engine,
    *,
    now: datetime,
    real_now: datetime,
    lease: timedelta,
    gather: timedelta,
    limit: int,
    max_batch: dict[str, int],
) -> Tick:
    with session_scope(engine, immediate=True) as session:
        conn = session.connection()
        reclaimed = reclaim_stale(conn, real_now=real_now)
        cursors = claim_cursors(conn, now=now, real_now=real_now, lease=lease, limit=limit)
        touches = claim_touches(conn, now=now, real_now=real_now, lease=lease, gather=gather,
                                limit=limit, max_batch=max_batch)
        unknown = claim_unknown(conn, real_now=real_now, lease=lease, limit=limit)
    return Tick(cursors, touches, unknown, reclaimed)
