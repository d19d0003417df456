"""The one ingest path for behaviour events (CSV/JSONL import, HTTP API, webhooks, simulate).

Idempotent on ``event_id``. A *new* event, in the same transaction:
- enrolls the user in every journey whose ``entry.event`` it matches (and whose
  ``entry.segment``, if any, the user passes at that moment);
- converts every enrollment whose goal it reaches inside ``(entered_at, entered_at + within]``
  (both arms: intention-to-treat), attributing it to the last sent touch; an active
  enrollment then exits and its scheduled touches are cancelled;
- an ``unsubscribe`` event is an opt-out of ``props.channel`` (a channel, or ``all``), as an
  SMS ``TD`` reply is: consent refuses the next send on that channel. One without a valid
  ``props.channel`` is rejected, not stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine, RowMapping, select, update

from orchestrator.clock import as_utc
from orchestrator.engine.book import JourneyBook, upsert
from orchestrator.engine.enroll import enroll
from orchestrator.engine.segments import passes_segment
from orchestrator.journeys.model import Journey
from orchestrator.policy.consent import ALL_CHANNELS, CHANNELS, insert_opt_outs
from orchestrator.store.db import begin_write
from orchestrator.store.tables import CONVERSIONS, ENROLLMENTS, EVENTS, JOURNEY_STATES, TOUCHES
from orchestrator.tracking.attribution import TouchView, attribute

MAX_BATCH = 10_000
OPEN_TOUCH = ("scheduled", "claimed")
UNSUBSCRIBE = "unsubscribe"
OPT_OUT_CHANNELS = (*CHANNELS, ALL_CHANNELS)


class EventIn(BaseModel):
    """An event in the documented format."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    ts: AwareDatetime
    value: float | None = None
    props: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    index: int
    error: str


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    enrolled: int = 0
    converted: int = 0


def parse_event(raw: Mapping[str, Any]) -> EventIn:
    """Validate one event; ``ValueError`` names the field and what is wrong."""
    try:
        event = EventIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise ValueError(f"{where}: {first['msg']}") from None
    if event.name == UNSUBSCRIBE and event.props.get("channel") not in OPT_OUT_CHANNELS:
        raise ValueError(
            f"props.channel: an unsubscribe event names the channel it opts out of, one of "
            f"{', '.join(OPT_OUT_CHANNELS)}; got {event.props.get('channel')!r}"
        )
    return event


def ingest_events(
    engine: Engine,
    events: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    journeys: JourneyBook | None = None,
) -> IngestResult:
    if len(events) > MAX_BATCH:
        raise ValueError(f"{len(events)} events in one batch; send at most {MAX_BATCH:,}")
    result = IngestResult()
    valid: list[EventIn] = []
    for index, raw in enumerate(events):
        try:
            valid.append(parse_event(raw))
        except ValueError as exc:
            result.rejected.append(Rejected(index, str(exc)))
    with begin_write(engine) as conn:
        new = insert_events(conn, valid, now=now)
        result.accepted = len(new)
        result.duplicates = len(valid) - len(new)
        _opt_out(conn, new, now)
        if journeys is not None and new:
            result.enrolled = _enter(conn, journeys, new, now)
            result.converted = _convert(conn, journeys, new, now)
    return result


def insert_events(conn: Connection, events: Sequence[EventIn], *, now: datetime) -> list[EventIn]:
    """Insert, skipping known ``event_id``s; returns the events that were new."""
    by_id: dict[str, EventIn] = {}
    for e in events:
        by_id.setdefault(e.event_id, e)  # a repeat inside the batch is a duplicate too
    if not by_id:
        return []
    rows = [
        {"event_id": e.event_id, "user_id": e.user_id, "name": e.name, "ts": as_utc(e.ts),
         "value": e.value, "props": e.props, "ingested_at": now}
        for e in by_id.values()
    ]
    stmt = upsert(conn.engine)(EVENTS).on_conflict_do_nothing().returning(EVENTS.c.event_id)
    inserted = set(conn.execute(stmt, rows).scalars().all())
    return [e for e in by_id.values() if e.event_id in inserted]


def _opt_out(conn: Connection, events: list[EventIn], now: datetime) -> None:
    """Each new ``unsubscribe`` event withdraws consent, in the same transaction."""
    wanted = {(e.props["channel"], e.user_id) for e in events if e.name == UNSUBSCRIBE}
    insert_opt_outs(conn, [
        {"channel": channel, "identity": f"user:{user_id}", "user_id": user_id,
         "reason": UNSUBSCRIBE, "created_at": now}
        for channel, user_id in sorted(wanted)
    ])


