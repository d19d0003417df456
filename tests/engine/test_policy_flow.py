"""Caps, quiet hours and consent applied by the engine, end to end through the sandbox."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from orchestrator.clock import ManualClock
from orchestrator.engine.delivery import drive_batch, process_touches
from orchestrator.engine.dispatch import BatchClaim, TouchClaim
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle, tick
from orchestrator.engine.runtime import Runtime
from orchestrator.policy.consent import record_opt_out
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Touch, User
from tests.engine.conftest import POLICY, T0, TEMPLATES

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
USERS = User.__table__  # type: ignore[attr-defined]


def sms_journey(journey_id: str, priority: int, *, extra: str = "") -> str:
    return f"""\
id: {journey_id}
name: {journey_id}
entry:
  segment: "True"
goal: {{ event: order_placed, within: 7d }}
priority: {priority}
{extra}
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/c?u={{{{ user_id }}}}"
"""


ONE_SMS_A_WEEK = POLICY.replace("sms: { max: 5, per: 7d }", "sms: { max: 1, per: 7d }")


def rows(rt: Runtime) -> list[Any]:
    with rt.db.connect() as conn:
        return conn.execute(select(TOUCHES).order_by(TOUCHES.c.id)).all()


def sms_sent_to(sandbox: SandboxHandle) -> Counter[str]:
    return Counter(r["body"]["To"] for r in sandbox.state.records("twilio")
                   if r["method"] == "POST" and r["path"].endswith("/Messages.json")
                   and r["outcome"] == "accepted")


def enroll_all(rt: Runtime, journey_id: str, n: int) -> None:
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest(journey_id), [f"u{i:04d}" for i in range(n)],
               now=rt.clock.now())


def test_a_cap_across_journeys_goes_to_the_higher_priority_journey(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"winback": sms_journey("winback", 10),
                                "rescue": sms_journey("rescue", 100)},
                      policy=ONE_SMS_A_WEEK, users=8)
    enroll_all(rt, "winback", 8)
    enroll_all(rt, "rescue", 8)
    run_until_idle(rt)
    touches = rows(rt)
    by_journey = Counter((t.journey_id, t.status, t.reason) for t in touches)
    assert by_journey == {("rescue", "sent", None): 8, ("winback", "suppressed", "capped:sms"): 8}
    assert set(sms_sent_to(sandbox).values()) == {1}


def test_when_capped_defer_waits_for_the_window_then_sends(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    policy = ONE_SMS_A_WEEK.replace("when_capped: skip", "when_capped: defer").replace(
        "max_defer: 24h", "max_defer: 8d")
    rt = make_runtime(journeys={"a": sms_journey("a", 10), "b": sms_journey("b", 1)},
                      policy=policy, users=2)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    enroll_all(rt, "a", 2)
    enroll_all(rt, "b", 2)
    run_until_idle(rt)
    deferred = [t for t in rows(rt) if t.journey_id == "b"]
    assert {(t.status, t.reason) for t in deferred} == {("scheduled", "capped:sms")}
    assert {t.due_at for t in deferred} == {T0 + timedelta(days=7)}
    clock.set(T0 + timedelta(days=7))
    run_until_idle(rt)
    assert {t.status for t in rows(rt)} == {"sent"}
    assert set(sms_sent_to(sandbox).values()) == {2}  # one per week each


def test_quiet_hours_defer_to_the_users_own_morning(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=2)
    with rt.db.begin() as conn:  # u0001 lives in New York (DST starts 2026-03-08)
        conn.execute(update(USERS).where(USERS.c.user_id == "u0001")
                     .values(timezone="America/New_York"))
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    late = T0.replace(hour=14)  # 22:00 in Shanghai, 09:00 in New York (EST)
    clock.set(late)
    enroll_all(rt, "a", 2)
    run_until_idle(rt)
    by_user = {t.user_id: t for t in rows(rt)}
    assert (by_user["u0000"].status, by_user["u0000"].reason) == ("scheduled", "quiet_hours:sms")
    assert by_user["u0000"].due_at == (late + timedelta(days=1)).replace(hour=0)  # 08:00 CST
    assert by_user["u0001"].status == "sent"


def test_an_opt_out_between_claim_and_send_is_honoured(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=3)
    enroll_all(rt, "a", 3)

    class Claims:
        """A dispatcher that runs cursors but only collects touch claims."""

        def __init__(self) -> None:
            self.claimed: list[TouchClaim] = []

        def cursors(self, ids: list[int]) -> None:
            from orchestrator.engine.cursors import run_cursors

            run_cursors(rt, ids)

        def touches(self, claim: TouchClaim) -> None:
            self.claimed.append(claim)

        def deliver(self, claim: BatchClaim) -> None:
            raise AssertionError("every batch is delivered by the task that froze it")

        def refresh(self, now: datetime, fire: datetime) -> None:
            pass

        def poll_wecom(self, now: datetime) -> None:
            pass

        def rebuild_caps(self) -> None:
            from orchestrator.engine.policy_gates import rebuild_caps

            rebuild_caps(rt)

    claims = Claims()
    tick(rt, claims)  # cursors → touches scheduled
    tick(rt, claims)  # touches claimed, not yet processed
    assert len(claims.claimed) == 1
    record_opt_out(rt.db, channel="sms", identity="phone:+8613800000001", reason="sms_reply:TD",
                   at=rt.clock.now())
    claim = claims.claimed[0]
    for batch_id in process_touches(rt, claim.touch_ids, claim.token):
        drive_batch(rt, batch_id, claim.token)
    by_user = {t.user_id: (t.status, t.reason) for t in rows(rt)}
    assert by_user["u0001"] == ("suppressed", "opted_out:sms")
    assert "+8613800000001" not in sms_sent_to(sandbox)
    assert by_user["u0000"][0] == "sent"


FALLBACK = """\
id: fb
name: fallback
entry:
  segment: "True"
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: w/article.j2
    cover: w/cover.jpg
    fallback: sms
