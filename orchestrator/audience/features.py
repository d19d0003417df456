"""Per-user behaviour features at a cutoff, computed in bulk.

The database does the heavy lifting: one ``GROUP BY user_id`` over the events table with
conditional aggregates (counts, sums, distinct local days per window, hour buckets), and
one over touches; numpy derives ratios, quintiles and tiers from those columns. The query
itself says ``ts <= cutoff``: no feature can see an event after its cutoff.

Built for sparse, irregular buyers as much as for daily users: every ratio has a defined
value or NaN (never 0/0), gaps are measured between distinct *active days* (a login, a
session and an order in one lunch break are one visit), and windows that a user has not
lived through yet are simply empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy import Engine, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.rfm import assign_tiers, quintile_scores
from orchestrator.clock import as_utc
from orchestrator.config import Settings
from orchestrator.store.tables import EVENTS, TOUCHES, USERS

DAY_S = 86_400
HOUR_BUCKETS = 6  # 4-hour slices of the local day: night, morning, noon, afternoon, ...
HABIT_DAYS = 90  # hour-of-day and weekday habits look this far back
PAYMENT_WINDOW_DAYS = 30
RESPONSE_WINDOW_DAYS = 30
CHUNK = 2_000  # user ids per IN (...) query
# Local times of day, as [start, end) in hours: campus meals, and the late-night snack.
MEAL_HOURS = ((6.5, 9.5), (10.5, 13.5), (16.5, 19.5))
NIGHT_HOURS = (21.0, 29.0)  # 21:00 to 05:00 the next morning


FloatArray = NDArray[np.float64]


class epoch_seconds(FunctionElement[int]):
    """Whole seconds since 1970 of a stored UTC timestamp, on SQLite and PostgreSQL."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    # SQLite stores the UTC column as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_seconds)  # PostgreSQL, and str() of a statement for debugging
@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@dataclass(frozen=True)
class FeatureFrame:
    """Columnar features: ``user_ids[i]`` owns row ``i`` of every column (float64, NaN =
    not defined for this user, e.g. no order yet)."""

    cutoff: datetime
    user_ids: NDArray[np.object_]
    columns: dict[str, FloatArray]
    tiers: NDArray[np.str_] = field(default_factory=lambda: np.zeros(0, dtype=np.str_))

    def __len__(self) -> int:
        return len(self.user_ids)

    def __getitem__(self, name: str) -> FloatArray:
        return self.columns[name]

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def index_of(self, user_id: str) -> int:
        hits = np.flatnonzero(self.user_ids == user_id)
        if not len(hits):
            raise KeyError(f"user {user_id!r} is not in this feature frame")
        return int(hits[0])

    def row(self, user_id: str) -> dict[str, float | None]:
        """One user's features, NaN as None (JSON-ready)."""
        i = self.index_of(user_id)
        return {name: _json_number(col[i]) for name, col in self.columns.items()}

    def matrix(self, names: Sequence[str]) -> FloatArray:
        return np.column_stack([self.columns[n] for n in names]) if names else np.zeros((0, 0))

    def select(self, mask: NDArray[np.bool_]) -> FeatureFrame:
        return FeatureFrame(
            cutoff=self.cutoff,
            user_ids=self.user_ids[mask],
            columns={k: v[mask] for k, v in self.columns.items()},
            tiers=self.tiers[mask] if len(self.tiers) else self.tiers,
        )


def compute_features(
    engine: Engine,
    *,
    cutoff: datetime,
    user_ids: Sequence[str] | None = None,
    config: AudienceConfig | None = None,
) -> FeatureFrame:
    """Features of every known user (users table ∪ users with events, minus erased users)
    at ``cutoff``, or of ``user_ids`` only. Rows are sorted by user id.

    RFM scores rank users within the frame: pass ``user_ids=None`` for population-wide
    quintiles.
    """
    cutoff = as_utc(cutoff)
    config = config or AudienceConfig()
    spec = _Spec.build(config, cutoff)
    event_ids, event_cols = _event_aggregates(engine, spec, user_ids)
    touch_ids, touch_cols = _touch_aggregates(engine, spec, user_ids)
    population = _population(engine, user_ids, event_ids)
    raw = _align(population, (event_ids, event_cols), (touch_ids, touch_cols))
    columns = _derive(raw, spec)
    tiers = assign_tiers(
        columns["recency_days"],
        columns[f"active_days_{config.tiers.low_frequency_window_days}d"],
        config.tiers,
    )
    return FeatureFrame(cutoff=cutoff, user_ids=population, columns=columns, tiers=tiers)


