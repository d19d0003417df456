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
from sqlalchemy import Engine, case, distinct, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.rfm import assign_tiers, quintile_scores
from orchestrator.clock import as_utc
from orchestrator.config import Settings
from orchestrator.store.models import Event, Touch, User

DAY_S = 86_400
HOUR_BUCKETS = 6  # 4-hour slices of the local day: night, morning, noon, afternoon, ...
HABIT_DAYS = 90  # hour-of-day and weekday habits look this far back
PAYMENT_WINDOW_DAYS = 30
RESPONSE_WINDOW_DAYS = 30
CHUNK = 2_000  # user ids per IN (...) query

EVENTS = Event.__table__  # type: ignore[attr-defined]
TOUCHES = Touch.__table__  # type: ignore[attr-defined]
USERS = User.__table__  # type: ignore[attr-defined]

FloatArray = NDArray[np.float64]


class epoch_seconds(FunctionElement[int]):
    """Whole seconds since 1970 of a stored UTC timestamp, on SQLite and PostgreSQL."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    # SQLite stores the UTC column as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


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
    """Features of every known user (users table ∪ users with events) at ``cutoff``, or of
    ``user_ids`` only. Rows are sorted by user id.

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


def _event_columns(spec: _Spec) -> list[ColumnElement[Any]]:
    e = EVENTS.c
    epoch = epoch_seconds(e.ts)
    # Days ago, counted back from the cutoff (0 = its last 24 h): a 7-day window holds
    # exactly 7 such days wherever the cutoff falls in the local day.
    day = (spec.cutoff_epoch - epoch) // DAY_S
    local_day = (epoch + spec.offset_s) // DAY_S
    is_act = e.name.in_(spec.activity)
    is_order = e.name == spec.order
    is_fail = e.name == spec.failure
    money = func.coalesce(e.value, 0.0)

    def since(days: float) -> ColumnElement[bool]:
        moment: ColumnElement[bool] = e.ts > spec.since(days)
        return moment

    recent, baseline = spec.recent_days, spec.recent_days + spec.baseline_days
    habit = is_act & since(HABIT_DAYS)
    bucket = ((epoch + spec.offset_s) % DAY_S) // (DAY_S // HOUR_BUCKETS)
    columns: list[ColumnElement[Any]] = [
        func.max(case((is_act, epoch))).label("last_act"),
        func.min(case((is_act, epoch))).label("first_act"),
        func.min(epoch).label("first_seen"),
        func.count(distinct(case((is_act, day)))).label("act_days_total"),
        func.max(case((is_act, day))).label("first_act_days_ago"),
        func.min(case((is_act, day))).label("last_act_days_ago"),
        _count_if(is_order).label("orders_total"),
        func.coalesce(func.sum(case((is_order, money), else_=0.0)), 0.0).label("monetary_total"),
        func.max(case((is_order, epoch))).label("last_order"),
        _count_if(is_fail & since(PAYMENT_WINDOW_DAYS)).label("payment_failures_30d"),
        func.max(case((is_fail, epoch))).label("last_fail"),
        func.count(distinct(case((is_act & since(recent), day)))).label("recent_active_days"),
        func.count(distinct(case((is_act & since(baseline) & ~since(recent), day)))).label(
            "baseline_active_days"
        ),
        _count_if(habit).label("habit_events"),
        _count_if(habit & ((local_day + 3) % 7 >= 5)).label("weekend_events"),  # 1970-01-01: Thu
    ]
    columns += [_count_if(habit & (bucket == b)).label(f"hour_b{b}") for b in range(HOUR_BUCKETS)]
    for w in spec.windows:
        columns += [
            _count_if(is_act & since(w)).label(f"events_{w}d"),
            func.count(distinct(case((is_act & since(w), day)))).label(f"active_days_{w}d"),
            _count_if(is_order & since(w)).label(f"orders_{w}d"),
            func.coalesce(func.sum(case((is_order & since(w), money), else_=0.0)), 0.0).label(
                f"monetary_{w}d"
            ),
        ]
    return columns


def _event_aggregates(
    engine: Engine, spec: _Spec, user_ids: Sequence[str] | None
) -> tuple[list[str], dict[str, FloatArray]]:
    e = EVENTS.c
    names = (*spec.activity, spec.order, spec.failure)
    stmt = (
        select(e.user_id, *_event_columns(spec))
        .where(e.ts <= spec.cutoff)  # the no-leakage guarantee lives here
        .where(e.name.in_(sorted(set(names))))
        .group_by(e.user_id)
    )
    return _run_grouped(engine, stmt, e.user_id, user_ids)


def _touch_aggregates(
    engine: Engine, spec: _Spec, user_ids: Sequence[str] | None
) -> tuple[list[str], dict[str, FloatArray]]:
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
    return _run_grouped(engine, stmt, t.user_id, user_ids)


def _run_grouped(
    engine: Engine,
    stmt: sa.Select[Any],
    user_column: ColumnElement[str],
    user_ids: Sequence[str] | None,
) -> tuple[list[str], dict[str, FloatArray]]:
    ids: list[str] = []
    rows: list[Sequence[Any]] = []
    with engine.connect() as conn:
        for chunk in _chunks(user_ids):
            query = stmt if chunk is None else stmt.where(user_column.in_(chunk))
            for row in conn.execute(query):
                ids.append(row[0])
                rows.append(row[1:])
    labels = [c.name for c in stmt.selected_columns][1:]
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
        known = conn.execute(select(USERS.c.user_id).where(USERS.c.erased.is_(False))).scalars()
        everyone = set(known) | set(event_ids)
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
    "compute_features",
    "epoch_seconds",
    "refresh_features",
]
