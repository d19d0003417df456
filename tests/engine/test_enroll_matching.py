"""Enrolling a segment in one INSERT … SELECT (PostgreSQL) makes the rows, arms and counts
that enrolling the Python-evaluated members makes, re-entry rules included."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.audience.segment_sql import segment_condition
from orchestrator.engine.enroll import EnrollResult, enroll, enroll_matching
from orchestrator.engine.runner import enroll_segment, set_based
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.segments import segment_members
from orchestrator.journeys.assign import arm_for, control_threshold, unit_hash
from orchestrator.store.tables import ENROLLMENTS, USER_FEATURES
from tests.engine.conftest import T0, TEMPLATES

JOURNEY = """\
id: seg
name: seg
entry:
  segment: "tier == 'at_risk' and churn_score >= 0.6"
reentry: {reentry}
holdout: 20%
goal: {{ event: order_placed, within: 7d }}
steps:
  - wait: 1d
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/c"
"""
USERS = 400
COLUMNS = ("journey_id", "journey_version", "user_id", "arm", "state", "entered_at",
           "exited_at", "exit_reason", "cursor", "due_at", "lease_until", "data",
           "trigger_event_id")


def setup(make_runtime: Callable[..., Runtime], db_engine: Engine, reentry: str) -> Runtime:
    rt = make_runtime({"seg": JOURNEY.format(reentry=reentry)}, TEMPLATES, users=USERS)
    features = [{"user_id": f"u{n:04d}", "computed_at": T0,
                 "tier": ("at_risk", "active", "churned")[n % 3],
                 "churn_score": None if n % 10 == 0 else (n % 7) / 6} for n in range(USERS)]
    past = []  # earlier enrollments: none, active, ended 10 days ago, ended 40 days ago
    for n in range(USERS):
        if n % 4:
            past.append({"journey_id": "seg", "journey_version": "v0", "user_id": f"u{n:04d}",
                         "arm": "treatment", "state": "active" if n % 4 == 1 else "completed",
                         "entered_at": T0 - timedelta(days=(0, 1, 10, 40)[n % 4]),
                         "cursor": 2, "data": {}})
    with db_engine.begin() as conn:
        conn.execute(sa.insert(USER_FEATURES), features)
        conn.execute(sa.insert(ENROLLMENTS), past)
    return rt


def made(db_engine: Engine, how: Callable[[sa.Connection], EnrollResult]
         ) -> tuple[EnrollResult, list[tuple[Any, ...]]]:
    """What ``how`` enrolls, rolled back afterwards."""
    with db_engine.connect() as conn:
        tx = conn.begin()
        result = how(conn)
        rows = conn.execute(sa.select(*(ENROLLMENTS.c[c] for c in COLUMNS))
                            .where(ENROLLMENTS.c.entered_at == T0)
                            .order_by(ENROLLMENTS.c.user_id)).all()
        tx.rollback()
    return result, [tuple(r) for r in rows]


ON_POSTGRESQL = pytest.mark.parametrize("db_engine", ["postgres"], indirect=True)


@ON_POSTGRESQL
@pytest.mark.parametrize("reentry", ["30d", "never"])
def test_one_statement_enrolls_what_the_member_list_enrolls(
    make_runtime: Callable[..., Runtime], db_engine: Engine, reentry: str
) -> None:
    rt = setup(make_runtime, db_engine, reentry)
    journey = rt.book.latest("seg")
    condition = set_based(rt, journey)
    assert condition is not None
    with db_engine.connect() as conn:
        members = list(segment_members(conn, journey.entry.segment or ""))

    by_sql, sql_rows = made(db_engine, lambda c: enroll_matching(c, journey, condition, now=T0))
    by_list, list_rows = made(db_engine, lambda c: enroll(c, journey, members, now=T0))

    assert sql_rows == list_rows
    assert (by_sql.enrolled, by_sql.control, by_sql.treatment, by_sql.already_active,
            by_sql.reentry_blocked) == (by_list.enrolled, by_list.control, by_list.treatment,
                                        by_list.already_active, by_list.reentry_blocked)
    assert by_sql.control and by_sql.treatment and by_sql.already_active \
        and by_sql.reentry_blocked  # every case is there
    dry = made(db_engine, lambda c: enroll_matching(c, journey, condition, now=T0,
                                                    dry_run=True))
    assert dry[1] == [] and dry[0].enrolled == by_sql.enrolled


@ON_POSTGRESQL
def test_recall_enroll_takes_the_one_statement_on_postgresql(
    make_runtime: Callable[..., Runtime], db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = setup(make_runtime, db_engine, "30d")
    import orchestrator.engine.runner as runner

    monkeypatch.setattr(runner, "segment_members", None)  # must not be needed
    result = enroll_segment(rt, rt.book.latest("seg"))
    with db_engine.connect() as conn:
        new = conn.execute(sa.select(sa.func.count()).where(ENROLLMENTS.c.entered_at == T0)
                           ).scalar_one()
    assert result.enrolled == new > 0


@pytest.mark.parametrize("holdout", [0.0, 0.1, 0.2, 0.5, 0.3333333333333333, 1.0])
def test_the_control_threshold_splits_as_the_hash_does(holdout: float) -> None:
    limit = control_threshold(holdout)
    assert limit == 0 or (limit - 1) / 2**64 < holdout <= limit / 2**64
    for n in range(2000):
        key = f"arm:j:u{n}"
        first8 = int.from_bytes(__import__("hashlib").sha256(key.encode()).digest()[:8], "big")
        assert (first8 < limit) == (unit_hash(key) < holdout)
        assert (first8 < limit) == (arm_for("j", f"u{n}", holdout) == "control")


def test_segments_sql_cannot_say_take_the_python_path(
    make_runtime: Callable[..., Runtime], db_engine: Engine
) -> None:
    rt = make_runtime({"seg": JOURNEY.format(reentry="30d").replace(
        "tier == 'at_risk' and churn_score >= 0.6", "attributes.nickname == '同学1'")},
        TEMPLATES, users=3)
    journey = rt.book.latest("seg")
    assert segment_condition(journey.entry.segment or "") is None
    assert set_based(rt, journey) is None
    assert enroll_segment(rt, journey).enrolled == 1
