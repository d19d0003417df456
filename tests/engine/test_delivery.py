"""A frozen batch is driven to a definite outcome: looked up before it is sent again, retried
from its own row, never failed for a rate limit, never repeated past WeChat's 24 hours.

Every test counts from the provider's own record (the sandbox), and counts a touch that
ended ``failed/unknown_outcome`` without the provider having it as lost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import select, update

from orchestrator.clock import ManualClock, utcnow
from orchestrator.engine.delivery import process_touches
from orchestrator.engine.dispatch import TouchClaim
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import InlineDispatcher, busy, in_flight, tick
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import SendBatch, Touch
from tests.engine.conftest import T0
from tests.support import jpeg

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
BATCHES = SendBatch.__table__  # type: ignore[attr-defined]
MESSAGES = "/Messages.json"
MASS = "/message/mass/send"

SMS = """\
id: nudge
name: 短信提醒
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

ARTICLE = """\
id: news
name: 新品
entry:
  segment: "True"
goal: { event: order_placed, within: 7d }
reentry: 30d
steps:
  - id: article
    send: wechat_article
    template: a/article.j2
    cover: a/cover.jpg
"""

TEMPLATES: dict[str, str | bytes] = {
    "w/sms.j2": "送你一张5元券 {{ link }}",
    "a/article.j2": '{% set title = "新品上架" %}<p>今天新品上架</p>',
    "a/cover.jpg": jpeg(),
}


def start(make_runtime: Callable[..., Runtime], journey: str, users: int,
          **settings: Any) -> Runtime:
    journeys = {"nudge": SMS} if journey == "nudge" else {"news": ARTICLE}
    rt = make_runtime(journeys=journeys, templates=TEMPLATES, users=users, **settings)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest(journey), [f"u{i:04d}" for i in range(users)], now=T0)
    return rt


def settle(rt: Runtime, *, timeout_s: float = 30.0, gather: bool = False,
           leave_waiting: bool = False) -> None:
    """Tick, as beat would, until nothing is claimable and nothing is in flight (batches
    waiting for their next attempt included, unless ``leave_waiting``); bounded in real
    time."""
    clock = rt.clock
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        working = busy(rt) if leave_waiting else in_flight(rt)
        if tick(rt, InlineDispatcher(rt)).empty and not working:
            if not gather:
                return
            assert isinstance(clock, ManualClock)
            clock.advance(rt.settings.gather_window_s)  # articles wait out their window
            gather = False
        time.sleep(0.05)  # the beat's period, scaled down; not a synchronisation point
    raise AssertionError(f"still in flight after {timeout_s}s: {statuses(rt)}")


def statuses(rt: Runtime) -> Counter[tuple[str, str | None]]:
    with rt.db.connect() as conn:
        return Counter((r.status, r.reason)
                       for r in conn.execute(select(TOUCHES.c.status, TOUCHES.c.reason)))


def texts_by_phone(sandbox: SandboxHandle) -> Counter[str]:
    """Messages Twilio created (its own record), by recipient."""
    return Counter(r["body"]["To"] for r in sandbox.state.records("twilio")
                   if r["method"] == "POST" and r["path"].endswith(MESSAGES)
                   and r["outcome"] == "accepted")


def mass_calls(sandbox: SandboxHandle) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records("wechat") if r["path"].endswith(MASS)]


def arm(sandbox: SandboxHandle, kind: str, provider: str, path: str, count: int) -> None:
    sandbox.state.add_fault(FaultSpec(provider=provider, path_contains=path,  # type: ignore[arg-type]
                                      kind=kind, count=count))  # type: ignore[arg-type]


