"""The scheduled audience refresh: derived fields and golden-window signals, on business time.

Derived fields are refreshed on a schedule and on demand, and golden-window detectors
enroll users the moment they fire, during a scheduled refresh. When the refresh cron has
fired since the last run, the refresh

1. recomputes features, RFM, tiers and churn scores as of ``now`` (``audience.refresh``);
2. detects the golden-window signals as of ``now`` (``audience.golden.detect``), on the
   same feature computation as step 1 (one pass over the events at ``now``, not two);
3. ingests them through the one ingest path, so journeys with ``entry.event: signal.<name>``
   enroll at that moment. Signal ids are deterministic: running it again adds nothing.

**When.** ``DEFAULT_REFRESH_CRON`` (``0 9 * * *``: 09:00 local, before the sample journeys'
10:00 audience runs), in the policy time zone, against the ``Clock`` (business time). The
audience config has no key for the cron yet. Missed fires collapse into one run. The very
first check starts counting from the first journey sync (else from ``now``), so a new
deployment does not refresh for the past. The tick only claims the fire
(``claim_refresh``); the refresh itself runs in a task of its own (``run_refresh``), so a
long refresh never holds up the claims of due work.

**Exactly one runner.** The last fire is kept in ``kv`` under ``audience:last_refresh``. A
tick reads it (one small query) and, only when a fire is due, claims it under the row lock
with a lease in real time (lease time is always real). The work itself writes in its own
transactions (SQLite could not start them while this process held the write lock), so the
claim is recorded first and the fire marked done afterwards. A failed refresh is logged,
its error stored in the row, and retried by a tick after ``RETRY_AFTER``; a process that died
mid-refresh leaves a lease that runs out after ``REFRESH_LEASE``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select, update

from orchestrator.audience.churn import default_models_dir
from orchestrator.audience.config import load_audience_config
from orchestrator.audience.features import Frames
from orchestrator.audience.golden import detect
from orchestrator.audience.refresh import refresh
from orchestrator.clock import as_utc, utcnow
from orchestrator.engine.book import upsert
from orchestrator.engine.ingest import MAX_BATCH, ingest_events
from orchestrator.engine.runtime import Runtime
from orchestrator.store.db import begin_write
from orchestrator.store.tables import JOURNEY_VERSIONS as VERSIONS
from orchestrator.store.tables import KV

log = logging.getLogger(__name__)
LAST_REFRESH_KEY = "audience:last_refresh"
DEFAULT_REFRESH_CRON = "0 9 * * *"  # 09:00 in the policy time zone
REFRESH_LEASE = timedelta(minutes=30)  # real time a claimed refresh may take
RETRY_AFTER = timedelta(minutes=5)  # real time before a failed refresh is tried again


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did. ``fire`` is the cron time it ran for (None: on demand)."""

    at: datetime
    fire: datetime | None
    users: int  # user_features rows written
    signals: int  # golden-window signals detected at ``at``
    new_signals: int  # of which were not ingested before
    enrolled: int  # enrollments the new signals made


def maybe_refresh(rt: Runtime, now: datetime) -> RefreshResult | None:
    """Run the scheduled refresh here if its cron fired since the last run; else None at the
    cost of one small read. Never raises for a failed refresh (it is logged and retried)."""
    fire = claim_refresh(rt, now)
    return None if fire is None else run_refresh(rt, now, fire)


def claim_refresh(rt: Runtime, now: datetime) -> datetime | None:
    """The fire to refresh for, claimed under a lease (the tick then hands it to a task of
    its own), or None: not due, or already claimed. Costs one small read when not due."""
    now = as_utc(now)
    with rt.db.connect() as conn:
        state = _read(conn)
    if state is None:
        state = _initialise(rt, now)
    if _due(state, now, _zone(rt), utcnow()) is None:
        return None
    return _claim(rt, now)


def run_refresh(rt: Runtime, now: datetime, fire: datetime) -> RefreshResult | None:
    """Refresh for a claimed ``fire`` and mark it done; a failure is logged, stored in the
    row and retried by a later tick after ``RETRY_AFTER``."""
    now = as_utc(now)
    try:
        result = refresh_now(rt, now, fire=fire)
    except Exception as exc:  # the tick's other work goes on; the fire is retried later
        log.exception("scheduled audience refresh for %s failed", fire.isoformat())
        _finish(rt, now, fire=None, error=f"{type(exc).__name__}: {exc}")
        return None
    _finish(rt, now, fire=fire, result=result)
    return result