# A refresh's feature frames by (cutoff, config): the tiers, RFM and churn scores it writes and
# the golden-window detection after it read the same computation instead of repeating it.
Frames = dict[tuple[datetime, AudienceConfig], FeatureFrame]


def computed(
    engine: Engine, frames: Frames, cutoff: datetime, config: AudienceConfig
) -> FeatureFrame:
    """``compute_features(cutoff, config)`` of every known user, once per ``frames``."""
    key = (as_utc(cutoff), config)
    if key not in frames:
        frames[key] = compute_features(engine, cutoff=cutoff, config=config)
    return frames[key]


# --------------------------------------------------------------------------- the queries


@dataclass(frozen=True)
class _Spec:
    cutoff: datetime
    cutoff_epoch: int
    offset_s: int  # local time of the habit/day buckets (policy timezone at the cutoff)
    windows: tuple[int, ...]
    activity: tuple[str, ...]
    order: str
    failure: str
    recent_days: int
    baseline_days: int
    rfm_window: int

    @classmethod
    def build(cls, config: AudienceConfig, cutoff: datetime) -> _Spec:
        offset = cutoff.astimezone(config.zone).utcoffset() or timedelta(0)
        drop = config.golden.activity_drop
        windows = {7, 30, 90, config.rfm_window_days, config.tiers.low_frequency_window_days}
        return cls(
            cutoff=cutoff,
            cutoff_epoch=int(cutoff.timestamp() // 1),
            offset_s=int(offset.total_seconds()),
            windows=tuple(sorted(windows)),
            activity=tuple(config.activity_events),
            order=config.order_event,
            failure=config.payment_failed_event,
            recent_days=drop.recent_days,
            baseline_days=drop.baseline_days,
            rfm_window=config.rfm_window_days,
        )

    def since(self, days: float) -> datetime:
        return self.cutoff - timedelta(days=days)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _event_rows(spec: _Spec, user_ids: list[str] | None) -> sa.Subquery:
    """One row per relevant event with its epoch computed once.

    ``OFFSET 0`` keeps SQLite and PostgreSQL from inlining this subquery into the
    aggregate, which would recompute the timestamp conversion for every reference
    (8x slower on SQLite).
    """
    e = EVENTS.c
    names = sorted({*spec.activity, spec.order, spec.failure})
    stmt = (
        select(
            e.user_id,
            case((e.name.in_(spec.activity), 1), else_=0).label("is_act"),
            case((e.name == spec.order, 1), else_=0).label("is_order"),
            case((e.name == spec.failure, 1), else_=0).label("is_fail"),
            func.coalesce(e.value, 0.0).label("money"),
            epoch_seconds(e.ts).label("epoch"),
        )
        .where(e.ts <= spec.cutoff)  # the no-leakage guarantee lives here
        .where(e.name.in_(names))
        .offset(0)
    )
    if user_ids is not None:
        stmt = stmt.where(e.user_id.in_(user_ids))
    return stmt.subquery("behaviour")


def _daily_statement(spec: _Spec, user_ids: list[str] | None) -> sa.Subquery:
    """Per (user, day ago) sums: every window is a whole number of days back from the
    cutoff, so the per-user aggregate only has to add days up (no COUNT DISTINCT)."""
    r = _event_rows(spec, user_ids).c
    epoch = r.epoch
    # Days ago, counted back from the cutoff (0 = its last 24 h): a 7-day window holds
    # exactly 7 such days wherever the cutoff falls in the local day.
    day = ((spec.cutoff_epoch - epoch) // DAY_S).label("day")
    local_day = (epoch + spec.offset_s) // DAY_S
    of_day = (epoch + spec.offset_s) % DAY_S
    bucket = of_day // (DAY_S // HOUR_BUCKETS)
    is_act, is_order, is_fail = r.is_act == 1, r.is_order == 1, r.is_fail == 1
    columns: list[ColumnElement[Any]] = [
        func.sum(r.is_act).label("act"),
        func.sum(r.is_order).label("orders"),
        func.sum(r.is_fail).label("fails"),
        _sum_if(is_order, r.money).label("money"),
        func.max(case((is_act, epoch))).label("last_act"),
        func.min(case((is_act, epoch))).label("first_act"),
        func.min(epoch).label("first_seen"),
        func.max(case((is_order, epoch))).label("last_order"),
        func.max(case((is_fail, epoch))).label("last_fail"),
        _count_if(is_act & ((local_day + 3) % 7 >= 5)).label("weekend"),  # 1970-01-01: Thu
        _count_if(is_act & _within_hours(of_day, MEAL_HOURS)).label("meal"),
        _count_if(is_act & _within_hours(of_day, (NIGHT_HOURS,))).label("night"),
    ]
    columns += [_count_if(is_act & (bucket == b)).label(f"b{b}") for b in range(HOUR_BUCKETS)]
    return select(r.user_id, day, *columns).group_by(r.user_id, day).subquery("daily")


def _within_hours(
    of_day: ColumnElement[Any], spans: Sequence[tuple[float, float]]
) -> ColumnElement[bool]:
    """Seconds into the local day inside any ``[start, end)`` span of hours (an end past
    24 wraps into the next morning)."""
    parts: list[ColumnElement[bool]] = []
    for start, end in spans:
        lo, hi = int(start * 3600), int(end * 3600)
        if hi <= DAY_S:
            parts.append((of_day >= lo) & (of_day < hi))
        else:
            parts.append((of_day >= lo) | (of_day < hi - DAY_S))
    return sa.or_(*parts)


def _event_statement(spec: _Spec, user_ids: list[str] | None) -> sa.Select[Any]:
    d = _daily_statement(spec, user_ids).c
    active = d.act > 0

    def within(days: int, condition: ColumnElement[bool] | None = None) -> ColumnElement[bool]:
        inside: ColumnElement[bool] = d.day < days
        return inside if condition is None else inside & condition

    def total(value: ColumnElement[Any], condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((condition, value), else_=0)), 0)

    recent, baseline = spec.recent_days, spec.recent_days + spec.baseline_days
    columns: list[ColumnElement[Any]] = [
        func.max(d.last_act).label("last_act"),
        func.min(d.first_act).label("first_act"),
        func.min(d.first_seen).label("first_seen"),
        _count_if(active).label("act_days_total"),
        func.max(case((active, d.day))).label("first_act_days_ago"),
        func.min(case((active, d.day))).label("last_act_days_ago"),
        func.sum(d.orders).label("orders_total"),
        func.sum(d.money).label("monetary_total"),
        func.max(d.last_order).label("last_order"),
        total(d.fails, within(PAYMENT_WINDOW_DAYS)).label("payment_failures_30d"),
        func.max(d.last_fail).label("last_fail"),
        _count_if(within(recent, active)).label("recent_active_days"),
        _count_if(within(baseline, active) & (d.day >= recent)).label("baseline_active_days"),
        total(d.act, within(HABIT_DAYS)).label("habit_events"),
        total(d.weekend, within(HABIT_DAYS)).label("weekend_events"),
        total(d.meal, within(HABIT_DAYS)).label("meal_events"),
        total(d.night, within(HABIT_DAYS)).label("night_events"),
    ]
    columns += [
        total(d[f"b{b}"], within(HABIT_DAYS)).label(f"hour_b{b}") for b in range(HOUR_BUCKETS)
    ]
    for w in spec.windows:
        columns += [
            total(d.act, within(w)).label(f"events_{w}d"),
            _count_if(within(w, active)).label(f"active_days_{w}d"),
            total(d.orders, within(w)).label(f"orders_{w}d"),
            total(d.money, within(w)).label(f"monetary_{w}d"),
        ]
    return select(d.user_id, *columns).group_by(d.user_id)


def _sum_if(condition: ColumnElement[bool], value: ColumnElement[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, value), else_=0.0)), 0.0)


