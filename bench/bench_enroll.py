"""enroll_1m_s: segment 1,000,000 users (features already computed) and enroll them, on
PostgreSQL, through the path ``recall enroll`` takes (``enroll_segment``).

A population of 1,100,000 users with stored features is loaded with ``COPY`` into a
database of its own (``stack.py``); 1,000,000 of them match the journey's segment
(``tier == 'at_risk' and churn_score >= 0.6``), the rest do not. The figure is the wall
time of one ``enroll_segment`` call; the enrollments it made are then checked (count, arms
as the hash assigns them).

The baseline is the naive way: per user, read the user's row, evaluate the segment, look
for an enrollment, insert one, commit. It is timed on ``SAMPLE`` users and extrapolated
linearly to the population (running it for all would take the better part of an hour);
``ratio`` = baseline / value. ``--quick`` loads a tenth and extrapolates the figure ×10.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from stack import Stack, emit, load_average, log

from orchestrator.engine.runner import enroll_segment
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.assign import arm_for

JOURNEY = "bench-enroll"
MATCHING, OTHERS = 1_000_000, 100_000
SAMPLE = 2_000


def load(stack: Stack, matching: int, others: int) -> None:
    total = matching + others
    stack.copy_users(total)
    at = datetime.now(UTC)
    rng = random.Random(12)

    def features(n: int) -> tuple[object, ...]:
        match = n < matching
        tier = "at_risk" if match or n % 2 else "active"
        score = round(0.6 + 0.4 * rng.random(), 4) if match else round(0.59 * rng.random(), 4)
        return (f"u{n:07d}", at, tier, 9.0, 3, 42.0, 2, 3, 2, score,
                json.dumps({"orders_30d": 1}))

    stack.copy("user_features", ["user_id", "computed_at", "tier", "recency_days",
                                 "frequency", "monetary", "rfm_r", "rfm_f", "rfm_m",
                                 "churn_score", "features"],
               (features(n) for n in range(total)))


def naive_enroll(stack: Stack, rt: Runtime, user_ids: list[str]) -> float:
    """Seconds per user, one user at a time."""
    journey = rt.book.latest(JOURNEY)
    assert stack.engine is not None
    began = time.perf_counter()
    for user_id in user_ids:
        with stack.engine.begin() as conn:
            row = conn.execute(sa.text(
                "SELECT f.tier, f.churn_score FROM users u JOIN user_features f "
                "USING (user_id) WHERE u.user_id = :u AND NOT u.erased"), {"u": user_id}).first()
            if row is None or not (row.tier == "at_risk" and row.churn_score >= 0.6):
                continue
            taken = conn.execute(sa.text(
                "SELECT 1 FROM naive_enrollments WHERE journey_id = :j AND user_id = :u"),
                {"j": journey.id, "u": user_id}).first()
            if taken is None:
                conn.execute(sa.text(
                    "INSERT INTO naive_enrollments (journey_id, user_id, arm, entered_at) "
                    "VALUES (:j, :u, :a, now())"),
                    {"j": journey.id, "u": user_id,
                     "a": arm_for(journey.id, user_id, journey.holdout)})
    return (time.perf_counter() - began) / len(user_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the population")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    matching, others = MATCHING // scale, OTHERS // scale
    with Stack("enroll") as stack:
        began = time.perf_counter()
        load(stack, matching, others)
        log(f"enroll: {matching + others:,} users with features loaded in "
            f"{time.perf_counter() - began:.0f}s; load {load_average()}")
        rt = Runtime.from_settings(stack.settings())
        rt.book.sync(rt.db, now=rt.clock.now())
        journey = rt.book.latest(JOURNEY)

        began = time.perf_counter()
        result = enroll_segment(rt, journey)
        seconds = time.perf_counter() - began
        log(f"enroll: {result.enrolled:,} enrolled in {seconds:.1f}s "
            f"({result.enrolled / seconds:,.0f}/s); load {load_average()}")
        check(stack, journey.id, journey.holdout, matching)

        with stack.engine.begin() as conn:  # type: ignore[union-attr]
            conn.execute(sa.text(
                "CREATE TABLE naive_enrollments (id bigserial PRIMARY KEY, journey_id text, "
                "user_id text, arm text, entered_at timestamptz)"))
            conn.execute(sa.text(
                "CREATE INDEX ON naive_enrollments (journey_id, user_id)"))
        sample = random.Random(7).sample([f"u{n:07d}" for n in range(matching + others)],
                                         SAMPLE)
        per_user = naive_enroll(stack, rt, sample)
        rt.close()
    value = seconds * scale
    baseline = per_user * (MATCHING + OTHERS)
    log(f"enroll: baseline = naive per-user enrollment timed on {SAMPLE:,} users "
        f"({per_user * 1000:.2f} ms each), extrapolated to {MATCHING + OTHERS:,}"
        + (f"; quick: the figure is {matching:,} enrollments ×{scale}" if scale > 1 else ""))
    emit("enroll_1m_s", round(value, 1), "s", round(baseline, 1), round(baseline / value, 2))


def check(stack: Stack, journey_id: str, holdout: float, expected: int) -> None:
    """Every matching user enrolled once, in the arm the hash assigns."""
    count = stack.scalar("SELECT count(*) FROM enrollments WHERE journey_id = :j", j=journey_id)
    if count != expected:
        raise SystemExit(f"bench_enroll: {count:,} enrollments, expected {expected:,}")
    rows = stack.rows("SELECT user_id, arm FROM enrollments WHERE journey_id = :j "
                      "ORDER BY random() LIMIT 2000", j=journey_id)
    wrong = [r.user_id for r in rows if r.arm != arm_for(journey_id, r.user_id, holdout)]
    if wrong:
        raise SystemExit(f"bench_enroll: wrong arm for {wrong[:5]}")


if __name__ == "__main__":
    main()
