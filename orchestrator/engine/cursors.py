"""Running enrollment cursors: waits start, branches decide, send steps become touches."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, RowMapping, bindparam, select, update

from orchestrator.clock import as_utc
from orchestrator.engine.besthour import BestHour, schedule_best_hours
from orchestrator.engine.book import upsert
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.steps import Facts, Next, advance
from orchestrator.engine.testsends import seed_copies
from orchestrator.journeys.assign import rung_arm_for, variant_for
from orchestrator.journeys.model import Journey, SendStep
from orchestrator.store.db import begin_write
from orchestrator.store.tables import ENROLLMENTS, EVENTS, TOUCHES, USERS
from orchestrator.store.types import among

SENT = ("sent", "delivered")


def user_timezone(user: Mapping[str, Any] | None, policy_timezone: str) -> ZoneInfo:
    """The user's zone, else the policy's (which defaults to ``RECALL_TIMEZONE``)."""
    for name in ((user or {}).get("timezone"), policy_timezone):
        if name:
            try:
                return ZoneInfo(name)
            except (KeyError, ValueError):
                continue
    return ZoneInfo("UTC")


def run_cursors(rt: Runtime, enrollment_ids: Sequence[int]) -> int:
    """Advance each leased, due enrollment; returns how many touches were created."""
    now = rt.clock.now()
    with begin_write(rt.db) as conn:
        rows = conn.execute(
            select(ENROLLMENTS).where(
                among(ENROLLMENTS.c.id, enrollment_ids),
                ENROLLMENTS.c.state == "active",
                ENROLLMENTS.c.due_at <= now,
            )
        ).mappings().all()
        if not rows:
            return 0
        users = _users(conn, {r["user_id"] for r in rows})
        facts = _facts(conn, rows, users)
        touches: list[dict[str, Any]] = []
        moves: list[dict[str, Any]] = []
        timed: list[BestHour] = []
        for row in rows:
            journey = rt.book.get(rt.db, row["journey_id"], row["journey_version"])
            at = as_utc(row["due_at"])
            tz = user_timezone(users.get(row["user_id"]), rt.book.policy_for(journey).timezone)
            nxt = advance(journey, row["cursor"], at, tz, facts[row["id"]])
            moves.append(_move(row, nxt))
            if nxt.kind == "send":
                touches.append(_touch(row, journey, nxt, journey.priority))
                if _step_at(journey, nxt.cursor, touches[-1]["variant"]) == "best_hour":
                    timed.append(BestHour(touches[-1], journey, nxt.cursor, tz))
        if timed:
            schedule_best_hours(rt, conn, timed, now=now)
        if touches:
            conn.execute(upsert(conn.engine)(TOUCHES).on_conflict_do_nothing(), touches)
            _seed_lists(rt, conn, touches, now)
        conn.execute(
            update(ENROLLMENTS)
            .where(
                ENROLLMENTS.c.id == bindparam("b_id"),
                ENROLLMENTS.c.cursor == bindparam("b_cursor"),
            )
            .values(
                cursor=bindparam("cursor"), due_at=bindparam("due_at"), state=bindparam("state"),
                exit_reason=bindparam("exit_reason"), exited_at=bindparam("exited_at"),
                lease_until=None,
            ),
            moves,
        )
    return len(touches)


def _seed_lists(rt: Runtime, conn: Connection, touches: Sequence[Mapping[str, Any]],
                now: datetime) -> None:
    """A journey's ``test_recipients`` get a copy of each send step of each version, due with
    that step's first treatment touches (``seed_copies`` makes it once per version and step;
    later passes find it made)."""
    firsts: dict[tuple[str, str], dict[str, datetime]] = defaultdict(dict)
    for t in touches:
        if t["arm"] == "treatment":
            due = firsts[(t["journey_id"], t["journey_version"])]
            due[t["step_id"]] = min(due.get(t["step_id"], t["due_at"]), t["due_at"])
    for (journey_id, version), steps in firsts.items():
        journey = rt.book.get(rt.db, journey_id, version)
        for step_id, due_at in steps.items() if journey.test_recipients else ():
            seed_copies(conn, journey, [step_id], due_at, now=now)


def _step_at(journey: Journey, index: int, variant: str | None) -> str | None:
    step = journey.steps[index]
    return step.at_for(variant) if isinstance(step, SendStep) else None


def _move(row: RowMapping, nxt: Next) -> dict[str, Any]:
    done = nxt.kind == "done"
    return {
        "b_id": row["id"],
        "b_cursor": row["cursor"],
        "cursor": nxt.cursor,
        "due_at": nxt.due_at if nxt.kind == "wait" else None,
        "state": "completed" if done else "active",
        "exit_reason": (nxt.exit_reason if row["arm"] == "treatment" else "holdout") if done
        else None,
        "exited_at": as_utc(row["due_at"]) if done else None,
    }


def _touch(row: RowMapping, journey: Journey, nxt: Next, priority: int) -> dict[str, Any]:
    step = journey.steps[nxt.cursor]
    assert isinstance(step, SendStep)
    return {
        "enrollment_id": row["id"],
        "journey_id": row["journey_id"],
        "journey_version": row["journey_version"],
        "user_id": row["user_id"],
        "arm": row["arm"],
        "step_id": step.id,
        "channel": step.send,
        "planned_channel": step.send,
        "variant": variant_for(journey.id, step, row["user_id"]),
        "rung_arm": rung_arm_for(journey.id, step, row["user_id"])
        if row["arm"] == "treatment" else None,
        "priority": priority,
        "status": "scheduled",
        "due_at": nxt.due_at,
        "first_due_at": nxt.due_at,
        "attempts": 0,
        "segments": 0,
        "cost": 0.0,
        "test": False,
    }


def _users(conn: Connection, user_ids: set[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(select(USERS).where(among(USERS.c.user_id, user_ids))).mappings()
    return {r["user_id"]: dict(r) for r in rows}


def _facts(
    conn: Connection, rows: Sequence[RowMapping], users: Mapping[str, Mapping[str, Any]]
) -> dict[int, Facts]:
    sets: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    touched = conn.execute(
        select(TOUCHES.c.enrollment_id, TOUCHES.c.step_id, TOUCHES.c.status,
               TOUCHES.c.delivered_at, TOUCHES.c.clicked_at, TOUCHES.c.joined_at)
        .where(among(TOUCHES.c.enrollment_id, [r["id"] for r in rows]))
    ).all()
    for t in touched:
        s = sets[t.enrollment_id]
        if t.status in SENT:
            s["sent"].add(t.step_id)
        if t.status == "delivered" or t.delivered_at is not None:
            s["delivered"].add(t.step_id)
        if t.clicked_at is not None:
            s["clicked"].add(t.step_id)
        if t.joined_at is not None:
            s["joined"].add(t.step_id)
    facts = {}
    for r in rows:
        s = sets[r["id"]]
        user = users.get(r["user_id"], {"user_id": r["user_id"]})
        facts[r["id"]] = Facts(
            sent=frozenset(s["sent"]), delivered=frozenset(s["delivered"]),
            clicked=frozenset(s["clicked"]), joined=frozenset(s["joined"]),
            user=_user_fields(user),
            had_event=_event_probe(conn, r["user_id"], as_utc(r["due_at"])),
        )
    return facts


def _user_fields(user: Mapping[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in user.items() if k != "attributes"}
    return {**(user.get("attributes") or {}), **fields}


def _event_probe(conn: Connection, user_id: str, at: datetime) -> Any:
    def had_event(name: str, within: timedelta) -> bool:
        found = conn.execute(
            select(EVENTS.c.event_id).where(
                EVENTS.c.user_id == user_id, EVENTS.c.name == name,
                EVENTS.c.ts > at - within, EVENTS.c.ts <= at,
            ).limit(1)
        ).first()
        return found is not None

    return had_event
