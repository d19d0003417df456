"""``recall simulate``: the real stack on a virtual clock.

The driver is the only thing that moves business time. Each step:

1. replay the events that fall due (through the ingest path, so triggers fire) and carry
   out the simulated recipients' actions (clicks over HTTP on the short link, joins and
   SMS replies through the sandbox's callbacks, conversions through ``POST /v1/events``);
2. tick until a tick claims nothing and nothing is in flight (Celery workers do the work);
3. plan the responses to what was just sent and to whoever just enrolled;
4. move the clock to the next moment anything happens (due work, an event bucket, a
   planned response, a cron fire), never past the end.

Events and actions are bucketed per virtual minute. With one worker a run is deterministic
for a seed: claims are ordered (due_at, priority, enrollment id) and every response is drawn
from hash(seed, touch).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from orchestrator.clock import as_utc, utcnow
from orchestrator.config import Settings
from orchestrator.engine.active_hours import placements
from orchestrator.engine.dispatch import BatchClaim, TouchClaim
from orchestrator.engine.importer import import_users, read_events
from orchestrator.engine.ingest import ingest_events
from orchestrator.engine.policy_gates import rebuild_caps
from orchestrator.engine.refresh import DEFAULT_REFRESH_CRON, run_refresh
from orchestrator.engine.responses import Action, Responses, plan_baseline, plan_touch
from orchestrator.engine.runner import (
    Dispatcher,
    busy,
    in_flight,
    next_after,
    next_attempt,
    next_due,
    tick,
)
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.stack import Stack
from orchestrator.engine.wecom import poll_wecom
from orchestrator.errors import RecallError
from orchestrator.store.clock import StoredClock
from orchestrator.store.tables import ENROLLMENTS, TOUCHES, USERS
from orchestrator.store.tables import USER_FEATURES as FEATURES

MINUTE = timedelta(minutes=1)
# Simulated people act in 10-minute buckets (their events keep their exact times): a reply
# or click a few minutes late changes nothing a journey can see, and the run takes far
# fewer clock steps.
ACTION_BUCKET = timedelta(minutes=10)
IDLE_TIMEOUT_S = 300.0
Pending = tuple[datetime, int, dict[str, Any]]  # (ts, line, event)


def ceil_to(value: datetime, step: timedelta) -> datetime:
    """``value`` rounded up to a whole multiple of ``step`` since the epoch."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    n = -(-(value - epoch) // step)
    return epoch + n * step


def ceil_minute(value: datetime) -> datetime:
    return ceil_to(value, MINUTE)


@dataclass
class SimulateResult:
    start: datetime
    end: datetime
    steps: int = 0
    events_replayed: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    touches: dict[str, int] = field(default_factory=dict)
    enrollments: int = 0
    seconds: float = 0.0