def _event_aggregates(
    engine: Engine, spec: _Spec, user_ids: Sequence[str] | None
) -> tuple[list[str], dict[str, FloatArray]]:
    return _run_grouped(engine, lambda chunk: _event_statement(spec, chunk), user_ids)


def _touch_statement(spec: _Spec, user_ids: list[str] | None) -> sa.Select[Any]:
    t = TOUCHES.c
    start = spec.since(RESPONSE_WINDOW_DAYS)
    sent = (t.sent_at > start) & (t.sent_at <= spec.cutoff)
    clicked = (t.clicked_at > start) & (t.clicked_at <= spec.cutoff)
    stmt = (
        select(
            t.user_id,
            _count_if(sent).label("touches_30d"),
            _count_if(clicked).label("clicks_30d"),
        )
        .where(t.test.is_(False))
        .where(sent | clicked)
        .group_by(t.user_id)
    )
    return stmt if user_ids is None else stmt.where(t.user_id.in_(user_ids))


def _touch_aggregates(
    engine: Engine, spec: _Spec, user_ids: Sequence[str] | None
) -> tuple[list[str], dict[str, FloatArray]]:
    return _run_grouped(engine, lambda chunk: _touch_statement(spec, chunk), user_ids)


def _run_grouped(
    engine: Engine,
    build: Callable[[list[str] | None], sa.Select[Any]],
    user_ids: Sequence[str] | None,
) -> tuple[list[str], dict[str, FloatArray]]:
    """Run the per-user aggregate (per chunk of ``user_ids`` when given); first column is
    the user id, the rest become float columns."""
    ids: list[str] = []
    rows: list[Sequence[Any]] = []
    labels: list[str] = [c.name for c in build(None).selected_columns][1:]
    with engine.connect() as conn:
        for chunk in _chunks(user_ids):
            for row in conn.execute(build(chunk)):
                ids.append(row[0])
                rows.append(row[1:])
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(labels))
    return ids, {label: data[:, i] for i, label in enumerate(labels)}


