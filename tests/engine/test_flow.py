"""A 3-step journey over virtual days, through the real channels and the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.ingest import ingest_events
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Enrollment, Touch
from tests.engine.conftest import T0

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]


def sends(sandbox: SandboxHandle, provider: str, fragment: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records(provider)
            if fragment in r["path"] and r["outcome"] == "accepted"]


def touches(rt: Runtime) -> list[Any]:
    with rt.db.connect() as conn:
        return conn.execute(select(TOUCHES).order_by(TOUCHES.c.id)).all()


def start(rt: Runtime, n: int = 20) -> tuple[set[str], set[str]]:
    journey = rt.book.latest("winback")
    with rt.db.begin() as conn:
        enroll(conn, journey, [f"u{i:04d}" for i in range(n)], now=T0)
    with rt.db.connect() as conn:
        rows = conn.execute(select(ENROLLMENTS.c.user_id, ENROLLMENTS.c.arm)).all()
    control = {u for u, arm in rows if arm == "control"}
    return {u for u, arm in rows if arm == "treatment"}, control


def test_three_steps_respect_waits_windows_and_holdout(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime()
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    treatment, control = start(rt)
    assert control and treatment  # 20% holdout of 20 users: both arms present

    run_until_idle(rt)
    clock.advance(59)
    run_until_idle(rt)
    assert sends(sandbox, "wechat", "mass/send") == []  # still gathering
    clock.advance(1)
    run_until_idle(rt)
    mass = sends(sandbox, "wechat", "mass/send")
    assert len(mass) == 1
    assert set(mass[0]["body"]["touser"]) == {f"o{u}" for u in treatment}

    sent_at = T0 + timedelta(seconds=60)
    clock.set(sent_at + timedelta(days=1, seconds=59))
    run_until_idle(rt)
    assert sends(sandbox, "wecom", "add_msg_template") == []  # 1d wait + gathering not over
    clock.set(sent_at + timedelta(days=1, seconds=60))
    run_until_idle(rt)
    assert len(sends(sandbox, "wecom", "add_msg_template")) == 1

    # wait 2d from the invite's terminal moment, then the next 10:00 in Shanghai (02:00 UTC)
    invite_at = sent_at + timedelta(days=1, seconds=60)
    window_open = (invite_at + timedelta(days=2)).replace(hour=2, minute=0, second=0)
    clock.set(window_open - timedelta(seconds=1))
    run_until_idle(rt)
    assert sends(sandbox, "twilio", "Messages.json") == []
    clock.set(window_open)
    run_until_idle(rt)
    sms = sends(sandbox, "twilio", "Messages.json")
    assert {r["body"]["To"] for r in sms} == {
        f"+86138{int(u[1:]):08d}" for u in treatment
    }
    body = sms[0]["body"]["Body"]
    assert body.startswith("【校园外卖】") and body.endswith("拒收请回复R")
    assert "http://recall.test/s/" in body

    rows = touches(rt)
    assert {r.user_id for r in rows} == treatment  # the holdout is never touched
    assert {r.status for r in rows} <= {"sent", "delivered"}
    assert len(rows) == 3 * len(treatment)


def test_goal_event_stops_later_touches(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime()
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    treatment, _ = start(rt)
    buyer = sorted(treatment)[0]
    clock.advance(60)
    run_until_idle(rt)
    clock.advance(3600)
    ingest_events(rt.db, [{"event_id": "o1", "user_id": buyer, "name": "order_placed",
                           "ts": clock.now().isoformat(), "value": 20.0, "props": {}}],
                  now=clock.now(), journeys=rt.book)
    clock.advance(timedelta(days=5))
    run_until_idle(rt)
    clock.advance(timedelta(days=1))
    run_until_idle(rt)
    by_user = {r.user_id: r for r in touches(rt) if r.step_id == "invite"}
    assert buyer not in by_user  # exited before the invite step was reached
    invites = sends(sandbox, "wecom", "add_msg_template")
    assert all(f"wm{buyer}" not in r["body"].get("external_userid", []) for r in invites)
    with rt.db.connect() as conn:
        state, reason = conn.execute(select(ENROLLMENTS.c.state, ENROLLMENTS.c.exit_reason)
                                     .where(ENROLLMENTS.c.user_id == buyer)).one()
    assert (state, reason) == ("exited", "goal")


INVITE_ONLY = """\
id: invite
name: 进群
entry:
  segment: "True"
goal: { event: order_placed, within: 7d }
steps:
  - id: invite
    send: wecom_group_invite
    template: w/invite.j2
    group: campus-deals
"""


def test_wecom_tasks_are_polled_until_confirmed_or_timed_out(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    sandbox.state.configure({"wecom_auto_confirm": False})
    rt = make_runtime(journeys={"invite": INVITE_ONLY}, users=6)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("invite"), [f"u{i:04d}" for i in range(6)], now=T0)
    clock.advance(60)
    run_until_idle(rt)
    rows = touches(rt)
    assert {r.status for r in rows} == {"sent"}  # the task is accepted: the step is done
    msgid = rows[0].provider_message_id

    clock.advance(timedelta(hours=1))
    run_until_idle(rt)
    assert {r.status for r in touches(rt)} == {"sent"}  # nobody confirmed yet

    sandbox.state.wecom_confirm(msgid)
    clock.advance(timedelta(hours=1))
    run_until_idle(rt)
    assert {r.status for r in touches(rt)} == {"delivered"}


def test_an_unconfirmed_wecom_task_is_cancelled_and_fails_its_touches(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    sandbox.state.configure({"wecom_auto_confirm": False})
    rt = make_runtime(journeys={"invite": INVITE_ONLY}, users=4)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("invite"), [f"u{i:04d}" for i in range(4)], now=T0)
    clock.advance(60)
    run_until_idle(rt)
    clock.advance(timedelta(hours=24, minutes=1))
    run_until_idle(rt)
    assert {(r.status, r.reason) for r in touches(rt)} == {("failed", "unconfirmed")}
    assert sends(sandbox, "wecom", "cancel_groupmsg_send")
