"""One tick at a time, short and bounded: slow work goes to tasks of its own, claims skip
what another claimer holds, and claims do not pile up."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event, select

from orchestrator.clock import ManualClock, utcnow
from orchestrator.engine import runner, wecom
from orchestrator.engine.dispatch import TouchClaim, claim_batches
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import InlineDispatcher, run_until_idle, tick, tick_lock
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Enrollment, SendBatch, Touch
from tests.engine.conftest import T0, TEMPLATES

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
BATCHES = SendBatch.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]

SMS = """\
id: nudge
name: 短信
entry:
  segment: "True"
goal: { event: order_placed, within: 7d }
reentry: 7d
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/c?u={{ user_id }}"
"""
SCHEDULED = SMS.replace('  segment: "True"\n', '  segment: "True"\n  schedule: "0 10 * * *"\n')


def invite(journey_id: str) -> str:
    return f"""\
id: {journey_id}
name: 进群
entry:
  segment: "True"
goal: {{ event: order_placed, within: 7d }}
steps:
  - id: invite
    send: wecom_group_invite
    template: w/invite.j2
    group: campus-deals
"""


class Recorder(InlineDispatcher):
    """Runs cursors and sends here; records what would go to tasks of their own."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.claims: list[TouchClaim] = []
        self.refreshes: list[datetime] = []
        self.polls: list[datetime] = []
        self.keep_claims = False

    def touches(self, claim: TouchClaim) -> None:
        if self.keep_claims:
            self.claims.append(claim)
        else:
            super().touches(claim)

    def refresh(self, now: datetime, fire: datetime) -> None:
        self.refreshes.append(fire)

    def poll_wecom(self, now: datetime) -> None:
        self.polls.append(now)


def enroll_all(rt: Runtime, journey: str, n: int) -> None:
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest(journey), [f"u{i:04d}" for i in range(n)], now=T0)


def test_a_tick_does_nothing_while_another_tick_holds_the_lock(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"nudge": SMS},
                      users=3)
    enroll_all(rt, "nudge", 3)
    with tick_lock(rt) as held:  # another beat's tick, in another process, is running
        assert held
        dropped = tick(rt, InlineDispatcher(rt))
        assert dropped.skipped and not dropped.empty
    run_until_idle(rt)
    with rt.db.connect() as conn:
        assert set(conn.execute(select(TOUCHES.c.status)).scalars()) == {"sent"}


def test_ticks_expire_within_their_interval_on_a_queue_of_their_own() -> None:
    from workers.app import app, configure

    configure("redis://127.0.0.1:6379/15", "recall-q")
    entry = app.conf.beat_schedule["tick"]
    assert entry["options"] == {"expires": entry["schedule"], "queue": "recall-q.tick"}
    assert app.conf.task_routes["workers.tasks.tick"] == {"queue": "recall-q.tick"}


def test_the_daily_refresh_is_handed_to_a_task_not_run_in_the_tick(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    from orchestrator.store.models import UserFeatures

    rt = make_runtime(journeys={"nudge": SMS},
                      users=3)
    recorder = Recorder(rt)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + timedelta(days=1))  # 09:00 in Shanghai: the refresh fires
    tick(rt, recorder)
    tick(rt, recorder)  # claimed once: the second tick finds it taken
    assert recorder.refreshes == [T0 + timedelta(days=1)]
    with rt.db.connect() as conn:  # the tick itself computed nothing
        table = UserFeatures.__table__  # type: ignore[attr-defined]
        assert conn.execute(select(sa.func.count()).select_from(table)).scalar_one() == 0


