"""The dispatcher tick and the ways its work gets done.

``tick`` claims due work and hands it to a ``Dispatcher``: Celery tasks in production
(``workers.tasks``), or the calling process itself (``InlineDispatcher``) for tools and
tests of the engine alone. Either way the same functions run the work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter
from sqlalchemy import func, select, update

from orchestrator.clock import as_utc, utcnow
from orchestrator.engine.cursors import run_cursors
from orchestrator.engine.delivery import deliver_batch, process_touches, reconcile_batch
from orchestrator.engine.dispatch import BATCHED, Tick, TouchClaim, claim_due
from orchestrator.engine.enroll import EnrollResult, enroll
from orchestrator.engine.refresh import maybe_refresh
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.segments import segment_members
from orchestrator.engine.wecom import due_for_poll, poll_wecom
from orchestrator.errors import RetryLater
from orchestrator.journeys.model import Journey
from orchestrator.store.db import begin_write
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from orchestrator.store.tables import JOURNEY_STATES as STATES

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def cursors(self, enrollment_ids: list[int]) -> None: ...
    def touches(self, claim: TouchClaim) -> None: ...
    def reconcile(self, batch_id: str) -> None: ...


TOUCH_CLAIM_LIMIT = 50_000  # a multiple of the 10,000 mass-send limit


def tick(rt: Runtime, dispatcher: Dispatcher) -> Tick:
    """One dispatcher tick: run due schedules, claim due work, hand it out."""
    now = rt.clock.now()
    if rt.book.reload_if_changed() or not rt.book.synced:
        rt.book.sync(rt.db, now=now)
    maybe_refresh(rt, now)
    run_schedules(rt, now)
    claimed = claim_due(
        rt.db,
        now=now,
        real_now=utcnow(),
        lease=timedelta(seconds=rt.settings.claim_lease_s),
        gather=timedelta(seconds=rt.settings.gather_window_s),
        limit=TOUCH_CLAIM_LIMIT,
        max_batch={name: rt.channel(name).max_batch for name in
                   ("wechat_article", "wecom_group_invite", "sms")},
    )
    chunk = rt.settings.claim_batch_size
    for start in range(0, len(claimed.cursors), chunk):
        dispatcher.cursors(claimed.cursors[start : start + chunk])
    for claim in claimed.touches:
        dispatcher.touches(claim)
    for batch_id in claimed.unknown_batches:
        dispatcher.reconcile(batch_id)
    if due_for_poll(rt, now):
        poll_wecom(rt, now)
    return claimed


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
    due = [s["journey_id"] for s in states
           if s["state"] == "active" and _fire(scheduled[s["journey_id"]], s, rt, now)]
    return sum(_run_schedule(rt, scheduled[journey_id], now) for journey_id in due)


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


def _run_schedule(rt: Runtime, journey: Journey, now: datetime) -> int:
    with begin_write(rt.db) as conn:
        state = conn.execute(select(STATES).where(STATES.c.journey_id == journey.id)
                             .with_for_update()).mappings().first()
        fire = _fire(journey, state, rt, now) if state and state["state"] == "active" else None
        if fire is None:
            return 0  # another tick ran it first
        members = list(segment_members(conn, journey.entry.segment or "True"))
        enrolled = enroll(conn, journey, members, now=now).enrolled
        conn.execute(update(STATES).where(STATES.c.journey_id == journey.id)
                     .values(last_schedule_run_at=fire))
    return enrolled


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
    with begin_write(rt.db) as conn:
        members = list(segment_members(conn, journey.entry.segment or "True"))
        return enroll(conn, journey, members, now=now, dry_run=dry_run)


# --- doing the work in this process -------------------------------------------------------

class InlineDispatcher:
    """Runs each piece of work at once, in this process. Retries are left to the next tick
    (their touches stay ``sending`` until their lease runs out, then are reconciled)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def cursors(self, enrollment_ids: list[int]) -> None:
        run_cursors(self.rt, enrollment_ids)

    def touches(self, claim: TouchClaim) -> None:
        for batch_id in process_touches(self.rt, claim.touch_ids, claim.token):
            self.deliver(batch_id)

    def deliver(self, batch_id: str) -> None:
        try:
            deliver_batch(self.rt, batch_id)
        except RetryLater as retry:
            log.warning("batch %s: %s", batch_id, retry)

    def reconcile(self, batch_id: str) -> None:
        try:
            reconcile_batch(self.rt, batch_id)
        except RetryLater as retry:
            log.warning("reconcile %s: %s", batch_id, retry)


def in_flight(rt: Runtime) -> int:
    """Claimed, sending or not yet reconciled work (what a virtual clock must not run past)."""
    with rt.db.connect() as conn:
        touches = conn.execute(select(func.count()).select_from(TOUCHES).where(
            TOUCHES.c.status.in_(("claimed", "sending", "unknown")))).scalar_one()
        cursors = conn.execute(select(func.count()).select_from(ENROLLMENTS).where(
            ENROLLMENTS.c.lease_until.is_not(None), ENROLLMENTS.c.state == "active")).scalar_one()
    return int(touches) + int(cursors)


def run_until_idle(rt: Runtime, dispatcher: Dispatcher | None = None,
                   max_ticks: int = 1_000) -> int:
    """Tick until a tick finds nothing to do; returns the number of ticks."""
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