@dataclass
class Driver:
    rt: Runtime
    clock: StoredClock
    dispatcher: Dispatcher
    responses: Responses
    seed: int
    api_base: str | None
    sandbox: Any
    api_key: str
    pending_events: list[Pending]
    actions: list[Action] = field(default_factory=list)
    seen_touches: set[int] = field(default_factory=set)
    seen_enrollments: set[int] = field(default_factory=set)
    tiers: dict[str, str | None] = field(default_factory=dict)
    result: SimulateResult | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    _triggers: list[tuple[datetime, str]] = field(default_factory=list)
    _trigger_index: int = 0
    _planned_until: datetime = datetime.min.replace(tzinfo=UTC)
    _tier_day: date | None = None

    def __post_init__(self) -> None:
        self._triggers = sorted((ts, str(e.get("name"))) for ts, _, e in self.pending_events)

    # --- the loop ---------------------------------------------------------------------
    def run(self, start: datetime, end: datetime,
            progress: Callable[[float], None] | None = None) -> SimulateResult:
        self.result = SimulateResult(start=start, end=end)
        began = time.monotonic()
        now = start
        self._set_clock(now)
        self._refresh(now)
        while True:
            self._replay(now)
            self._act(now)
            self._drain()  # the tick runs the scheduled refresh and the journeys' crons
            if now.date() != self._tier_day:  # tiers change with the daily refresh
                self.tiers.clear()
                self._tier_day = now.date()
            self._plan(now)
            self.result.steps += 1
            if progress:
                progress((now - start) / (end - start))
            if now >= end:
                break
            now = min(end, max(now + timedelta(seconds=1), self._next(now)))
            self._set_clock(now)
        self.result.seconds = time.monotonic() - began
        self._summarise()
        return self.result

    def _set_clock(self, now: datetime) -> None:
        self.clock.set(now)
        if self.sandbox is not None:
            self.sandbox.state.set_clock(now)

    def _next(self, now: datetime) -> datetime:
        candidates: list[datetime] = []
        due = next_due(self.rt)
        if due is not None:
            candidates.append(due)
        trigger = self._next_trigger(now)
        if trigger is not None:
            candidates.append(ceil_minute(trigger))
        if self.actions:
            candidates.append(ceil_to(self.actions[0].at, ACTION_BUCKET))
        candidates += self._cron_fires(now)
        later = [c for c in candidates if c > now]
        return min(later) if later else now + timedelta(days=3650)

    def _next_trigger(self, now: datetime) -> datetime | None:
        """The next pending event that enrolls someone when ingested: it needs its own
        minute. Other events are ingested at the next stop at or after them (their effects,
        goal conversions included, are dated by the event's own time)."""
        names = {j.entry.event for j in self.rt.book.journeys() if j.entry.event}
        while self._trigger_index < len(self._triggers):
            ts, name = self._triggers[self._trigger_index]
            if ts > now and name in names:
                return ts
            self._trigger_index += 1
        return None

    def _refresh(self, now: datetime) -> None:
        """Derived fields as of the start, so a schedule firing before the first daily
        refresh sees today's tiers (the tick's scheduled refresh does the rest)."""
        from orchestrator.audience.refresh import refresh

        refresh(self.rt.db, at=now, settings=self.rt.settings)

    def _cron_fires(self, now: datetime) -> list[datetime]:
        """The next fire of every schedule: the journeys' and the audience refresh."""
        policy_tz = ZoneInfo(self.rt.book.policy.timezone)
        fires = [next_after(DEFAULT_REFRESH_CRON, now, policy_tz)]
        for journey in self.rt.book.journeys():
            if journey.entry.schedule and not journey.entry.event:
                tz = ZoneInfo(self.rt.book.policy_for(journey).timezone)
                fires.append(next_after(journey.entry.schedule, now, tz))
        return fires

    # --- 1. the world acts ------------------------------------------------------------
    def _replay(self, now: datetime) -> None:
        batch: list[dict[str, Any]] = []
        while self.pending_events and self.pending_events[0][0] <= now:
            batch.append(heapq.heappop(self.pending_events)[2])
            if len(batch) == 10_000:
                self._ingest(batch, now)
                batch = []
        if batch:
            self._ingest(batch, now)

    def _ingest(self, events: list[dict[str, Any]], now: datetime) -> None:
        ingest_events(self.rt.db, events, now=now, journeys=self.rt.book)
        assert self.result is not None
        self.result.events_replayed += len(events)

    def _act(self, now: datetime) -> None:
        due: list[Action] = []
        while self.actions and self.actions[0].at <= now:
            due.append(heapq.heappop(self.actions))
        if not due:
            return
        conversions = []
        for action in due:
            assert self.result is not None
            self.result.actions[action.kind] = self.result.actions.get(action.kind, 0) + 1
            if action.kind == "convert":
                conversions.append(self._conversion_event(action))
            else:
                self._perform(action)
        if conversions:
            self._post_events(conversions, now)
        if self.sandbox is not None:
            self.sandbox.state.flush()

    def _conversion_event(self, action: Action) -> dict[str, Any]:
        origin = f"t{action.touch_id}" if action.touch_id else f"e{action.enrollment_id}"
        return {"event_id": f"sim-{self.seed}-{origin}", "user_id": action.user_id,
                "name": self._goal_event(action), "ts": action.at.isoformat(),
                "value": action.detail.get("value"), "props": {"simulated": True}}

    def _goal_event(self, action: Action) -> str:
        with self.rt.db.connect() as conn:
            journey_id, version = conn.execute(
                select(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.journey_version)
                .where(ENROLLMENTS.c.id == action.enrollment_id)).one()
        journey = self.rt.book.get(self.rt.db, journey_id, version)
        return journey.goal.event if journey.goal else "order_placed"

    def _post_events(self, events: list[dict[str, Any]], now: datetime) -> None:
        if self.api_base is None:
            ingest_events(self.rt.db, events, now=now, journeys=self.rt.book)
            return
        response = self.http.post(f"{self.api_base}/v1/events", json={"events": events},
                                  headers={"Authorization": f"Bearer {self.api_key}"})
        response.raise_for_status()

    def _perform(self, action: Action) -> None:
        with self.rt.db.connect() as conn:
            touch = conn.execute(select(TOUCHES).where(TOUCHES.c.id == action.touch_id)
                                 ).mappings().first()
            user = conn.execute(select(USERS).where(USERS.c.user_id == action.user_id)
                                ).mappings().first()
        if touch is None or user is None:
            return
        if action.kind == "click" and touch["link_code"] and self.api_base:
            self.http.get(f"{self.api_base}/s/{touch['link_code']}", follow_redirects=False)
        elif action.kind == "join" and self.sandbox is not None and user["external_userid"]:
            self._join(touch, user["external_userid"])
        elif action.kind == "opt_out" and action.channel == "sms" and user["phone"] \
                and self.sandbox is not None:
            self.sandbox.state.twilio_inbound(user["phone"], "TD")

    def _join(self, touch: Any, external_userid: str) -> None:
        from orchestrator.channels.wecom_invite import join_state

        content = f"{touch['journey_version']}:{touch['step_id']}:{touch['variant'] or '-'}"
        wanted = join_state(touch["journey_id"], touch["step_id"], content)
        ways = self.sandbox.state.wecom.join_ways
        config_id = next((cid for cid, way in ways.items() if way.state == wanted), None)
        if config_id is not None:
            self.sandbox.state.wecom_join(external_userid, config_id=config_id)

    # --- 2. the engine works ----------------------------------------------------------
    def _drain(self) -> None:
        """Tick until a tick claims nothing and nothing is in flight. A batch waiting for
        its next attempt (real time: a provider's Retry-After) is waited for, then handed
        out by the next tick: the virtual clock never runs past work in flight."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            # In flight is read before the tick: work a worker finishes during the tick may
            # leave new due work that only the next tick would see.
            working = in_flight(self.rt)
            claimed = tick(self.rt, self.dispatcher)
            if claimed.empty and not working:
                return
            if not claimed.empty:
                deadline = time.monotonic() + IDLE_TIMEOUT_S
            self._wait_idle(deadline)
            if claimed.empty and not busy(self.rt):
                self._wait_for_attempt(deadline)

    def _wait_idle(self, deadline: float) -> None:
        pause = 0.001
        while busy(self.rt):
            self._check(deadline)
            time.sleep(pause)
            pause = min(0.01, pause * 1.5)

    def _wait_for_attempt(self, deadline: float) -> None:
        due = next_attempt(self.rt)
        while due is not None and due > utcnow():
            self._check(deadline)
            time.sleep(min(0.05, (due - utcnow()).total_seconds()))

    def _check(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise RecallError(
                f"work still in flight after {IDLE_TIMEOUT_S:.0f}s of real time: is a "
                f"worker running? (see {self.rt.settings.state_dir}/worker-*.log)")

    # --- 3. planning responses --------------------------------------------------------
    def _plan(self, now: datetime) -> None:
        with self.rt.db.connect() as conn:
            sent = conn.execute(
                select(TOUCHES.c.id, TOUCHES.c.enrollment_id, TOUCHES.c.user_id,
                       TOUCHES.c.channel, TOUCHES.c.sent_at, TOUCHES.c.journey_id,
                       TOUCHES.c.journey_version)
                .where(TOUCHES.c.status.in_(("sent", "delivered")), TOUCHES.c.sent_at <= now,
                       TOUCHES.c.sent_at >= self._planned_until, TOUCHES.c.test.is_(False))
            ).all()
            entered = conn.execute(
                select(ENROLLMENTS.c.id, ENROLLMENTS.c.user_id, ENROLLMENTS.c.entered_at,
                       ENROLLMENTS.c.journey_id, ENROLLMENTS.c.journey_version)
                .where(ENROLLMENTS.c.entered_at <= now,
                       ENROLLMENTS.c.entered_at >= self._planned_until)
            ).all()
            landed = placements(self.rt, conn, [t for t in sent if t.id not in
                                                self.seen_touches], now=now,
                                top=self.responses.active_hours.top_hours) \
                if self.responses.active_hours is not None else {}
        self._planned_until = now
        for t in sent:
            if t.id in self.seen_touches:
                continue
            self.seen_touches.add(t.id)
            goal = self.rt.book.get(self.rt.db, t.journey_id, t.journey_version).goal
            for action in plan_touch(self.responses, self.seed, touch_id=t.id,
                                     enrollment_id=t.enrollment_id, user_id=t.user_id,
                                     channel=t.channel, tier=self._tier(t.user_id),
                                     sent_at=as_utc(t.sent_at),
                                     goal_within=goal.within if goal else None,
                                     placement=landed.get(t.id)):
                heapq.heappush(self.actions, action)
        for e in entered:
            if e.id in self.seen_enrollments:
                continue
            self.seen_enrollments.add(e.id)
            goal = self.rt.book.get(self.rt.db, e.journey_id, e.journey_version).goal
            for action in plan_baseline(self.responses, self.seed, enrollment_id=e.id,
                                        user_id=e.user_id, tier=self._tier(e.user_id),
                                        entered_at=as_utc(e.entered_at),
                                        goal_within=goal.within if goal else None):
                heapq.heappush(self.actions, action)

    def _tier(self, user_id: str) -> str | None:
        if user_id not in self.tiers:
            with self.rt.db.connect() as conn:
                self.tiers[user_id] = conn.execute(
                    select(FEATURES.c.tier).where(FEATURES.c.user_id == user_id)).scalar()
        return self.tiers[user_id]

    def _summarise(self) -> None:
        from sqlalchemy import func

        assert self.result is not None
        with self.rt.db.connect() as conn:
            rows = conn.execute(select(TOUCHES.c.status, func.count())
                                .where(TOUCHES.c.test.is_(False))  # test sends never count
                                .group_by(TOUCHES.c.status)).all()
            self.result.touches = {status: int(n) for status, n in rows}
            self.result.enrollments = int(conn.execute(
                select(func.count()).select_from(ENROLLMENTS)).scalar_one())


class SimulateDispatcher:
    """Celery workers do the work; the audience refresh, WeCom polling and a caps rebuild
    run here, in the driver, so that their effects are in place before the clock moves
    on."""

    def __init__(self, rt: Runtime) -> None:
        from workers.tasks import CeleryDispatcher

        self.rt = rt
        self._celery = CeleryDispatcher()

    def cursors(self, enrollment_ids: list[int]) -> None:
        self._celery.cursors(enrollment_ids)

    def touches(self, claim: TouchClaim) -> None:
        self._celery.touches(claim)

    def deliver(self, claim: BatchClaim) -> None:
        self._celery.deliver(claim)

    def refresh(self, now: datetime, fire: datetime) -> None:
        run_refresh(self.rt, now, fire)

    def poll_wecom(self, now: datetime) -> None:
        poll_wecom(self.rt, now)

    def rebuild_caps(self) -> None:
        rebuild_caps(self.rt)


def split_events(
    path: Path | None, start: datetime
) -> tuple[list[dict[str, Any]], list[Pending]]:
    """History (at or before ``start``) and the events to replay (after it), in order."""
    history: list[dict[str, Any]] = []
    future: list[Pending] = []
    if path is None:
        return history, future
    for number, item in read_events(path):
        if isinstance(item, str):
            raise RecallError(f"{path}:{number}: {item}")
        ts = as_utc(datetime.fromisoformat(str(item.get("ts"))))
        if ts <= start:
            history.append(item)
        else:
            future.append((ts, number, item))
    future.sort(key=lambda pending: pending[:2])
    heapq.heapify(future)
    return history, future


def chunks(items: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def _import_users(rt: Runtime, users: Path, start: datetime) -> None:
    """The users file must import cleanly: a run on a silently partial population would
    report numbers about people who are not there."""
    from orchestrator.audience.phones import default_region, policy_timezone
    from orchestrator.errors import InputError

    region = default_region(rt.settings, policy_timezone(rt.settings))
    report = import_users(rt.db, users, now=start, region=region)
    if report.errors:
        line, reason = report.errors[0]
        raise InputError(f"{users}:{line}: {reason} ({len(report.errors):,} bad rows in all; "
                         f"`recall import users {users}` lists them)")


def simulate(
    settings: Settings,
    *,
    days: float,
    start: datetime,
    users: Path | None = None,
    events: Path | None = None,
    responses: Responses | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[float], None] | None = None,
    before: Callable[[Runtime], None] | None = None,
) -> SimulateResult:
    """Run the real stack over ``days`` of virtual time from ``start``."""
    api_key = settings.api_key_list[0] if settings.api_key_list else "simulate-key"
    settings = settings.model_copy(update={"api_keys": ",".join({*settings.api_key_list,
                                                                  api_key})})
    with Stack(settings, workers=workers) as stack:
        from orchestrator.store.redis import broker_url
        from workers.app import configure
        configure(broker_url(stack.settings), stack.settings.celery_queue)
        rt = Runtime.from_settings(stack.settings)
        clock = rt.clock
        assert isinstance(clock, StoredClock)
        clock.set(start)
        rt.book.sync(rt.db, now=start)
        if users is not None:
            _import_users(rt, users, start)
        history, future = split_events(events, start)
        for chunk in chunks(history, 5_000):
            ingest_events(rt.db, chunk, now=start)  # history: no journey is triggered
        if before is not None:
            before(rt)
        driver = Driver(rt=rt, clock=clock, dispatcher=SimulateDispatcher(rt),
                        responses=responses or Responses(), seed=seed,
                        api_base=stack.api.base_url if stack.api else None,
                        sandbox=stack.sandbox, api_key=api_key, pending_events=future)
        try:
            return driver.run(start, start + timedelta(days=days), progress)
        finally:
            driver.http.close()
            rt.close()
