"""Business time. Everything that decides *when* (due times, windows, caps, crons,
sandbox quotas) asks a ``Clock``; lease time (claims, locks, back-off) is always real.

``SystemClock`` is wall time; ``ManualClock`` is set and advanced by a test or by the
simulate driver. ``orchestrator.store.clock.StoredClock`` keeps a virtual value in a DB
row so that every process (API, workers, beat) reads the same virtual now.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current business time, timezone-aware UTC."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes (as SQLite returns them) are UTC by convention of the store."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class SystemClock:
    def now(self) -> datetime:
        return utcnow()


class ManualClock:
    def __init__(self, start: datetime) -> None:
        self._now = as_utc(start)

    def now(self) -> datetime:
        return self._now

    def set(self, value: datetime) -> None:
        self._now = as_utc(value)

    def advance(self, delta: timedelta | float) -> datetime:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self._now += step
        return self._now