def test_wecom_polling_is_a_task_that_reads_a_bounded_number_of_waiting_tasks(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.state.configure({"wecom_auto_confirm": False})
    journeys = {f"inv{i}": invite(f"inv{i}") for i in range(3)}
    rt = make_runtime(journeys=journeys, templates=TEMPLATES, users=6)
    for i, journey in enumerate(journeys):  # one invite a day each: other customers
        with rt.db.begin() as conn:
            enroll(conn, rt.book.latest(journey), [f"u{2 * i:04d}", f"u{2 * i + 1:04d}"], now=T0)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    recorder = Recorder(rt)
    tick(rt, recorder)
    clock.advance(60)
    tick(rt, recorder)  # three tasks accepted, none confirmed
    assert len(recorder.polls) == 1  # handed to a task, not polled in the tick
    monkeypatch.setattr(wecom, "POLL_BATCHES", 2)
    wecom.poll_wecom(rt, clock.now())
    polled = {r["body"]["msgid"] for r in sandbox.state.records("wecom")
              if r["path"].endswith("get_groupmsg_send_result")}
    assert len(polled) == 2  # the two oldest waiting tasks, not every one


def test_claims_wait_while_a_full_claim_is_still_queued(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(journeys={"nudge": SMS},
                      users=6)
    monkeypatch.setattr(runner, "TOUCH_CLAIM_LIMIT", 3)
    enroll_all(rt, "nudge", 6)
    recorder = Recorder(rt)
    recorder.keep_claims = True  # the send tasks are queued behind others
    tick(rt, recorder)  # cursors
    tick(rt, recorder)  # three touches claimed
    tick(rt, recorder)  # three more waiting claims would only outlive their leases
    assert sum(len(c.touch_ids) for c in recorder.claims) == 3
    with rt.db.connect() as conn:
        waiting = conn.execute(select(sa.func.count()).select_from(TOUCHES)
                               .where(TOUCHES.c.status == "scheduled")).scalar_one()
    assert waiting == 3


def test_expired_enrollment_leases_are_found_by_an_index(db_engine: Engine) -> None:
    indexes = sa.inspect(db_engine).get_indexes("enrollments")
    assert any(ix["column_names"] == ["lease_until"] for ix in indexes)


def test_batch_claims_skip_what_another_claimer_holds(pg_engine: Engine) -> None:
    now = utcnow()
    with pg_engine.begin() as conn:
        conn.execute(sa.insert(BATCHES), [
            {"id": f"b{i}", "channel": "sms", "journey_id": "j", "step_id": "s",
             "state": "unknown", "attempts": 1, "unanswered": 1, "result": {}, "payload": {},
             "created_at": now} for i in range(2)])
    lease = timedelta(seconds=60)
    first = pg_engine.connect()
    second = pg_engine.connect()
    try:
        first.begin()
        mine = claim_batches(first, real_now=now, lease=lease, limit=1)  # holds b0 locked
        second.begin()
        second.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # would fail, not hang
        theirs = claim_batches(second, real_now=now, lease=lease, limit=2)
        assert [c.batch_id for c in mine] == ["b0"]
        assert [c.batch_id for c in theirs] == ["b1"]
    finally:
        second.close()
        first.close()


def test_a_schedule_reads_its_segment_outside_the_write_transaction(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"nudge": SCHEDULED}, users=4)
    if rt.db.dialect.name != "sqlite":
        pytest.skip("the write lock is SQLite's whole database")
    in_write: dict[int, bool] = {}
    segment_reads: list[bool] = []

    def watch(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        key = id(conn)
        if statement.startswith("BEGIN IMMEDIATE"):
            in_write[key] = True
        elif statement in ("COMMIT", "ROLLBACK"):
            in_write[key] = False
        elif "FROM users" in statement and "user_features" in statement:
            segment_reads.append(in_write.get(key, False))

    event.listen(rt.db, "before_cursor_execute", watch)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + timedelta(hours=1, minutes=1))  # 10:01 in Shanghai: the schedule fired
    try:
        enrolled = runner.run_schedules(rt, clock.now())
    finally:
        event.remove(rt.db, "before_cursor_execute", watch)
    assert enrolled == 4
    assert segment_reads and not any(segment_reads)



def test_schedules_that_fire_together_read_the_segment_rows_once(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    """Each journey enrolls its own segment, from one read of the rows for all of them."""
    only_one = SCHEDULED.replace('segment: "True"', "segment: \"user_id == 'u0001'\"")
    others = (SCHEDULED.replace("id: nudge", "id: others")
              .replace('segment: "True"', "segment: \"user_id != 'u0001'\""))
    rt = make_runtime(journeys={"nudge": only_one, "others": others}, users=4)
    segment_reads: list[str] = []

    def watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM users" in statement and "user_features" in statement:
            segment_reads.append(statement)

    event.listen(rt.db, "before_cursor_execute", watch)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    clock.set(T0 + timedelta(hours=1, minutes=1))  # 10:01 in Shanghai: both schedules fired
    try:
        enrolled = runner.run_schedules(rt, clock.now())
    finally:
        event.remove(rt.db, "before_cursor_execute", watch)
    assert enrolled == 4
    with rt.db.connect() as conn:
        rows = conn.execute(select(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.user_id)
                            .order_by(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.user_id)).all()
    assert [tuple(r) for r in rows] == [("nudge", "u0001"), ("others", "u0000"),
                                        ("others", "u0002"), ("others", "u0003")]
    if rt.db.dialect.name == "sqlite":  # PostgreSQL enrolls such a segment in one statement
        assert len(segment_reads) == 1
