"""The dispatcher tick and the ways its work gets done.

``tick`` claims due work and hands it to a ``Dispatcher``: Celery tasks in production
(``workers.tasks``), or the calling process itself (``InlineDispatcher``) for tools and
tests of the engine alone. Either way the same functions run the work.

One tick at a time: a tick runs under a lock in Redis (real-time lease) and a tick that
finds it taken does nothing (``Tick.skipped``); two beats started by mistake only publish
ticks that are dropped. The tick itself stays short: it claims (one transaction), and hands
slow work (the daily audience refresh, WeCom polling, a caps rebuild) to tasks of their own,
each claimed under its own lease so that it runs once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.audience.segment_sql import segment_condition
from orchestrator.clock import as_utc, utcnow
from orchestrator.engine.attempts import OPEN_STATES
from orchestrator.engine.cursors import run_cursors
from orchestrator.engine.delivery import drive_batch, process_touches
from orchestrator.engine.dispatch import (
    BATCHED,
    BatchClaim,
    Tick,
    TouchClaim,
    claim_due,
    release_all_claims,
)
from orchestrator.engine.enroll import EnrollResult, enroll, enroll_matching
from orchestrator.engine.policy_gates import rebuild_caps, release_caps
from orchestrator.engine.refresh import claim_refresh, run_refresh
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.segments import matches, segment_members, segment_rows
from orchestrator.engine.wecom import due_for_poll, poll_wecom
from orchestrator.journeys.model import Journey
from orchestrator.policy.caps import CapsUnsafe
from orchestrator.store.db import begin_write
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from orchestrator.store.tables import JOURNEY_STATES as STATES
from orchestrator.store.tables import SEND_BATCHES as BATCHES

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def cursors(self, enrollment_ids: list[int]) -> None: ...
    def touches(self, claim: TouchClaim) -> None: ...
    def deliver(self, claim: BatchClaim) -> None: ...
    def refresh(self, now: datetime, fire: datetime) -> None: ...
    def poll_wecom(self, now: datetime) -> None: ...
    def rebuild_caps(self) -> None: ...


TOUCH_CLAIM_LIMIT = 50_000  # a multiple of the 10,000 mass-send limit
TICK_LOCK_S = 30  # real seconds a tick may hold the lock (a tick takes well under one)
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def tick(rt: Runtime, dispatcher: Dispatcher) -> Tick:
    """One dispatcher tick: run due schedules, claim due work, hand it out. Does nothing
    (``skipped``) while another tick, in any process, holds the lock."""
    with tick_lock(rt) as held:
        if not held:
            return Tick.dropped()
        return _tick(rt, dispatcher)


@contextmanager
def tick_lock(rt: Runtime) -> Iterator[bool]:
    """The deployment's one-tick-at-a-time lock (its Celery queue names the deployment)."""
    key = f"recall:{rt.settings.celery_queue}:tick-lock"
    token = uuid.uuid4().hex
    held = bool(rt.redis.set(key, token, nx=True, px=TICK_LOCK_S * 1000))
    try:
        yield held
    finally:
        if held:
            rt.redis.eval(_UNLOCK, 1, key, token)


def _tick(rt: Runtime, dispatcher: Dispatcher) -> Tick:
    now = rt.clock.now()
    if rt.book.reload_if_changed() or not rt.book.synced:
        rt.book.sync(rt.db, now=now)
    fire = claim_refresh(rt, now)
    if fire is not None:
        dispatcher.refresh(now, fire)
    run_schedules(rt, now)
    caps_ready = _caps_ready(rt, dispatcher)
    claimed = claim_due(
        rt.db,
        now=now,
        real_now=utcnow(),
        lease=timedelta(seconds=rt.settings.claim_lease_s),
        batch_lease=timedelta(seconds=rt.settings.delivery_lease_s),
        gather=timedelta(seconds=rt.settings.gather_window_s),
        limit=TOUCH_CLAIM_LIMIT,
        max_batch={name: rt.channel(name).max_batch for name in
                   ("wechat_article", "wecom_group_invite", "sms")},
        touches=caps_ready and _room_for_claims(rt),
    )
    claimed.blocked = not caps_ready
    release_caps(rt, claimed.unreserved)  # reserved by gates whose workers died
    chunk = rt.settings.claim_batch_size
    for start in range(0, len(claimed.cursors), chunk):
        dispatcher.cursors(claimed.cursors[start : start + chunk])
    for claim in claimed.touches:
        dispatcher.touches(claim)
    for batch in claimed.batches:
        dispatcher.deliver(batch)
    if due_for_poll(rt, now):
        dispatcher.poll_wecom(now)
    return claimed


