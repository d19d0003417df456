"""Helpers for the audience tests: put users and events into a real store."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from sqlalchemy import Engine

from orchestrator.audience.features import USERS
from orchestrator.audience.synth import USER_COLUMNS, Population, events_for_store

# 2026-03-10 00:00 in Asia/Shanghai: cutoffs at local midnight, like a nightly refresh.
T = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)
_ids = count()


def ev(
    user: str,
    name: str,
    ts: datetime,
    value: float | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "event_id": event_id or f"t{next(_ids)}",
        "user_id": user,
        "name": name,
        "ts": ts,
        "value": value,
        "props": {},
    }


def days_ago(days: float, *, hours: float = 0.0, at: datetime = T) -> datetime:
    return at - timedelta(days=days, hours=hours)


_COLUMNS = "event_id, user_id, name, ts, value, props"


def add_events(engine: Engine, events: Iterable[dict[str, Any]]) -> None:
    """Bulk load through the driver (COPY on PostgreSQL): fixtures of 100k+ events stay
    quick. ``ts`` is an aware datetime."""
    rows = [
        (e["event_id"], e["user_id"], e["name"], e["ts"].astimezone(UTC), e["value"],
         json.dumps(e["props"]))
        for e in events
    ]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            with conn.connection.cursor() as cursor:
                with cursor.copy(f"COPY events ({_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        else:
            stored = [(*r[:3], r[3].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[4:]) for r in rows]
            conn.exec_driver_sql(f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                                 stored)


def add_users(engine: Engine, users: Iterable[dict[str, Any]]) -> None:
    """Users in users.csv shape (flat attributes) into the users table."""
    rows = []
    for user in users:
        row = {k: user.get(k) for k in USER_COLUMNS}
        row["sms_opt_out"] = bool(row["sms_opt_out"])
        row["attributes"] = {k: v for k, v in user.items() if k not in USER_COLUMNS}
        rows.append(row)
    with engine.begin() as conn:
        conn.execute(USERS.insert(), rows)


def load_population(engine: Engine, population: Population) -> None:
    add_users(engine, population.users)
    add_events(engine, events_for_store(population.events))
