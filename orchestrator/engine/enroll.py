"""Enrollment: who enters a journey, in which arm, and when their first step runs.

Bulk by design. ``enroll`` takes user ids (an event's users, a segment evaluated in
Python): one query per chunk of users to find who may (re-)enter, one multi-row insert per
chunk. ``enroll_matching`` takes a segment as SQL and enrolls the whole audience in one
``INSERT … SELECT`` on PostgreSQL, the users never leaving the database (a million in
seconds). Both follow the same rules and give the same rows. At most one *active*
enrollment per (journey, user) is also enforced by a partial unique index, so two
concurrent enrollers cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import JSON, Connection, LargeBinary, func, insert, select
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.journeys.assign import arm_for, control_threshold
from orchestrator.journeys.model import Journey
from orchestrator.journeys.pools import read_codes
from orchestrator.store.tables import ENROLLMENTS, KV, USERS
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.types import UTCDateTime, among

CHUNK = 5_000


@dataclass
class EnrollResult:
    enrolled: int = 0
    control: int = 0
    treatment: int = 0
    already_active: int = 0
    reentry_blocked: int = 0
    ids: list[int] = field(default_factory=list)

    def add(self, other: EnrollResult) -> None:
        self.enrolled += other.enrolled
        self.control += other.control
        self.treatment += other.treatment
        self.already_active += other.already_active
        self.reentry_blocked += other.reentry_blocked
        self.ids += other.ids


def eligible(
    conn: Connection, journey: Journey, user_ids: Sequence[str], now: datetime
) -> tuple[list[str], int, int]:
    """Users who may enter now: no active enrollment and past ``reentry`` since the last."""
    rows = conn.execute(
        select(
            ENROLLMENTS.c.user_id,
            func.max(ENROLLMENTS.c.entered_at),
            func.sum((ENROLLMENTS.c.state == "active").cast(ENROLLMENTS.c.cursor.type)),
        )
        .where(ENROLLMENTS.c.journey_id == journey.id, among(ENROLLMENTS.c.user_id, user_ids))
        .group_by(ENROLLMENTS.c.user_id)
    ).all()
    active, blocked = set(), set()
    for user_id, last_entered, n_active in rows:
        if n_active:
            active.add(user_id)
        elif journey.reentry is None or _as_utc(last_entered) + journey.reentry > now:
            blocked.add(user_id)
    ok = [u for u in dict.fromkeys(user_ids) if u not in active and u not in blocked]
    return ok, len(active), len(blocked)


def enroll(
    conn: Connection,
    journey: Journey,
    user_ids: Iterable[str],
    *,
    now: datetime,
    triggers: Mapping[str, Mapping[str, Any]] | None = None,
    dry_run: bool = False,
) -> EnrollResult:
    """Enroll ``user_ids`` (deduplicated) into ``journey`` at ``now``.

    ``triggers`` maps a user to the event that triggered entry (``event.props`` in templates).
    """
    result = EnrollResult()
    users = list(dict.fromkeys(user_ids))
    for start in range(0, len(users), CHUNK):
        result.add(_enroll_chunk(conn, journey, users[start : start + CHUNK], now, triggers,
                                 dry_run))
    return result


def _enroll_chunk(
    conn: Connection,
    journey: Journey,
    users: Sequence[str],
    now: datetime,
    triggers: Mapping[str, Mapping[str, Any]] | None,
    dry_run: bool,
) -> EnrollResult:
    ok, n_active, n_blocked = eligible(conn, journey, users, now)
    result = EnrollResult(already_active=n_active, reentry_blocked=n_blocked)
    rows = [_row(journey, user_id, now, (triggers or {}).get(user_id)) for user_id in ok]
    result.control = sum(r["arm"] == "control" for r in rows)
    result.treatment = len(rows) - result.control
    result.enrolled = len(rows)
    if dry_run or not rows:
        return result
    _draw_pools(conn, journey, [r for r in rows if r["arm"] == "treatment"])
    ids = conn.execute(insert(ENROLLMENTS).returning(ENROLLMENTS.c.id), rows).scalars().all()
    result.ids = list(ids)
    return result


def _row(
    journey: Journey, user_id: str, now: datetime, trigger: Mapping[str, Any] | None
) -> dict[str, Any]:
    arm = arm_for(journey.id, user_id, journey.holdout)
    if arm == "control":
        # Never touched: it only waits for its measurement window to close.
        cursor = len(journey.steps)
        due_at = now + journey.goal.within if journey.goal else now
    else:
        cursor, due_at = 0, now
    return {
        "journey_id": journey.id,
        "journey_version": journey.version,
        "user_id": user_id,
        "arm": arm,
        "state": "active",
        "entered_at": now,
        "cursor": cursor,
        "due_at": due_at,
        "trigger_event_id": trigger.get("event_id") if trigger else None,
        "data": {"event": dict(trigger)} if trigger else {},
    }


def enroll_matching(conn: Connection, journey: Journey, condition: ColumnElement[bool], *,
                    now: datetime, dry_run: bool = False) -> EnrollResult:
    """Enroll every contactable user matching ``condition`` (a segment as SQL over users
    outer-joined with user_features, ``audience.segment_sql``) in one statement, under the
    rules of ``enroll``: no active enrollment and past ``reentry`` since the last; the arm by
    the same hash (``sha256`` in SQL); the first step due at ``now``. PostgreSQL only, and
    not for a journey with coupon pools (``enroll`` draws their codes in order)."""
    u, f, e = USERS.c, FEATURES.c, ENROLLMENTS.c
    members = (select(u.user_id).select_from(USERS.outerjoin(FEATURES, u.user_id == f.user_id))
               .where(u.erased.is_(False), condition).cte("members"))
    past = (select(e.user_id, func.bool_or(e.state == "active").label("active"),
                   func.max(e.entered_at).label("last"))
            .join(members, members.c.user_id == e.user_id)
            .where(e.journey_id == journey.id).group_by(e.user_id).cte("past"))
    may_reenter = (sa.false() if journey.reentry is None
                   else past.c.last <= _at(now - journey.reentry))
    control = _arm_hash(journey.id, members.c.user_id) < _threshold(journey.holdout)
    fresh = (select(members.c.user_id, sa.case((control, "control"), else_="treatment")
                    .label("arm"))
             .outerjoin(past, past.c.user_id == members.c.user_id)
             .where(sa.or_(past.c.user_id.is_(None), sa.and_(~past.c.active, may_reenter)))
             .cte("fresh"))
    arms = fresh if dry_run else _insert_from(fresh, journey, now)
    n_control = select(func.count()).select_from(arms).where(arms.c.arm == "control")
    n_all = select(func.count()).select_from(arms)
    n_active = select(func.count()).select_from(past).where(past.c.active)
    n_blocked = select(func.count()).select_from(past).where(~past.c.active, ~may_reenter)
    row = conn.execute(select(n_control.scalar_subquery(), n_all.scalar_subquery(),
                              n_active.scalar_subquery(), n_blocked.scalar_subquery())).one()
    enrolled = int(row[1])
    return EnrollResult(enrolled=enrolled, control=int(row[0]),
                        treatment=enrolled - int(row[0]), already_active=int(row[2]),
                        reentry_blocked=int(row[3]))


def _insert_from(fresh: Any, journey: Journey, now: datetime) -> Any:
    is_control = fresh.c.arm == "control"
    control_due = now + journey.goal.within if journey.goal else now
    rows = select(
        sa.literal(journey.id), sa.literal(journey.version), fresh.c.user_id, fresh.c.arm,
        sa.literal("active"), _at(now),
        sa.case((is_control, len(journey.steps)), else_=0),
        sa.case((is_control, _at(control_due)), else_=_at(now)),
        sa.literal({}, JSON()),
    )
    columns = ["journey_id", "journey_version", "user_id", "arm", "state", "entered_at",
               "cursor", "due_at", "data"]
    return (insert(ENROLLMENTS).from_select(columns, rows)
            .returning(ENROLLMENTS.c.arm).cte("inserted"))


def _at(moment: datetime) -> ColumnElement[datetime]:
    return sa.literal(moment, UTCDateTime())


def _arm_hash(journey_id: str, user_id: Any) -> ColumnElement[bytes]:
    """The first 8 bytes of sha256("arm:<journey>:<user>"), as ``unit_hash`` reads them."""
    key = func.convert_to(sa.literal(f"arm:{journey_id}:") + user_id, "UTF8")
    return sa.type_coerce(func.substring(func.sha256(key), 1, 8), LargeBinary())


def _threshold(holdout: float) -> ColumnElement[bytes]:
    limit = control_threshold(holdout)
    # 2**64 (every user in control) does not fit 8 bytes; any 8 bytes sort below 9.
    raw = limit.to_bytes(8, "big") if limit < 2**64 else b"\xff" * 8 + b"\x00"
    return sa.literal(raw, LargeBinary())


def _draw_pools(conn: Connection, journey: Journey, rows: list[dict[str, Any]]) -> None:
    """Draw one code per treatment enrollment from each pool, in order, never twice."""
    for name, codes in pool_codes(journey).items():
        key = f"pool:{journey.id}:{name}"
        taken = conn.execute(select(KV.c.value).where(KV.c.key == key).with_for_update()).scalar()
        start = int((taken or {}).get("next", 0))
        for offset, row in enumerate(rows):
            index = start + offset
            row["data"][name] = codes[index] if index < len(codes) else None
        value = {"next": start + len(rows)}
        if taken is None:
            conn.execute(insert(KV).values(key=key, value=value))
        else:
            conn.execute(KV.update().where(KV.c.key == key).values(value=value))


@lru_cache(maxsize=64)
def _read_pool(path: Path) -> tuple[str, ...]:
    return tuple(read_codes(path))


def pool_codes(journey: Journey) -> dict[str, tuple[str, ...]]:
    """Each declared pool's codes, in file order."""
    base = Path(journey.source_path).parent
    return {name: _read_pool(base / pool.csv) for name, pool in journey.pools.items()}


def _as_utc(value: datetime) -> datetime:
    from orchestrator.clock import as_utc

    return as_utc(value)
