"""Prometheus metrics of one API process (``GET /metrics``).

Counters of what this process saw (webhook rejections and outcomes, short-link clicks)
plus figures read from the store at scrape time, so that every API process reports the
same numbers for work done by workers elsewhere:

- ``recall_touches{channel,status}``: touches per channel and status (test sends excluded);
- ``recall_cap_rejections_total{channel}``: touches suppressed by a frequency cap
  (``reason`` starting with ``cap``);
- ``recall_queue_lag_seconds``: age of the oldest due work not yet taken (a scheduled touch
  or an enrollment cursor whose ``due_at`` has passed), by business time;
- ``recall_store_up``: 1 when the scrape could read the store.

A scrape never scans a table: the queue lag is two index lookups (``(status, due_at)`` on
touches, ``(state, due_at)`` on enrollments), and the two store-wide totals, which need a
GROUP BY over every touch, are recomputed at most every ``refresh_s`` real seconds
(``RECALL_METRICS_REFRESH_S``, default 60) and served from memory in between; each series
is as fresh as its ``recall_store_totals_age_seconds`` says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, Row, Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.clock import Clock, as_utc
from orchestrator.store.tables import ENROLLMENTS, TOUCHES

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """Figures read from the database: the lag on every scrape (two index lookups), the
    totals at most every ``refresh_s`` real seconds."""

    def __init__(self, engine: Engine, clock: Clock, *, refresh_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine, self._clock = engine, clock
        self._refresh_s, self._monotonic = refresh_s, monotonic
        self._totals: _Totals | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("recall_store_up", "1 when the scrape could read the store")
        try:
            metrics = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: the store did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self) -> list[Metric]:
        touches = GaugeMetricFamily(
            "recall_touches", "Touches by channel and status", labels=["channel", "status"]
        )
        caps = CounterMetricFamily(
            "recall_cap_rejections", "Touches suppressed by a frequency cap", labels=["channel"]
        )
        lag = GaugeMetricFamily(
            "recall_queue_lag_seconds", "Age of the oldest due work not yet taken (business time)"
        )
        age = GaugeMetricFamily(
            "recall_store_totals_age_seconds",
            "Real seconds since recall_touches and recall_cap_rejections were read",
        )
        now = self._clock.now()
        with self._engine.connect() as conn:
            read_at, touch_rows, cap_rows = self._cached_totals(conn)
            oldest = [conn.execute(q).scalar() for q in _oldest_due(now)]
        for row in touch_rows:
            touches.add_metric([row.channel, row.status], row.n)
        for row in cap_rows:
            caps.add_metric([row.channel], row.n)
        lag.add_metric([], _lag_seconds(now, [o for o in oldest if o is not None]))
        age.add_metric([], max(0.0, self._monotonic() - read_at))
        return [touches, caps, lag, age]

    def _cached_totals(self, conn: Connection) -> _Totals:
        with self._lock:
            cached = self._totals
            if cached is None or self._monotonic() - cached[0] >= self._refresh_s:
                read_at = self._monotonic()
                cached = self._totals = (read_at, list(conn.execute(_touch_counts())),
                                         list(conn.execute(_cap_counts())))
            return cached


_Totals = tuple[float, list[Row[Any]], list[Row[Any]]]  # read at (monotonic), touches, caps


def _touch_counts() -> Select[Any]:
    return (
        select(TOUCHES.c.channel, TOUCHES.c.status, func.count().label("n"))
        .where(TOUCHES.c.test.is_(False))
        .group_by(TOUCHES.c.channel, TOUCHES.c.status)
    )


def _cap_counts() -> Select[Any]:
    return (
        select(TOUCHES.c.channel, func.count().label("n"))
        .where(TOUCHES.c.status == "suppressed", TOUCHES.c.reason.like("cap%"))
        .group_by(TOUCHES.c.channel)
    )


def _oldest_due(now: datetime) -> list[Select[Any]]:
    return [
        select(func.min(TOUCHES.c.due_at)).where(
            TOUCHES.c.status == "scheduled", TOUCHES.c.due_at <= now
        ),
        select(func.min(ENROLLMENTS.c.due_at)).where(
            ENROLLMENTS.c.state == "active", ENROLLMENTS.c.due_at <= now
        ),
    ]


def _lag_seconds(now: datetime, oldest: list[datetime]) -> float:
    if not oldest:
        return 0.0
    return max(0.0, (now - min(as_utc(o) for o in oldest)).total_seconds())


class ApiMetrics:
    """One registry per app (so that several apps in one process never collide)."""

    def __init__(self, engine: Engine, clock: Clock, *, refresh_s: float = 60.0) -> None:
        self.registry = CollectorRegistry()
        self.webhook_rejections = Counter(
            "recall_webhook_rejections", "Webhooks and callbacks refused for their signature",
            ["source"], registry=self.registry,
        )
        self.webhooks = Counter(
            "recall_webhooks", "Payment webhooks by outcome (accepted, duplicate, unmatched, "
            "ignored)", ["source", "outcome"], registry=self.registry,
        )
        self.callbacks = Counter(
            "recall_callbacks", "Provider callbacks handled, by provider and kind",
            ["provider", "kind"], registry=self.registry,
        )
        self.clicks = Counter(
            "recall_link_clicks", "Short-link and landing clicks served", ["kind"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(engine, clock, refresh_s=refresh_s))

    def render(self) -> bytes:
        return generate_latest(self.registry)