"""


def test_an_unreachable_channel_falls_back_under_the_fallbacks_own_rules(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    templates = {**TEMPLATES}
    rt = make_runtime(journeys={"fb": FALLBACK}, templates=templates, users=3)
    with rt.db.begin() as conn:
        conn.execute(update(USERS).where(USERS.c.user_id.in_(["u0000", "u0001"]))
                     .values(wechat_followed=False))
        conn.execute(update(USERS).where(USERS.c.user_id == "u0001").values(sms_opt_out=True))
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    enroll_all(rt, "fb", 3)
    run_until_idle(rt)
    clock.advance(60)
    run_until_idle(rt)
    by_user = {t.user_id: t for t in rows(rt)}
    assert (by_user["u0000"].channel, by_user["u0000"].planned_channel,
            by_user["u0000"].status) == ("sms", "wechat_article", "sent")
    assert (by_user["u0001"].status, by_user["u0001"].reason) == ("suppressed", "opted_out:sms")
    assert (by_user["u0002"].channel, by_user["u0002"].status) == ("wechat_article", "sent")


def test_a_provider_opt_out_suppresses_later_sms(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1), "b": sms_journey("b", 1)}, users=2)
    with rt.db.begin() as conn:  # Twilio's magic number for an unsubscribed recipient
        conn.execute(update(USERS).where(USERS.c.user_id == "u0001")
                     .values(phone="+15005550004"))
    enroll_all(rt, "a", 2)
    run_until_idle(rt)
    enroll_all(rt, "b", 2)
    run_until_idle(rt)
    reasons = {(t.journey_id, t.user_id): (t.status, t.reason) for t in rows(rt)}
    assert reasons[("a", "u0001")] == ("failed", "opted_out:sms")
    assert reasons[("b", "u0001")] == ("suppressed", "opted_out:sms")
