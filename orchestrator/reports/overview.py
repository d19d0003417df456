"""What the dashboard reads beside the journey report (``funnel.journey_report``): the
journeys the engine knows with their state, each journey's headline numbers, and its most
recent touches with every identity masked.

Read-only SQL over the store; the numbers themselves come from the report, so the dashboard
and ``recall report`` can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select

from orchestrator.errors import NotFoundError, RecallError
from orchestrator.logs import mask_id, mask_phone, redact
from orchestrator.reports.funnel import journey_report
from orchestrator.store.tables import ENROLLMENTS, TOUCHES, USERS
from orchestrator.store.tables import JOURNEY_STATES as STATES

if TYPE_CHECKING:
    from orchestrator.engine.book import JourneyBook
    from orchestrator.journeys.model import Journey

RECENT_TOUCHES = 50  # rows on a journey page
# The identity a channel reaches a person by (the touch's own channel, after any fallback).
ADDRESS_COLUMN = {"sms": "phone", "wechat_article": "openid",
                  "wecom_group_invite": "external_userid"}


def journey_states(conn: Connection) -> list[dict[str, Any]]:
    """Every journey the engine has recorded, by id: version, state (active, paused,
    stopped), priority, times, and its enrollments counted by enrollment state."""
    states = conn.execute(select(STATES).order_by(STATES.c.journey_id)).mappings().all()
    counts = conn.execute(
        select(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.state, func.count())
        .group_by(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.state)
    ).all()
    by_journey: dict[str, dict[str, int]] = {}
    for journey_id, state, n in counts:
        by_journey.setdefault(journey_id, {})[state] = int(n)
    return [{**row, "enrollments": by_journey.get(row["journey_id"], {})} for row in states]


def journey_for(book: JourneyBook, engine: Engine, journey_id: str,
                version: str | None = None) -> Journey:
    """The journey as its file says now, else (file removed) the version the engine stored
    last, so a journey that has run can always be reported. ``NotFoundError`` otherwise."""
    if journey_id in book.current or version is None:
        return book.latest(journey_id)
    return book.get(engine, journey_id, version)


def overview(engine: Engine, book: JourneyBook | None, now: datetime | None = None,
             activity_events: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every recorded journey with its state, name and ``headline`` numbers (``None``, with
    the ``problem`` said, when its report cannot be made), as of business time ``now``
    (``now`` and ``activity_events`` as for ``journey_report``)."""
    with engine.connect() as conn:
        states = journey_states(conn)
    rows = []
    for state in states:
        row = {**state, "name": None, "headline": None, "problem": None}
        try:
            report = _report(engine, book, state, now, activity_events)
        except RecallError as exc:
            row["problem"] = str(exc)
        else:
            row |= {"name": report.get("journey_name"), "headline": headline(report)}
        rows.append(row)
    return rows


def journey_detail(engine: Engine, book: JourneyBook | None, journey_id: str,
                   now: datetime | None = None, activity_events: Sequence[str] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """One journey's state row, report and recent touches; ``NotFoundError`` for a journey
    the engine has not recorded."""
    with engine.connect() as conn:
        states = {s["journey_id"]: s for s in journey_states(conn)}
    if journey_id not in states:
        known = ", ".join(sorted(states)) or "none yet"
        raise NotFoundError(f"no journey {journey_id!r}; known journeys: {known}")
    state = states[journey_id]
    report = _report(engine, book, state, now, activity_events)
    return state, report, recent_touches(engine, journey_id)


def _report(engine: Engine, book: JourneyBook | None, state: dict[str, Any],
            now: datetime | None, activity_events: Sequence[str] | None) -> dict[str, Any]:
    if book is None:
        raise NotFoundError("no journeys folder: set RECALL_JOURNEYS_DIR")
    journey = journey_for(book, engine, state["journey_id"], state["version"])
    return journey_report(engine, journey, book.policy_for(journey), now=now,
                          activity_events=activity_events)


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a journey is judged by at a glance, all taken from its report."""
    arms = report["arms"]
    return {
        "enrolled": sum(arm["enrolled"] for arm in arms.values()),
        "sent": sum(step["sent"] for step in report["steps"]),
        "rates": {name: arm["rate"] for name, arm in arms.items()},
        "uplift": report["uplift"],
        "cost": report["cost"],
        "revenue": report["revenue"],
        "roi": report["roi"],
        "money_warning": report.get("money_warning"),
        "currency": report.get("currency", ""),
    }


def recent_touches(engine: Engine, journey_id: str,
                   limit: int = RECENT_TOUCHES) -> list[dict[str, Any]]:
    """The journey's last ``limit`` touches (newest first) with the address each went to,
    masked: a phone keeps its last four digits, an OpenID or external_userid its first
    four characters. Nothing in a row can identify a person outside the store."""
    t, u = TOUCHES.c, USERS.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.id, t.user_id, t.step_id, t.channel, t.planned_channel, t.arm, t.variant,
                   t.status, t.reason, t.due_at, t.sent_at, t.delivered_at, t.clicked_at,
                   t.joined_at, t.converted_at, t.cost, t.test, u.phone, u.openid,
                   u.external_userid)
            .select_from(TOUCHES.outerjoin(USERS, u.user_id == t.user_id))
            .where(t.journey_id == journey_id, t.test.is_(False))
            .order_by(t.id.desc()).limit(limit)
        ).mappings().all()
    return [_masked(dict(row)) for row in rows]


def _masked(row: dict[str, Any]) -> dict[str, Any]:
    addresses = {name: row.pop(name) for name in ("phone", "openid", "external_userid")}
    column = ADDRESS_COLUMN.get(row["channel"])
    address = addresses.get(column) if column else None
    row["address"] = None if not address else (
        mask_phone(address) if column == "phone" else mask_id(address))
    # User ids are our own pseudonymous keys, but one that is a phone number or an OpenID
    # (some shops key users so) is masked like one.
    row["user"] = redact(row.pop("user_id"))
    return row
