"""Golden-window detectors: the moment to intervene, emitted as ``signal.<name>`` events.

Three detectors, each configured under ``audience.golden`` in the policy:

``activity_drop``    active days in the last ``recent_days`` fell by ``min_drop_pct`` %
                     or more against the user's own ``baseline_days`` before them (users
                     with fewer than ``min_baseline_active_days`` baseline days are not
                     judged). Fires when the drop *starts*: it holds at ``at`` and did not
                     one detection interval earlier.
``payment_failure``  ``after_hours`` after a user's latest payment failure that no order has
                     followed, as long as the failure is younger than ``max_age_hours``.
                     The signal's time is the failure + ``after_hours``.
``churn_score``      the churn score reached ``threshold`` at ``at`` and was below it one
                     detection interval earlier.

Every signal has a deterministic id ``signal.<name>:<user_id>:<local date>`` (the date of
``at``, or of the failure for ``payment_failure``), so running detection again, or on
overlapping schedules, produces the same events and ingesting them is idempotent.
Detection reads only events at or before ``at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.audience.churn import (
    calibrated_for,
    default_models_dir,
    load_model,
    score_frame,
)
from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import (
    FeatureFrame,
    FloatArray,
    Frames,
    compute_features,
    computed,
)
from orchestrator.clock import as_utc
from orchestrator.store.db import begin_write
from orchestrator.store.tables import EVENTS, USERS

EventDict = dict[str, Any]
SIGNAL_PREFIX = "signal."


@dataclass(frozen=True)
class Signal:
    name: str  # activity_drop | payment_failure | churn_score
    user_id: str
    ts: datetime  # when the window opened (UTC)
    day: date  # local date that makes the id (one signal per user, detector and day)
    props: dict[str, Any] = field(default_factory=dict)

    @property
    def event_name(self) -> str:
        return f"{SIGNAL_PREFIX}{self.name}"

    @property
    def event_id(self) -> str:
        return f"{self.event_name}:{self.user_id}:{self.day.isoformat()}"


def detect(
    engine: Engine,
    *,
    at: datetime,
    config: AudienceConfig,
    models_dir: Path | None = None,
    frames: Frames | None = None,
) -> list[EventDict]:
    """Every golden-window signal at ``at``, as event dicts ready for ingestion."""
    return signals_to_events(
        detect_signals(engine, at=at, config=config, models_dir=models_dir, frames=frames),
        config,
    )


def detect_signals(
    engine: Engine,
    *,
    at: datetime,
    config: AudienceConfig,
    models_dir: Path | None = None,
    frames: Frames | None = None,
) -> list[Signal]:
    """Run the enabled detectors at ``at``; signals sorted by (name, user, day).

    ``frames``: feature frames of the same data already computed (the refresh's, at ``at``);
    the detectors reuse them and compute the rest once each.

    A signal fires on an edge: its condition holds at ``at`` and did not one interval
    earlier. So the earlier moment is computed only for the users whose condition holds at
    ``at`` (the candidates), not for everyone: their features do not depend on who else is
    in the frame (only the RFM quintiles do, and no detector reads them)."""
    at = as_utc(at)
    golden = config.golden
    previous = at - timedelta(hours=golden.interval_hours)
    signals: list[Signal] = []
    known: Frames = {} if frames is None else frames

    def frame(cutoff: datetime, cfg: AudienceConfig) -> FeatureFrame:
        return computed(engine, known, cutoff, cfg)

    drop = narrowed(config) if is_holiday(config, at) else config
    scoring, model = config, None
    if golden.churn_score.enabled:
        model = load_model(models_dir=models_dir or default_models_dir())
        if model is not None:  # both moments scored by the calibration of now
            model = calibrated_for(engine, model, at)
        scoring = model.config if model is not None else config  # the model's own features
    candidates: dict[AudienceConfig, set[str]] = {}
    if golden.activity_drop.enabled:
        # The rule in force at ``at`` judges both moments: the edge is the user's, not the
        # calendar's.
        now = frame(at, drop)
        candidates.setdefault(drop, set()).update(now.user_ids[_dropped(now, drop)].tolist())
    if golden.churn_score.enabled:
        now = frame(at, scoring)
        now_scores = score_frame(now, model, scoring)
        high = (now_scores >= golden.churn_score.threshold) & ~np.isnan(now["recency_days"])
        candidates.setdefault(scoring, set()).update(now.user_ids[high].tolist())
    earlier = {cfg: _earlier(engine, known, previous, cfg, users)
               for cfg, users in candidates.items()}

    if golden.activity_drop.enabled:
        signals += activity_drop_signals(frame(at, drop), earlier[drop], drop)
    if golden.payment_failure.enabled:
        signals += payment_failure_signals(engine, at=at, config=config)
    if golden.churn_score.enabled:
        before = earlier[scoring]
        signals += churn_score_signals(
            frame(at, scoring), now_scores, before, score_frame(before, model, scoring),
            config=config,
        )
    return sorted(signals, key=lambda s: (s.name, s.user_id, s.day))


def _earlier(
    engine: Engine, known: Frames, cutoff: datetime, config: AudienceConfig, users: set[str]
) -> FeatureFrame:
    """The features at ``cutoff`` of ``users``, as rows of the whole population's frame:
    a user who was not known then (no behaviour by then and not in the users table) has
    no row, as in ``compute_features`` of everyone."""
    if (cutoff, config) in known:
        return known[cutoff, config]
    part = compute_features(engine, cutoff=cutoff, config=config, user_ids=sorted(users))
    seen = ~np.isnan(part["tenure_days"])  # some behaviour by the cutoff
    if seen.all():
        return part
    listed = _listed(engine, part.user_ids[~seen].tolist())
    return part.select(seen | np.isin(part.user_ids, list(listed)))


def _listed(engine: Engine, user_ids: list[str]) -> set[str]:
    """Which of ``user_ids`` the users table holds (not erased)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            rows = conn.execute(select(USERS.c.user_id, USERS.c.erased)
                                .where(USERS.c.user_id.in_(chunk)))
            found.update(uid for uid, gone in rows if not gone)
    return found


def is_holiday(config: AudienceConfig, moment: datetime) -> bool:
    """Whether ``moment``'s local date is inside a public-holiday break of the configured
    calendar (``policy.quiet.HolidayCalendar.is_holiday``): a make-up working day (调休)
    or an ordinary weekend is not."""
    if config.holidays is None:
        return False
    from orchestrator.policy.quiet import holiday_calendar

    return holiday_calendar(config.holidays).is_holiday(_local_date(moment, config))


def narrowed(config: AudienceConfig) -> AudienceConfig:
    """``config`` with its golden windows shrunk by ``holiday_factor``: the activity drop's
    recent window (whole days, at least 1) and the delay after a payment failure."""
    golden = config.golden
    factor = golden.holiday_factor
    drop = golden.activity_drop.model_copy(update={
        "recent_days": max(1, round(golden.activity_drop.recent_days * factor))})
    payment = golden.payment_failure.model_copy(update={
        "after_hours": golden.payment_failure.after_hours * factor})
    return config.model_copy(update={"golden": golden.model_copy(update={
        "activity_drop": drop, "payment_failure": payment})})


def activity_drop_signals(
    now: FeatureFrame, before: FeatureFrame, config: AudienceConfig
) -> list[Signal]:
    """Users whose drop condition holds in ``now`` and did not in ``before``."""
    dropped_now = _dropped(now, config)
    dropped_before = _lookup(before, now.user_ids, _dropped(before, config), default=False)
    fired = np.flatnonzero(dropped_now & ~dropped_before)
    rule = config.golden.activity_drop
    day = _local_date(now.cutoff, config)
    return [
        Signal(
            name="activity_drop",
            user_id=str(now.user_ids[i]),
            ts=now.cutoff,
            day=day,
            props={
                "drop_pct": round(100 * (1 - float(now["activity_trend"][i])), 1),
                "recent_active_days": int(now["recent_active_days"][i]),
                "baseline_active_days": int(now["baseline_active_days"][i]),
                "recent_days": rule.recent_days,
                "baseline_days": rule.baseline_days,
            },
        )
        for i in fired
    ]


def _dropped(frame: FeatureFrame, config: AudienceConfig) -> NDArray[np.bool_]:
    rule = config.golden.activity_drop
    enough_habit = frame["baseline_active_days"] >= rule.min_baseline_active_days
    trend = np.nan_to_num(frame["activity_trend"], nan=np.inf)
    # A small epsilon keeps "exactly X % lower" on the firing side despite float rounding.
    return enough_habit & (trend <= 1 - rule.min_drop_pct / 100 + 1e-9)


def payment_failure_signals(
    engine: Engine, *, at: datetime, config: AudienceConfig
) -> list[Signal]:
    """Latest ripe failure per user (older than ``after_hours``, younger than
    ``max_age_hours``) with no order after it by ``at``."""
    at = as_utc(at)
    rule = config.golden.payment_failure
    # A failure on a holiday ripens after the narrowed delay (see ``narrowed``).
    holiday_rule = narrowed(config).golden.payment_failure if config.holidays else rule
    ripe_by = at - timedelta(hours=min(rule.after_hours, holiday_rule.after_hours))
    oldest = at - timedelta(hours=rule.max_age_hours)
    e = EVENTS.c
    failures = (
        select(e.user_id, func.max(e.ts))
        .where(e.name == config.payment_failed_event, e.ts > oldest, e.ts <= ripe_by)
        .group_by(e.user_id)
    )
    orders = (
        select(e.user_id, func.max(e.ts))
        .where(e.name == config.order_event, e.ts > oldest, e.ts <= at)
        .group_by(e.user_id)
    )
    with engine.connect() as conn:
        last_failure = {uid: as_utc(ts) for uid, ts in conn.execute(failures)}
        last_order = {uid: as_utc(ts) for uid, ts in conn.execute(orders)}
    signals = []
    for uid, failed_at in sorted(last_failure.items()):
        if uid in last_order and last_order[uid] > failed_at:
            continue
        holiday = is_holiday(config, failed_at)
        hours = (holiday_rule if holiday else rule).after_hours
        if failed_at + timedelta(hours=hours) > at:
            continue  # not ripe yet: the ordinary delay on an ordinary day
        props: dict[str, Any] = {"failed_at": failed_at.isoformat(), "after_hours": hours}
        if holiday:
            props["holiday"] = True
        signals.append(Signal(name="payment_failure", user_id=uid,
                              ts=failed_at + timedelta(hours=hours),
                              day=_local_date(failed_at, config), props=props))
    return signals


def churn_score_signals(
    now: FeatureFrame,
    now_scores: FloatArray,
    before: FeatureFrame,
    before_scores: FloatArray,
    *,
    config: AudienceConfig,
) -> list[Signal]:
    """Users seen active by now whose score reached the threshold and was below it one
    interval earlier (a user unknown then counts as below). Never-active users have no
    behaviour to read a churn risk from: they never fire."""
    threshold = config.golden.churn_score.threshold
    previous = np.nan_to_num(_lookup_values(before, now.user_ids, before_scores), nan=0.0)
    crossed = (now_scores >= threshold) & (previous < threshold)
    fired = np.flatnonzero(crossed & ~np.isnan(now["recency_days"]))
    day = _local_date(now.cutoff, config)
    return [
        Signal(
            name="churn_score",
            user_id=str(now.user_ids[i]),
            ts=now.cutoff,
            day=day,
            props={"churn_score": round(float(now_scores[i]), 6),
                   "previous": round(float(previous[i]), 6), "threshold": threshold},
        )
        for i in fired
    ]


def signals_to_events(signals: Sequence[Signal], config: AudienceConfig) -> list[EventDict]:
    """Event dicts: ``ts`` in ISO 8601 with the policy timezone's offset."""
    return [
        {
            "event_id": s.event_id,
            "user_id": s.user_id,
            "name": s.event_name,
            "ts": s.ts.astimezone(config.zone).isoformat(),
            "value": None,
            "props": dict(s.props),
        }
        for s in signals
    ]


def write_signals(engine: Engine, events: Sequence[EventDict], *, at: datetime) -> int:
    """Store signal events directly (``ON CONFLICT DO NOTHING``); returns how many were new.

    For tools and tests: the engine ingests signals through its own ingest path, which
    also enrolls ``entry.event`` journeys.
    """
    if not events:
        return 0
    rows = [
        {**e, "ts": as_utc(datetime.fromisoformat(e["ts"])), "ingested_at": as_utc(at)}
        for e in events
    ]
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    written = 0
    with begin_write(engine) as conn:
        for start in range(0, len(rows), 1_000):
            stmt = insert(EVENTS).values(rows[start : start + 1_000])
            stmt = stmt.on_conflict_do_nothing(index_elements=["event_id"])
            written += len(conn.execute(stmt.returning(EVENTS.c.event_id)).all())
    return written


def _positions(frame: FeatureFrame, user_ids: NDArray[np.object_]) -> NDArray[np.int64]:
    """Row of each of ``user_ids`` in ``frame`` (-1 where absent)."""
    position = {uid: i for i, uid in enumerate(frame.user_ids.tolist())}
    return np.array([position.get(uid, -1) for uid in user_ids.tolist()], dtype=np.int64)


def _lookup(
    frame: FeatureFrame, user_ids: NDArray[np.object_], values: NDArray[np.bool_], *, default: bool
) -> NDArray[np.bool_]:
    idx = _positions(frame, user_ids)
    found = values[np.maximum(idx, 0)] if len(values) else np.full(len(idx), default)
    return np.where(idx >= 0, found, default)


def _lookup_values(
    frame: FeatureFrame, user_ids: NDArray[np.object_], values: FloatArray
) -> FloatArray:
    idx = _positions(frame, user_ids)
    found = values[np.maximum(idx, 0)] if len(values) else np.zeros(len(idx))
    return np.where(idx >= 0, found, np.nan)


def _local_date(moment: datetime, config: AudienceConfig) -> date:
    return moment.astimezone(config.zone).date()


