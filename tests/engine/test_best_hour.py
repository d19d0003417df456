"""``at: best_hour`` through the engine: touches are due at each user's most active hour."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.assign import variant_for
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Touch
from tests.audience.helpers import add_events, ev
from tests.engine.conftest import T0, TEMPLATES

TOUCHES = Touch.__table__  # type: ignore[attr-defined]

TIMED = """\
id: timed
name: 按活跃时段发送
entry:
  segment: "true"
holdout: 0%
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/coupon?u={{ user_id }}"
    at: best_hour
"""


def _local(day: int, hour: int) -> datetime:
    """``day`` days before T0 (Monday 2026-03-02, Shanghai), at ``hour``:10 local."""
    return datetime(2026, 3, 2, hour, 10, tzinfo=UTC) - timedelta(hours=8, days=day)


def test_touches_wait_for_each_users_best_hour(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime({"timed": TIMED}, TEMPLATES, users=6)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    add_events(rt.db, [
        *(ev("u0000", "login", _local(d, 19)) for d in range(1, 11)),  # an evening habit
        ev("u0001", "login", _local(3, 9)),  # too sparse for a profile of their own
        *(ev("u0005", "session", _local(d % 20 + 1, 15)) for d in range(60)),  # population
        ev("u0000", "login", _local(-1, 7)),  # after now: never seen
    ])
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("timed"), ["u0000", "u0001"], now=T0)

    run_until_idle(rt)
    with rt.db.connect() as conn:
        due = dict(conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.due_at)).all())
    shanghai = timedelta(hours=8)
    assert {u: d.replace(tzinfo=UTC) + shanghai for u, d in due.items()} == {
        "u0000": datetime(2026, 3, 2, 19, 0, tzinfo=UTC),  # own profile: 19:00 local
        "u0001": datetime(2026, 3, 2, 15, 0, tzinfo=UTC),  # the population's 15:00
    }
    assert sandbox.state.records("twilio") == []

    clock.set(datetime(2026, 3, 2, 7, 0, tzinfo=UTC))  # 15:00 local
    run_until_idle(rt)
    sent = [r for r in sandbox.state.records("twilio") if r["outcome"] == "accepted"]
    assert [r["body"]["To"] for r in sent] == ["+8613800000001"]


AB = """\
id: timed-ab
name: 发送时段 A/B
entry:
  segment: "true"
holdout: 0%
steps:
  - id: sms
    send: sms
    link: "https://m.example.com/coupon?u={{ user_id }}"
    variants:
      due:  { weight: 50, template: w/sms.j2 }
      best: { weight: 50, template: w/sms.j2, at: best_hour }
"""


def test_a_variant_with_at_best_hour_waits_and_the_other_goes_when_due(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    """An A/B of the send time: the same step, one variant at the best hour."""
    rt = make_runtime({"timed-ab": AB}, TEMPLATES, users=6)
    users = [f"u{i:04d}" for i in range(6)]
    add_events(rt.db, [ev(u, "login", _local(d, 19)) for u in users for d in range(1, 11)])
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("timed-ab"), users, now=T0)

    run_until_idle(rt)
    with rt.db.connect() as conn:
        rows = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.variant, TOUCHES.c.due_at)).all()
    step = rt.book.latest("timed-ab").send_steps()[0]
    expected = {u: variant_for("timed-ab", step, u) for u in users}
    assert {r.user_id: r.variant for r in rows} == expected
    assert set(expected.values()) == {"due", "best"}  # both variants are exercised
    evening = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)  # 19:00 in Shanghai
    assert {r.user_id: r.due_at.replace(tzinfo=UTC) for r in rows} == {
        u: evening if v == "best" else T0 for u, v in expected.items()}
    sent = [r["body"]["To"][-4:] for r in sandbox.state.records("twilio")
            if r["outcome"] == "accepted"]
    assert sorted(sent) == sorted(u[1:] for u, v in expected.items() if v == "due")
