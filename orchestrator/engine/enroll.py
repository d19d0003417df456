"""Enrollment: who enters a journey, in which arm, and when their first step runs.

Bulk by design: one query per chunk of users to find who may (re-)enter, one multi-row
insert per chunk. At most one *active* enrollment per (journey, user) is also enforced by a
partial unique index, so two concurrent enrollers cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select

from orchestrator.journeys.assign import arm_for
from orchestrator.journeys.model import Journey
from orchestrator.journeys.pools import read_codes
from orchestrator.store.tables import ENROLLMENTS, KV
from orchestrator.store.types import among

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