def test_a_rate_limit_is_retried_never_failed(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    # One call at a time: every try at the first message is refused (the adapter tries 3
    # times), the other two go out. Twilio did not take the first: a later attempt sends it.
    rt = start(make_runtime, "nudge", 3, sms_workers=1, retry_base_s=0.2)
    arm(sandbox, "rate_limit", "twilio", MESSAGES, count=3)
    settle(rt)
    assert statuses(rt) == {("sent", None): 3}
    assert set(texts_by_phone(sandbox).values()) == {1} and len(texts_by_phone(sandbox)) == 3


def test_a_batch_frozen_by_a_task_that_died_is_sent_by_a_later_tick(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = start(make_runtime, "nudge", 5, claim_lease_s=1, delivery_lease_s=1)

    class DiesAfterFreezing(InlineDispatcher):
        """A send task that froze its batch and was killed before the provider call."""

        def touches(self, claim: TouchClaim) -> None:
            process_touches(self.rt, claim.touch_ids, claim.token)

    dying = DiesAfterFreezing(rt)
    tick(rt, dying)  # cursors: touches scheduled
    tick(rt, dying)  # touches claimed and frozen; nothing sent
    assert statuses(rt) == {("sending", None): 5} and not texts_by_phone(sandbox)
    settle(rt)  # its lease runs out; a later tick hands the batch to another worker
    assert statuses(rt) == {("sent", None): 5}
    assert set(texts_by_phone(sandbox).values()) == {1} and len(texts_by_phone(sandbox)) == 5


def test_a_retry_later_than_the_lease_still_delivers(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    # Every call of the first attempt is refused: nothing went out, and the next attempt is
    # due only after 1.5-3 s, beyond the 1 s leases. The wait lives in the batch's row.
    rt = start(make_runtime, "nudge", 2, sms_workers=1, claim_lease_s=1, delivery_lease_s=1,
               retry_base_s=3.0)
    arm(sandbox, "rate_limit", "twilio", MESSAGES, count=6)
    settle(rt)
    assert statuses(rt) == {("sent", None): 2}
    assert set(texts_by_phone(sandbox).values()) == {1} and len(texts_by_phone(sandbox)) == 2


def test_a_mass_send_in_doubt_is_never_repeated_after_24_hours(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = start(make_runtime, "news", 4, retry_base_s=3600.0)
    arm(sandbox, "drop", "wechat", MASS, count=1)  # WeChat sends; its answer never comes
    settle(rt, gather=True, leave_waiting=True)
    assert statuses(rt) == {("unknown", "timeout"): 4}
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    clock.advance(timedelta(hours=25))  # the system was down for a day
    sandbox.state.set_clock(clock.now())
    _due_now(rt)
    settle(rt)
    # A repeat of the clientmsgid now would be a second send: the outcome is decided without
    # one, the cap slot kept (the followers may well have the article).
    assert [c["outcome"] for c in mass_calls(sandbox)] == ["accepted"]
    assert statuses(rt) == {("failed", "unknown_outcome"): 4}
    assert len(rt.caps.held("u0000")) == 1


def test_a_mass_send_in_doubt_is_looked_up_a_minute_later_and_found(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = start(make_runtime, "news", 4, retry_base_s=0.05)
    arm(sandbox, "drop", "wechat", MASS, count=1)
    settle(rt, gather=True, leave_waiting=True)  # the lookup comes too soon: 45066
    assert [c["outcome"] for c in mass_calls(sandbox)] == ["accepted", "too_fast"]
    with rt.db.connect() as conn:
        batch = conn.execute(select(BATCHES)).mappings().one()
    assert batch["state"] == "unknown"
    assert batch["next_attempt_at"] >= utcnow() + timedelta(seconds=55)  # as WeChat asked
    sandbox.state.configure({"wechat_clientmsgid_retry_interval_s": 0})  # a minute passes
    _due_now(rt)
    settle(rt)
    assert [c["outcome"] for c in mass_calls(sandbox)] == ["accepted", "too_fast", "duplicate"]
    assert statuses(rt) == {("sent", None): 4}


def test_one_batchs_error_does_not_stop_the_tasks_other_batches(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, engine_redis_url: str
) -> None:
    import workers.tasks

    rt = start(make_runtime, "nudge", 6, delivery_lease_s=1)
    claims = _claims(rt)
    with rt.db.begin() as conn:  # two variants: the task freezes (at least) two batches
        ids = sorted(claims[0].touch_ids)
        conn.execute(update(TOUCHES).where(TOUCHES.c.id.in_(ids[:3])).values(variant="a"))
        conn.execute(update(TOUCHES).where(TOUCHES.c.id.in_(ids[3:])).values(variant="b"))
    # A Redis error in the first batch only: its ledger key holds a value of the wrong type.
    client = redis.Redis.from_url(engine_redis_url)
    original = process_touches

    def freeze_then_break(rt_: Runtime, touch_ids: Any, token: str) -> list[str]:
        batch_ids = original(rt_, touch_ids, token)
        client.rpush(f"recall:ledger:sms:{batch_ids[0]}", "not a hash")
        return batch_ids

    workers.tasks._RUNTIME = rt
    workers.tasks.process_touches = freeze_then_break  # type: ignore[assignment]
    try:
        workers.tasks.send(list(claims[0].touch_ids), claims[0].token)
    finally:
        workers.tasks.process_touches = original
        workers.tasks._RUNTIME = None
    with rt.db.connect() as conn:
        broken = conn.execute(select(BATCHES.c.id).where(BATCHES.c.state == "unknown")).all()
        waiting = statuses(rt)[("sending", None)]
    assert len(broken) == 1 and 0 < waiting < 6
    assert len(texts_by_phone(sandbox)) == 6 - waiting  # the other batches went out at once
    client.delete(*client.keys("recall:ledger:sms:*"))
    settle(rt)  # the broken batch is resumed by a later tick
    assert statuses(rt) == {("sent", None): 6}
    assert set(texts_by_phone(sandbox).values()) == {1} and len(texts_by_phone(sandbox)) == 6
    client.close()


def _claims(rt: Runtime) -> list[TouchClaim]:
    class Collect(InlineDispatcher):
        claimed: list[TouchClaim] = []

        def touches(self, claim: TouchClaim) -> None:
            self.claimed.append(claim)

    collect = Collect(rt)
    tick(rt, collect)
    tick(rt, collect)
    return collect.claimed


def _due_now(rt: Runtime) -> None:
    """Real time passes: every waiting batch's next attempt is due (lease time is real, so
    the test moves the row rather than sleeping)."""
    with rt.db.begin() as conn:
        conn.execute(update(BATCHES).values(next_attempt_at=utcnow()))