def _caps_ready(rt: Runtime, dispatcher: Dispatcher) -> bool:
    """May touches be claimed? Not while caps cannot be granted: Redis lost its data (a
    restart, a restore, a failover: the rebuild goes to a task of its own, and the claims
    whose queued tasks were lost with the broker are released at once rather than when
    their leases run out), or Redis may evict reservations (said loudly, every minute)."""
    try:
        state = rt.caps.check()
    except CapsUnsafe as exc:
        _loudly(str(exc))
        return False
    if state == "ok":
        return True
    with begin_write(rt.db) as conn:
        _, reserved = release_all_claims(conn)
    release_caps(rt, reserved)
    if not rt.caps.rebuilding():
        log.warning("caps need a rebuild (Redis is new or lost its data): handing it to a task")
        dispatcher.rebuild_caps()
    return rt.caps.check() == "ok"  # a dispatcher that rebuilt in this process is done


_LOUD_EVERY_S = 60.0
_last_loud = [0.0]


def _loudly(message: str) -> None:
    now = time.monotonic()
    if now - _last_loud[0] >= _LOUD_EVERY_S:
        _last_loud[0] = now
        log.error("no touch is sent while caps cannot be kept: %s", message)


def _room_for_claims(rt: Runtime) -> bool:
    """Claim no more touches while a full claim's worth still waits for workers: claims that
    queue longer than their lease would only be claimed again."""
    with rt.db.connect() as conn:
        waiting = conn.execute(select(func.count()).select_from(
            select(TOUCHES.c.id).where(TOUCHES.c.status == "claimed")
            .limit(TOUCH_CLAIM_LIMIT).subquery())).scalar_one()
    return int(waiting) < TOUCH_CLAIM_LIMIT


# --- scheduled audiences ------------------------------------------------------------------

def run_schedules(rt: Runtime, now: datetime) -> int:
    """Enroll the segment of every journey whose ``entry.schedule`` fired since its last run
    (business time, in the policy time zone). Missed fires collapse into one run."""
    scheduled = {j.id: j for j in rt.book.journeys() if j.entry.schedule and not j.entry.event}
    if not scheduled:
        return 0
    with rt.db.connect() as conn:  # one cheap read; the lock is taken only when a fire is due
        states = conn.execute(select(STATES).where(STATES.c.journey_id.in_(list(scheduled)))
                              ).mappings().all()
    due = [scheduled[s["journey_id"]] for s in states
           if s["state"] == "active" and _fire(scheduled[s["journey_id"]], s, rt, now)]
    members = _segment_members(rt, [j for j in due if set_based(rt, j) is None])
    return sum(_run_schedule(rt, journey, now, members.get(journey.id)) for journey in due)


def _segment_members(rt: Runtime, journeys: list[Journey]) -> dict[str, list[str]]:
    """Each journey's segment members, from one read of the segment rows for all the
    journeys that fire together (enrolling changes no segment row), outside any write
    transaction: a large audience must not hold the write lock (on SQLite, the whole
    database) while it is evaluated."""
    if not journeys:
        return {}
    members: dict[str, list[str]] = {j.id: [] for j in journeys}
    sources = [(j.id, j.entry.segment or "True") for j in journeys]
    with rt.db.connect() as conn:
        for row in segment_rows(conn):
            for journey_id, source in sources:
                if matches(source, row):
                    members[journey_id].append(row["user_id"])
    return members


