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
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.clock import Clock, as_utc
from orchestrator.store.tables import ENROLLMENTS, TOUCHES

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """Figures read from the database on every scrape."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine, self._clock = engine, clock

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
        now = self._clock.now()
        with self._engine.connect() as conn:
            for channel, status, n in conn.execute(_touch_counts()):
                touches.add_metric([channel, status], n)
            for channel, n in conn.execute(_cap_counts()):
                caps.add_metric([channel], n)
            oldest = [conn.execute(q).scalar() for q in _oldest_due(now)]
        lag.add_metric([], _lag_seconds(now, [o for o in oldest if o is not None]))
        return [touches, caps, lag]


def _touch_counts() -> Select[Any]:
    return (
        select(TOUCHES.c.channel, TOUCHES.c.status, func.count())
        .where(TOUCHES.c.test.is_(False))
        .group_by(TOUCHES.c.channel, TOUCHES.c.status)
    )


def _cap_counts() -> Select[Any]:
    return (
        select(TOUCHES.c.channel, func.count())
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

    def __init__(self, engine: Engine, clock: Clock) -> None:
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
        self.registry.register(StoreCollector(engine, clock))

    def render(self) -> bytes:
        return generate_latest(self.registry)
