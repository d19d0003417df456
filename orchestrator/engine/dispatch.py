"""Due-work claims. Due times live in the database; a tick claims what is due.

- PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` so that several dispatchers (or a
  dispatcher racing a reclaim) never take the same row.
- SQLite: the claim runs in a ``BEGIN IMMEDIATE`` transaction: one writer at a time.

A claim sets a *lease* in real time (never business time). Touches get a fresh
``claim_token``; the task carries it, so a stale or redelivered task finds no touch with its
token and does nothing. Stale work is reclaimed: a claimed touch whose lease ran out goes
back to ``scheduled``. Frozen send batches carry their own lease and next attempt time: a
batch is claimed when its attempt is due and nobody holds it (its last holder finished, or
died and the lease ran out), and whoever gets it looks up before it sends (``delivery``).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple, cast

from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    Select,
    and_,
    bindparam,
    or_,
    select,
    update,
)

from orchestrator.engine.attempts import OPEN_STATES
from orchestrator.store.db import session_scope
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from orchestrator.store.tables import JOURNEY_STATES as STATES
from orchestrator.store.tables import SEND_BATCHES as BATCHES
from orchestrator.store.types import among

BATCHED = frozenset({"wechat_article", "wecom_group_invite"})
_Columns = TypeVarTuple("_Columns")


@dataclass(frozen=True)
class TouchClaim:
    token: str
    channel: str
    touch_ids: tuple[int, ...]


@dataclass(frozen=True)
class BatchClaim:
    batch_id: str
    token: str


def _paused() -> Select[Any]:
    return select(STATES.c.journey_id).where(STATES.c.state != "active")


def _lock(query: Select[*_Columns], conn: Connection) -> Select[*_Columns]:
    if conn.dialect.name == "postgresql":
        # Every claim query selects table columns first: lock the rows of that table only.
        first = cast(ColumnClause[Any], query.selected_columns[0])
        return query.with_for_update(skip_locked=True, of=first.table)
    return query


def reclaim_stale(conn: Connection, *, real_now: datetime) -> tuple[dict[str, int],
                                                                     list[RowMapping]]:
    """Release leases that ran out (their worker died or their task was lost). A reclaimed
    touch drops its reservation mark: it is gated again, caps included, when claimed next.
    Returns the counts and the reclaimed touches whose gate had reserved a cap slot (the
    caller frees those slots once this transaction commits)."""
    cursors = conn.execute(
        update(ENROLLMENTS)
        .where(ENROLLMENTS.c.lease_until < real_now)
        .values(lease_until=None)
    ).rowcount
    expired = (TOUCHES.c.status == "claimed") & (TOUCHES.c.lease_until < real_now)
    return _release_claims(conn, expired, cursors)


def release_all_claims(conn: Connection) -> tuple[dict[str, int], list[RowMapping]]:
    """Every claim back to ``scheduled`` at once: Redis lost its data, and with it the
    queued tasks that carried the claims (a running one finds its token gone)."""
    return _release_claims(conn, TOUCHES.c.status == "claimed", 0)


def _release_claims(conn: Connection, which: ColumnElement[bool],
                    cursors: int) -> tuple[dict[str, int], list[RowMapping]]:
    reserved = list(conn.execute(
        select(TOUCHES.c.id, TOUCHES.c.user_id, TOUCHES.c.channel, TOUCHES.c.enrollment_id,
               TOUCHES.c.step_id)
        .where(which, TOUCHES.c.reserved_at.is_not(None))
    ).mappings())
    claimed = conn.execute(
        update(TOUCHES).where(which)
        .values(status="scheduled", claim_token=None, lease_until=None, reserved_at=None)
    ).rowcount
    return {"cursors": cursors, "touches": claimed}, reserved


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
            update(ENROLLMENTS).where(among(ENROLLMENTS.c.id, ids))
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
                update(TOUCHES).where(among(TOUCHES.c.id, chunk))
                .values(status="claimed", claim_token=token, lease_until=real_now + lease)
            )
            claims.append(TouchClaim(token, channel, chunk))
    return claims


def even_chunk(n: int, limit: int) -> int:
    """The chunk size that splits ``n`` into the fewest chunks of at most ``limit``, as even
    as possible: 10,001 is 5,001 + 5,000, never 10,000 + a lone one (a mass send needs two)."""
    chunks = max(1, -(-n // limit))
    return max(1, -(-n // chunks))


def claim_batches(
    conn: Connection, *, real_now: datetime, lease: timedelta, limit: int
) -> list[BatchClaim]:
    """Frozen batches whose next attempt is due and that nobody holds, leased for it."""
    free = or_(BATCHES.c.lease_until.is_(None), BATCHES.c.lease_until < real_now)
    due = or_(BATCHES.c.next_attempt_at.is_(None), BATCHES.c.next_attempt_at <= real_now)
    query = (
        select(BATCHES.c.id)
        .where(BATCHES.c.state.in_(OPEN_STATES), due, free)
        .order_by(BATCHES.c.next_attempt_at, BATCHES.c.id)
        .limit(limit)
    )
    ids = list(conn.execute(_lock(query, conn)).scalars())
    claims = [BatchClaim(batch_id, secrets.token_hex(8)) for batch_id in ids]
    if claims:
        conn.execute(
            update(BATCHES).where(BATCHES.c.id == bindparam("b_id"))
            .values(lease_token=bindparam("token"), lease_until=real_now + lease),
            [{"b_id": c.batch_id, "token": c.token} for c in claims],
        )
    return claims


@dataclass
class Tick:
    cursors: list[int]
    touches: list[TouchClaim]
    batches: list[BatchClaim]
    reclaimed: dict[str, int]
    skipped: bool = False  # another tick was running: this one did nothing
    unreserved: list[RowMapping] = field(default_factory=list)  # reclaimed, had a cap slot
    blocked: bool = False  # touches were not claimed: caps unavailable (a rebuild pending)

    @property
    def empty(self) -> bool:
        """Nothing claimed and nothing held back: a tick like it later would find as little
        (unless new work falls due)."""
        return not (self.skipped or self.blocked or self.cursors or self.touches
                    or self.batches)

    @classmethod
    def dropped(cls) -> Tick:
        return cls([], [], [], {}, skipped=True)


def claim_due(
    engine: Engine,
    *,
    now: datetime,
    real_now: datetime,
    lease: timedelta,
    batch_lease: timedelta,
    gather: timedelta,
    limit: int,
    max_batch: dict[str, int],
    touches: bool = True,
) -> Tick:
    """Reclaim what ran out, then claim due cursors, touches (unless ``touches`` is False:
    caps unavailable, or enough claims waiting already) and batches due for an attempt."""
    with session_scope(engine, immediate=True) as session:
        conn = session.connection()
        reclaimed, unreserved = reclaim_stale(conn, real_now=real_now)
        cursors = claim_cursors(conn, now=now, real_now=real_now, lease=lease, limit=limit)
        claims = claim_touches(conn, now=now, real_now=real_now, lease=lease, gather=gather,
                               limit=limit, max_batch=max_batch) if touches else []
        batches = claim_batches(conn, real_now=real_now, lease=batch_lease, limit=limit)
    return Tick(cursors, claims, batches, reclaimed, unreserved=unreserved)