def _fire(journey: Journey, state: Any, rt: Runtime, now: datetime) -> datetime | None:
    since = as_utc(state["last_schedule_run_at"] or state["updated_at"] or now)
    cron = journey.entry.schedule or ""
    tz = ZoneInfo(rt.book.policy_for(journey).timezone)
    if now < next_after(cron, since, tz):
        return None
    return last_fire(cron, since, now, tz)


@lru_cache(maxsize=4096)
def next_after(cron: str, since: datetime, tz: ZoneInfo) -> datetime:
    """The first fire after ``since`` (cached: every tick asks, croniter is slow)."""
    return next_fire(cron, since, tz)


def _run_schedule(rt: Runtime, journey: Journey, now: datetime,
                  members: list[str] | None) -> int:
    # A segment SQL can say is enrolled in one statement; otherwise its ``members`` were
    # read (and evaluated in Python) before, by ``_segment_members``.
    condition = set_based(rt, journey)
    if condition is None and members is None:
        members = _segment_members(rt, [journey])[journey.id]
    with begin_write(rt.db) as conn:
        state = conn.execute(select(STATES).where(STATES.c.journey_id == journey.id)
                             .with_for_update()).mappings().first()
        fire = _fire(journey, state, rt, now) if state and state["state"] == "active" else None
        if fire is None:
            return 0  # another tick ran it first
        if condition is None:
            enrolled = enroll(conn, journey, members or [], now=now).enrolled
        else:
            enrolled = enroll_matching(conn, journey, condition, now=now).enrolled
        conn.execute(update(STATES).where(STATES.c.journey_id == journey.id)
                     .values(last_schedule_run_at=fire))
    return enrolled


def set_based(rt: Runtime, journey: Journey) -> ColumnElement[bool] | None:
    """The journey's segment as SQL when its whole audience can be enrolled in one statement
    (PostgreSQL, a segment SQL can say exactly, no coupon pools), else None."""
    if rt.db.dialect.name != "postgresql" or journey.pools:
        return None
    return segment_condition(journey.entry.segment or "True")


