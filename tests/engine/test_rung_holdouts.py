"""A step with its own holdout, through the real channels and the sandbox: the drawn users
are never touched at that step (by the sandbox's own record), go on to the next step, and
keep the same rung arm every time they reach it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select

from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.assign import rung_arm_for
from orchestrator.reports.export import rows
from orchestrator.sandbox.server import SandboxHandle
from tests.engine.test_flow import ENROLLMENTS, TOUCHES, sends

LADDER = """\
id: ladder
name: 阶梯
entry:
  segment: "tier == 'at_risk'"
reentry: 7d
holdout: 20%
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: w/article.j2
    cover: w/cover.jpg
    holdout: 30%
  - wait: 1d
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/coupon?u={{ user_id }}"
"""
USERS = 40


def _phone(user: str) -> str:
    return f"+86138{int(user[1:]):08d}"


def _run_once(rt: Runtime, clock: ManualClock, users: list[str]) -> None:
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("ladder"), users, now=clock.now())
    run_until_idle(rt)
    clock.advance(60)  # the article's gathering window
    run_until_idle(rt)
    clock.advance(timedelta(days=1, minutes=5))
    run_until_idle(rt)


def test_held_out_users_skip_the_step_and_go_on(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"ladder": LADDER}, users=USERS)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    users = [f"u{i:04d}" for i in range(USERS)]
    _run_once(rt, clock, users)

    with rt.db.connect() as conn:
        arms = dict(conn.execute(select(ENROLLMENTS.c.user_id, ENROLLMENTS.c.arm)).all())
        touches = conn.execute(select(TOUCHES)).mappings().all()
    treatment = {u for u, arm in arms.items() if arm == "treatment"}
    step = rt.book.latest("ladder").send_step("article")
    held = {u for u in treatment if rung_arm_for("ladder", step, u) == "holdout"}
    assert held and treatment - held  # 40 users: both rung arms present

    articles = {t["user_id"]: t for t in touches if t["step_id"] == "article"}
    assert set(articles) == treatment  # every treatment user reached the step
    for user, touch in articles.items():
        assert touch["rung_arm"] == ("holdout" if user in held else "treatment")
        if user in held:
            assert (touch["status"], touch["reason"]) == ("suppressed", "rung_holdout")
            assert (touch["sent_at"], touch["cost"], touch["reserved_at"]) == (None, 0.0, None)
        else:
            assert touch["status"] == "sent"
    # The sandbox's own record: the article went to the rung's treatment only...
    mass = sends(sandbox, "wechat", "mass/send")
    reached = {openid for call in mass for openid in call["body"]["touser"]}
    assert reached == {f"o{u}" for u in treatment - held}
    # ...and every treatment user, held out of the article or not, got the next step.
    sms = sends(sandbox, "twilio", "Messages.json")
    assert sorted(r["body"]["To"] for r in sms) == sorted(_phone(u) for u in treatment)
    assert all(t["rung_arm"] is None for t in touches if t["step_id"] == "sms")

    # The exports carry the rung arm as stored.
    exported = {(r["user_id"], r["step_id"]): r["rung_arm"]
                for r in rows(rt.db, "touches", "ladder")}
    assert exported == {(t["user_id"], t["step_id"]): t["rung_arm"] for t in touches}

    # Entering again (after reentry), each user meets the step in the same rung arm, and
    # the held-out ones are still never sent the article.
    clock.advance(timedelta(days=7))
    _run_once(rt, clock, sorted(treatment))
    with rt.db.connect() as conn:
        again = conn.execute(
            select(TOUCHES.c.user_id, TOUCHES.c.rung_arm, TOUCHES.c.status)
            .where(TOUCHES.c.step_id == "article", TOUCHES.c.enrollment_id.not_in(
                [t["enrollment_id"] for t in touches]))).all()
    assert {u for u, _, _ in again} == treatment
    assert all(arm == articles[u]["rung_arm"] for u, arm, _ in again)
    reached = {openid for call in sends(sandbox, "wechat", "mass/send")
               for openid in call["body"]["touser"]}
    assert reached.isdisjoint({f"o{u}" for u in held})