def _chunks(user_ids: Sequence[str] | None) -> Iterable[list[str] | None]:
    if user_ids is None:
        yield None
        return
    unique = sorted(set(user_ids))
    for start in range(0, len(unique), CHUNK):
        yield unique[start : start + CHUNK]


def _population(
    engine: Engine, user_ids: Sequence[str] | None, event_ids: list[str]
) -> NDArray[np.object_]:
    if user_ids is not None:
        return np.array(sorted(set(user_ids)), dtype=object)
    with engine.connect() as conn:
        users = conn.execute(select(USERS.c.user_id, USERS.c.erased)).all()
    erased = {uid for uid, gone in users if gone}
    everyone = ({uid for uid, gone in users if not gone} | set(event_ids)) - erased
    return np.array(sorted(everyone), dtype=object)


def _align(
    population: NDArray[np.object_], *parts: tuple[list[str], dict[str, FloatArray]]
) -> dict[str, FloatArray]:
    """Scatter each query's rows into population order; users without rows get NaN."""
    position = {uid: i for i, uid in enumerate(population.tolist())}
    out: dict[str, FloatArray] = {}
    for ids, cols in parts:
        rows = np.array([position.get(uid, -1) for uid in ids], dtype=np.int64)
        keep = rows >= 0
        for name, values in cols.items():
            column = np.full(len(population), np.nan)
            column[rows[keep]] = values[keep]
            out[name] = column
    return out