def last_fire(cron: str, since: datetime, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The latest cron fire time in ``(since, now]``, or None."""
    it = croniter(cron, since.astimezone(tz))
    fire = None
    while True:
        candidate = as_utc(it.get_next(datetime))
        if candidate > now:
            return fire
        fire = candidate


def next_fire(cron: str, after: datetime, tz: ZoneInfo) -> datetime:
    return as_utc(croniter(cron, after.astimezone(tz)).get_next(datetime))


def enroll_segment(rt: Runtime, journey: Journey, *, dry_run: bool = False) -> EnrollResult:
    """``recall enroll``: the journey's segment, now."""
    now = rt.clock.now()
    condition = set_based(rt, journey)
    if condition is not None:
        with begin_write(rt.db) as conn:
            return enroll_matching(conn, journey, condition, now=now, dry_run=dry_run)
    with rt.db.connect() as conn:
        members = list(segment_members(conn, journey.entry.segment or "True"))
    with begin_write(rt.db) as conn:
        return enroll(conn, journey, members, now=now, dry_run=dry_run)


# --- doing the work in this process -------------------------------------------------------

class InlineDispatcher:
    """Runs each piece of work at once, in this process. A batch that must wait for its next
    attempt is left to a later tick, which claims it when its time comes."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def cursors(self, enrollment_ids: list[int]) -> None:
        run_cursors(self.rt, enrollment_ids)

    def touches(self, claim: TouchClaim) -> None:
        for batch_id in process_touches(self.rt, claim.touch_ids, claim.token):
            self._drive(batch_id, claim.token)

    def deliver(self, claim: BatchClaim) -> None:
        self._drive(claim.batch_id, claim.token)

    def _drive(self, batch_id: str, token: str) -> None:
        try:
            drive_batch(self.rt, batch_id, token)
        except Exception:  # one batch's error must not stop the others
            log.exception("batch %s: delivery stopped; a later tick resumes it", batch_id)

    def refresh(self, now: datetime, fire: datetime) -> None:
        run_refresh(self.rt, now, fire)

    def poll_wecom(self, now: datetime) -> None:
        poll_wecom(self.rt, now)

    def rebuild_caps(self) -> None:
        rebuild_caps(self.rt)


def in_flight(rt: Runtime) -> int:
    """Claimed touches, open batches (sending, in doubt or waiting for their next attempt)
    and leased cursors: what a virtual clock must not run past."""
    with rt.db.connect() as conn:
        touches = conn.execute(select(func.count()).select_from(TOUCHES).where(
            TOUCHES.c.status == "claimed")).scalar_one()
        batches = conn.execute(select(func.count()).select_from(BATCHES).where(
            BATCHES.c.state.in_(OPEN_STATES))).scalar_one()
        cursors = conn.execute(select(func.count()).select_from(ENROLLMENTS).where(
            ENROLLMENTS.c.lease_until.is_not(None), ENROLLMENTS.c.state == "active")).scalar_one()
    return int(touches) + int(batches) + int(cursors)


def busy(rt: Runtime) -> int:
    """Work a worker holds right now: in flight, less the batches waiting, unheld, for their
    next attempt (only a tick hands those out again)."""
    real_now = utcnow()
    with rt.db.connect() as conn:
        waiting = conn.execute(select(func.count()).select_from(BATCHES).where(
            BATCHES.c.state.in_(OPEN_STATES),
            or_(BATCHES.c.lease_until.is_(None), BATCHES.c.lease_until < real_now),
        )).scalar_one()
    return in_flight(rt) - int(waiting)


def next_attempt(rt: Runtime) -> datetime | None:
    """The earliest real time an open batch is due for its next attempt."""
    with rt.db.connect() as conn:
        due = conn.execute(select(func.min(func.coalesce(
            BATCHES.c.next_attempt_at, BATCHES.c.lease_until))).where(
            BATCHES.c.state.in_(OPEN_STATES))).scalar()
    return as_utc(due) if due else None


def run_until_idle(rt: Runtime, dispatcher: Dispatcher | None = None,
                   max_ticks: int = 1_000) -> int:
    """Tick until a tick finds nothing to do; returns the number of ticks. Batches waiting
    for a later attempt (real time) are left waiting."""
    dispatcher = dispatcher or InlineDispatcher(rt)
    for n in range(1, max_ticks + 1):
        if tick(rt, dispatcher).empty:
            return n
    raise RuntimeError(f"still finding work after {max_ticks} ticks")


def next_due(rt: Runtime) -> datetime | None:
    """The earliest business time at which something becomes claimable."""
    gather = timedelta(seconds=rt.settings.gather_window_s)
    with rt.db.connect() as conn:
        cursor = conn.execute(select(func.min(ENROLLMENTS.c.due_at)).where(
            ENROLLMENTS.c.state == "active")).scalar()
        batched = conn.execute(select(func.min(TOUCHES.c.due_at)).where(
            TOUCHES.c.status == "scheduled",
            TOUCHES.c.channel.in_(BATCHED))).scalar()
        single = conn.execute(select(func.min(TOUCHES.c.due_at)).where(
            TOUCHES.c.status == "scheduled",
            TOUCHES.c.channel.not_in(BATCHED))).scalar()
    candidates: Iterable[datetime | None] = (
        as_utc(cursor) if cursor else None,
        as_utc(batched) + gather if batched else None,
        as_utc(single) if single else None,
    )
    present = [c for c in candidates if c is not None]
    return min(present) if present else None