def refresh_now(rt: Runtime, now: datetime, *, fire: datetime | None = None) -> RefreshResult:
    """Refresh the audience as of ``now`` and ingest the golden-window signals (on demand:
    the schedule is left as it is). Raises what the audience package raises."""
    now = as_utc(now)
    config = load_audience_config(settings=rt.settings)
    frames: Frames = {}  # the features at ``now``, computed once for the refresh and detection
    users = refresh(rt.db, at=now, settings=rt.settings, config=config, frames=frames)
    events = detect(rt.db, at=now, config=config, models_dir=default_models_dir(rt.settings),
                    frames=frames)
    new_signals = enrolled = 0
    for start in range(0, len(events), MAX_BATCH):
        ingested = ingest_events(rt.db, events[start : start + MAX_BATCH], now=now,
                                 journeys=rt.book)
        new_signals += ingested.accepted
        enrolled += ingested.enrolled
        for rejected in ingested.rejected:
            log.warning("signal %s not ingested: %s",
                        events[start + rejected.index]["event_id"], rejected.error)
    result = RefreshResult(at=now, fire=fire, users=users, signals=len(events),
                           new_signals=new_signals, enrolled=enrolled)
    log.info("audience refreshed at %s: %d users, %d signals (%d new), %d enrolled",
             now.isoformat(), users, len(events), new_signals, enrolled)
    return result


# --- the schedule row ---------------------------------------------------------------------

def _zone(rt: Runtime) -> ZoneInfo:
    return ZoneInfo(rt.book.policy.timezone)


def _read(conn: Connection, *, lock: bool = False) -> dict[str, Any] | None:
    query = select(KV.c.value).where(KV.c.key == LAST_REFRESH_KEY)
    value = conn.execute(query.with_for_update() if lock else query).scalar()
    return dict(value) if value is not None else None


def _initialise(rt: Runtime, now: datetime) -> dict[str, Any]:
    """Start counting from the first journey sync (else now), once; returns the row."""
    with begin_write(rt.db) as conn:
        first_sync = conn.execute(select(func.min(VERSIONS.c.created_at))).scalar()
        base = as_utc(first_sync) if first_sync is not None else now
        conn.execute(upsert(rt.db)(KV).values(key=LAST_REFRESH_KEY, updated_at=now,
                                              value={"fire": base.isoformat()})
                     .on_conflict_do_nothing())
        state = _read(conn)
    assert state is not None
    return state


def _due(state: dict[str, Any], now: datetime, tz: ZoneInfo, real_now: datetime
         ) -> datetime | None:
    """The latest fire in ``(last fire, now]`` unless a live lease holds the row."""
    lease = state.get("lease_until")
    if lease and _time(lease) > real_now:
        return None  # being refreshed elsewhere, or backing off after a failure
    from orchestrator.engine.runner import last_fire  # runner imports this module

    return last_fire(DEFAULT_REFRESH_CRON, _time(state["fire"]), now, tz)


def _claim(rt: Runtime, now: datetime) -> datetime | None:
    real_now = utcnow()
    with begin_write(rt.db) as conn:
        state = _read(conn, lock=True)
        fire = _due(state, now, _zone(rt), real_now) if state else None
        if state is None or fire is None:
            return None
        state.update(lease_until=(real_now + REFRESH_LEASE).isoformat(), running=fire.isoformat())
        _write(conn, state, now)
    return fire


def _finish(rt: Runtime, now: datetime, *, fire: datetime | None,
            result: RefreshResult | None = None, error: str | None = None) -> None:
    """Mark ``fire`` done (or, without one, record the error and back off)."""
    with begin_write(rt.db) as conn:
        state = _read(conn, lock=True) or {}
        state.pop("running", None)
        if fire is not None:
            state.update(fire=fire.isoformat(), ran_at=now.isoformat(), lease_until=None,
                         error=None, result=_summary(result))
        else:
            state.update(error=error, lease_until=(utcnow() + RETRY_AFTER).isoformat())
        _write(conn, state, now)


def _write(conn: Connection, state: dict[str, Any], now: datetime) -> None:
    conn.execute(update(KV).where(KV.c.key == LAST_REFRESH_KEY)
                 .values(value=state, updated_at=now))


def _summary(result: RefreshResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(result).items()}


def _time(value: str) -> datetime:
    return as_utc(datetime.fromisoformat(value))
