"""features_1m_events_s: ``compute_features`` over 1,000,000 behaviour events on PostgreSQL.

A synthetic campus (``orchestrator.audience.synth``, ~45,000 students over 60 days) is
generated, cut to exactly 1,000,000 events, and loaded with ``COPY`` into a fresh schema
of ``RECALL_BENCH_DATABASE_URL`` (else ``RECALL_DATABASE_URL`` when it is PostgreSQL, else
postgresql://postgres@127.0.0.1:5432/test); the schema is dropped afterwards. The figure
is the wall time of one ``compute_features`` call for every user at the end of the data
(best of ``ROUNDS``), after ``ANALYZE``.

The baseline is the naive way: for each user, one query for that user's events, then the
same features in a plain Python loop. It is timed on a random sample of ``SAMPLE`` users
and **extrapolated** linearly to all users (running it for all would take minutes); the
sample's naive values are checked against the vectorised ones first, so both do the same
work. ``ratio`` = baseline / value: how many times faster the bulk path is.

Prints one JSON object: ``{"name", "value", "unit", "baseline", "ratio"}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import MEAL_HOURS, FeatureFrame, compute_features
from orchestrator.audience.synth import simulate
from orchestrator.store.db import make_engine
from orchestrator.store.migrate import upgrade

EVENTS = 1_000_000
STUDENTS = 45_000  # over 1 M events in 60 days with the synth defaults (a drifting campus)
DAYS = 60
SAMPLE = 300
ROUNDS = 3
START = datetime(2026, 1, 5, tzinfo=timezone(timedelta(hours=8)))
DAY_S = 86_400


def database_url() -> str:
    for name in ("RECALL_BENCH_DATABASE_URL", "RECALL_DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith("postgresql"):
            return url
    return "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def temporary_schema(url: str) -> Iterator[Engine]:
    schema = f"bench_features_{uuid.uuid4().hex[:8]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    scoped = sa.engine.make_url(url).set(query={"options": f"-csearch_path={schema}"})
    engine = make_engine(scoped.render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def load_events(engine: Engine) -> None:
    population = simulate(STUDENTS, days_of_history=DAYS, start=START, seed=2026)
    if len(population.events) < EVENTS:
        raise SystemExit(f"bench_features: only {len(population.events):,} events generated")
    with engine.begin() as conn, conn.connection.cursor() as cursor:
        copy_sql = "COPY events (event_id, user_id, name, ts, value, props) FROM STDIN"
        with cursor.copy(copy_sql) as copy:
            for e in population.events[:EVENTS]:
                copy.write_row((e["event_id"], e["user_id"], e["name"],
                                datetime.fromisoformat(e["ts"]), e["value"],
                                json.dumps(e["props"])))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE events")


# ----------------------------------------------------------------------- naive baseline


def naive_features(engine: Engine, user_id: str, cutoff: datetime) -> dict[str, float | None]:
    """The same features for one user, the obvious way: fetch the rows, loop in Python."""
    config = AudienceConfig()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT name, ts, value FROM events WHERE user_id = :u AND ts <= :c"),
            {"u": user_id, "c": cutoff},
        ).all()
    activity = set(config.activity_events)
    offset = cutoff.astimezone(config.zone).utcoffset() or timedelta(0)
    out: dict[str, float | None] = {}
    acts = [(ts, v) for name, ts, v in rows if name in activity]
    orders = [(ts, v or 0.0) for name, ts, v in rows if name == config.order_event]
    fails = [ts for name, ts, _ in rows if name == config.payment_failed_event]

    def days_ago(ts: datetime) -> int:
        return int((cutoff - ts).total_seconds() // DAY_S)

    last = max((ts for ts, _ in acts), default=None)
    out["recency_days"] = (cutoff - last).total_seconds() / DAY_S if last else None
    for w in (7, 30, 90):
        out[f"events_{w}d"] = sum(1 for ts, _ in acts if days_ago(ts) < w)
        out[f"active_days_{w}d"] = len({days_ago(ts) for ts, _ in acts if days_ago(ts) < w})
        out[f"orders_{w}d"] = sum(1 for ts, _ in orders if days_ago(ts) < w)
        out[f"monetary_{w}d"] = sum(v for ts, v in orders if days_ago(ts) < w)
    days = sorted({days_ago(ts) for ts, _ in acts})
    out["mean_gap_days"] = (days[-1] - days[0]) / (len(days) - 1) if len(days) > 1 else None
    recent = sum(1 for d in days if d < 7)
    baseline = sum(1 for d in days if 7 <= d < 35)
    out["activity_trend"] = recent / (baseline * 7 / 28) if baseline else None
    habit = [ts + offset for ts, _ in acts if days_ago(ts) < 90]
    buckets = Counter(ts.hour // 4 for ts in habit)
    out["top_hour_share"] = max(buckets.values()) / len(habit) if habit else None
    out["weekend_share"] = (
        sum(1 for ts in habit if ts.weekday() >= 5) / len(habit) if habit else None
    )
    meals = sum(1 for ts in habit if any(lo <= _hours(ts) < hi for lo, hi in MEAL_HOURS))
    nights = sum(1 for ts in habit if not 5.0 <= _hours(ts) < 21.0)
    out["meal_share"] = meals / len(habit) if habit else None
    out["night_share"] = nights / len(habit) if habit else None
    out["payment_failures_30d"] = sum(1 for ts in fails if days_ago(ts) < 30)
    return out


def _hours(ts: datetime) -> float:
    return ts.hour + ts.minute / 60 + ts.second / 3600


def check_same(frame: FeatureFrame, naive: dict[str, dict[str, float | None]]) -> None:
    for user_id, values in naive.items():
        row = frame.row(user_id)
        for name, value in values.items():
            bulk = row[name]
            same = (value is None and bulk is None) or (
                value is not None and bulk is not None and abs(value - bulk) < 1e-6
            )
            if not same:
                raise SystemExit(
                    f"bench_features: {name} of {user_id} differs: naive {value}, bulk {bulk}"
                )


def main() -> None:
    with temporary_schema(database_url()) as engine:
        upgrade(engine)
        load_events(engine)
        cutoff = START + timedelta(days=DAYS)
        timings, frame = [], None
        for _ in range(ROUNDS):
            began = time.perf_counter()
            frame = compute_features(engine, cutoff=cutoff)
            timings.append(time.perf_counter() - began)
        assert frame is not None
        sample = random.Random(7).sample(frame.user_ids.tolist(), SAMPLE)
        began = time.perf_counter()
        naive = {u: naive_features(engine, u, cutoff.astimezone(UTC)) for u in sample}
        per_user = (time.perf_counter() - began) / SAMPLE
        check_same(frame, naive)
    value, baseline = min(timings), per_user * len(frame)
    print(
        f"bench_features: {len(frame):,} users, {EVENTS:,} events; baseline = naive per-user "
        f"loop timed on {SAMPLE} users ({per_user * 1000:.2f} ms each), extrapolated",
        file=sys.stderr,
    )
    print(json.dumps({
        "name": "features_1m_events_s", "value": round(value, 3), "unit": "s",
        "baseline": round(baseline, 3), "ratio": round(baseline / value, 2),
    }))


if __name__ == "__main__":
    main()