# ------------------------------------------------------------------------ derived columns


def _derive(raw: dict[str, FloatArray], spec: _Spec) -> dict[str, FloatArray]:
    now = spec.cutoff.timestamp()
    zero = _zero_filled(raw)
    recency = (now - raw["last_act"]) / DAY_S
    act_days = zero("act_days_total")
    span = raw["first_act_days_ago"] - raw["last_act_days_ago"]
    mean_gap = _safe_div(span, act_days - 1, act_days >= 2)
    expected_recent = zero("baseline_active_days") * spec.recent_days / spec.baseline_days
    habit = zero("habit_events")
    top_bucket = np.max(np.column_stack([zero(f"hour_b{b}") for b in range(HOUR_BUCKETS)]), 1)
    orders_total = zero("orders_total")
    cols: dict[str, FloatArray] = {
        "recency_days": recency,
        "order_recency_days": (now - raw["last_order"]) / DAY_S,
        "tenure_days": (now - raw["first_seen"]) / DAY_S,
        "frequency": zero(f"orders_{spec.rfm_window}d"),
        "monetary": zero(f"monetary_{spec.rfm_window}d"),
        "active_days_total": act_days,
        "mean_gap_days": mean_gap,
        "overdue_ratio": _safe_div(recency, mean_gap, ~np.isnan(mean_gap)),
        "recent_active_days": zero("recent_active_days"),
        "baseline_active_days": zero("baseline_active_days"),
        "activity_trend": _safe_div(
            zero("recent_active_days"), expected_recent, expected_recent > 0
        ),
        "top_hour_share": _safe_div(top_bucket, habit, habit > 0),
        "weekend_share": _safe_div(zero("weekend_events"), habit, habit > 0),
        "meal_share": _safe_div(zero("meal_events"), habit, habit > 0),
        "night_share": _safe_div(zero("night_events"), habit, habit > 0),
        "orders_total": orders_total,
        "monetary_total": zero("monetary_total"),
        "avg_order_value": _safe_div(zero("monetary_total"), orders_total, orders_total > 0),
        "payment_failures_30d": zero("payment_failures_30d"),
        "hours_since_payment_failure": (now - raw["last_fail"]) / 3600,
        "touches_30d": zero("touches_30d"),
        "clicks_30d": zero("clicks_30d"),
    }
    for w in spec.windows:
        for kind in ("events", "active_days", "orders", "monetary"):
            cols[f"{kind}_{w}d"] = zero(f"{kind}_{w}d")
    cols["rfm_r"] = quintile_scores(recency, higher_is_better=False).astype(np.float64)
    cols["rfm_f"] = quintile_scores(cols["frequency"], higher_is_better=True).astype(np.float64)
    cols["rfm_m"] = quintile_scores(cols["monetary"], higher_is_better=True).astype(np.float64)
    return cols


def _zero_filled(raw: dict[str, FloatArray]) -> Callable[[str], FloatArray]:
    """Counts and sums: a user without rows has zero of them, not an unknown amount."""

    def get(name: str) -> FloatArray:
        return np.nan_to_num(raw[name], nan=0.0)

    return get


def _safe_div(num: FloatArray, den: FloatArray, defined: NDArray[np.bool_]) -> FloatArray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=defined & ~np.isnan(num))
    return out


def _json_number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


# ------------------------------------------------------------------------------- refresh


def refresh_features(
    engine: Engine,
    *,
    at: datetime,
    settings: Settings | None = None,
    config: AudienceConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Recompute every known user's features, tier, RFM and churn score at ``at`` and
    upsert them into ``user_features`` in bulk. Returns the number of rows written.

    ``progress(done, total)`` is called after each written chunk.
    """
    from orchestrator.audience.refresh import refresh  # refresh needs churn, churn needs us

    return refresh(engine, at=at, settings=settings, config=config, progress=progress)


__all__ = [
    "FeatureFrame",
    "Frames",
    "compute_features",
    "computed",
    "epoch_seconds",
    "refresh_features",
]