def _enter(conn: Connection, book: JourneyBook, events: list[EventIn], now: datetime) -> int:
    by_name: dict[str, list[EventIn]] = defaultdict(list)
    for e in events:
        by_name[e.name].append(e)
    total = 0
    for journey in book.journeys():
        triggered = by_name.get(journey.entry.event or "")
        if not triggered or not _is_running(conn, journey):
            continue
        triggers = {e.user_id: _trigger(e) for e in triggered}
        users = list(triggers)
        if journey.entry.segment:
            users = [u for u in users if passes_segment(conn, journey.entry.segment, u, now)]
        total += enroll(conn, journey, users, now=now, triggers=triggers).enrolled
    return total


def _is_running(conn: Connection, journey: Journey) -> bool:
    state = conn.execute(
        select(JOURNEY_STATES.c.state).where(JOURNEY_STATES.c.journey_id == journey.id)
    ).scalar()
    return state in (None, "active")


def _trigger(e: EventIn) -> dict[str, Any]:
    return {"event_id": e.event_id, "name": e.name, "ts": e.ts.isoformat(), "value": e.value,
            "props": e.props}


def _convert(conn: Connection, book: JourneyBook, events: list[EventIn], now: datetime) -> int:
    goals = {j.id: j.goal for j in book.journeys() if j.goal is not None}
    names = {g.event for g in goals.values()}
    hits = [e for e in events if e.name in names]
    if not hits:
        return 0
    by_user: dict[str, list[EventIn]] = defaultdict(list)
    for e in sorted(hits, key=lambda e: e.ts):
        by_user[e.user_id].append(e)
    candidates = conn.execute(
        select(ENROLLMENTS).where(
            ENROLLMENTS.c.user_id.in_(list(by_user)),
            ENROLLMENTS.c.journey_id.in_(list(goals)),
            ENROLLMENTS.c.converted_at.is_(None),
        )
    ).mappings().all()
    reached: list[tuple[RowMapping, EventIn]] = []
    for enrollment in candidates:
        goal = goals[enrollment["journey_id"]]
        entered = as_utc(enrollment["entered_at"])
        first = next((e for e in by_user[enrollment["user_id"]]
                      if e.name == goal.event and entered < as_utc(e.ts) <= entered + goal.within),
                     None)
        if first is not None:
            reached.append((enrollment, first))
    touches = _touches_of(conn, [enrollment["id"] for enrollment, _ in reached])
    for enrollment, event in reached:
        _record_conversion(conn, enrollment, event, touches.get(enrollment["id"], []))
    return len(reached)


def _touches_of(conn: Connection, enrollment_ids: list[int]) -> dict[int, list[TouchView]]:
    """What attribution needs of the converting enrollments' touches, in one query."""
    found: dict[int, list[TouchView]] = defaultdict(list)
    if enrollment_ids:
        for t in conn.execute(
            select(TOUCHES.c.id, TOUCHES.c.enrollment_id, TOUCHES.c.status, TOUCHES.c.sent_at)
            .where(TOUCHES.c.enrollment_id.in_(enrollment_ids))
        ):
            found[t.enrollment_id].append(TouchView(id=t.id, status=t.status, sent_at=t.sent_at))
    return found


def _record_conversion(
    conn: Connection, enrollment: RowMapping, event: EventIn, touches: list[TouchView]
) -> None:
    at = as_utc(event.ts)
    touch_id = attribute(at, touches)
    inserted = conn.execute(
        upsert(conn.engine)(CONVERSIONS)
        .values(enrollment_id=enrollment["id"], journey_id=enrollment["journey_id"],
                user_id=enrollment["user_id"], arm=enrollment["arm"], event_id=event.event_id,
                converted_at=at, value=event.value, touch_id=touch_id)
        .on_conflict_do_nothing()
    ).rowcount
    if not inserted:
        return
    conn.execute(update(ENROLLMENTS).where(ENROLLMENTS.c.id == enrollment["id"])
                 .values(converted_at=at))
    if touch_id is not None:
        conn.execute(update(TOUCHES).where(TOUCHES.c.id == touch_id).values(converted_at=at))
    if enrollment["state"] == "active":
        exit_enrollment(conn, enrollment["id"], reason="goal", at=at)


def exit_enrollment(conn: Connection, enrollment_id: int, *, reason: str, at: datetime) -> None:
    """End the enrollment's touches (not its measurement) and cancel what is not yet sent."""
    conn.execute(
        update(ENROLLMENTS)
        .where(ENROLLMENTS.c.id == enrollment_id, ENROLLMENTS.c.state == "active")
        .values(state="exited", exit_reason=reason, exited_at=at, due_at=None)
    )
    conn.execute(
        update(TOUCHES)
        .where(TOUCHES.c.enrollment_id == enrollment_id, TOUCHES.c.status.in_(OPEN_TOUCH))
        .values(status="cancelled", reason=reason, claim_token=None)
    )
