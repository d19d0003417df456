"""The engine keeps caps through any loss of Redis data: reservations the gates made are
visible to a rebuild, a send never rebuilds (nor fails) while caps are unavailable, a dead
worker's reservation is freed, and claimed work comes back at once after a loss."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import insert, select

from orchestrator.clock import ManualClock
from orchestrator.engine import delivery
from orchestrator.engine.delivery import drive_batch, process_touches
from orchestrator.engine.dispatch import TouchClaim
from orchestrator.engine.enroll import enroll
from orchestrator.engine.pipeline import Gate, Work, run_gates
from orchestrator.engine.policy_gates import rebuild_caps
from orchestrator.engine.runner import InlineDispatcher, run_until_idle, tick
from orchestrator.engine.runtime import Runtime
from orchestrator.policy.rebuild import rebuild_from_store
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Touch
from tests.engine.conftest import POLICY, T0
from tests.engine.test_policy_flow import ONE_SMS_A_WEEK, sms_journey

TOUCHES = Touch.__table__  # type: ignore[attr-defined]


class Claims(InlineDispatcher):
    """Runs cursors and caps rebuilds; keeps touch claims instead of sending them (their
    tasks are queued); counts the rebuilds it is asked for."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.claimed: list[TouchClaim] = []
        self.rebuilds = 0
        self.rebuild_here = True  # False: as Celery, a task does it later

    def touches(self, claim: TouchClaim) -> None:
        self.claimed.append(claim)

    def rebuild_caps(self) -> None:
        self.rebuilds += 1
        if self.rebuild_here:
            super().rebuild_caps()


def enroll_all(rt: Runtime, journey: str, users: list[str]) -> None:
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest(journey), users, now=T0)


def claimed(rt: Runtime, journey: str, users: list[str]) -> tuple[Claims, TouchClaim]:
    enroll_all(rt, journey, users)
    claims = Claims(rt)
    tick(rt, claims)  # cursors: the touches are scheduled
    tick(rt, claims)  # claimed, their send task not run yet
    assert len(claims.claimed) == 1
    return claims, claims.claimed[0]


def status(rt: Runtime, journey: str) -> tuple[str, str | None]:
    with rt.db.connect() as conn:
        row = conn.execute(select(TOUCHES.c.status, TOUCHES.c.reason)
                           .where(TOUCHES.c.journey_id == journey)).one()
    return row.status, row.reason


def test_a_rebuild_racing_the_gates_still_counts_their_reservations(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, engine_redis_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1), "b": sms_journey("b", 1)},
                      users=1, policy=ONE_SMS_A_WEEK)
    _, claim = claimed(rt, "a", ["u0000"])
    client = redis.Redis.from_url(engine_redis_url)

    def redis_restarts_and_is_rebuilt(works: Any, now: datetime) -> None:
        # After the caps gate reserved, before the batch is frozen: Redis loses its data
        # and another process rebuilds the caps from the database.
        client.flushdb()
        rebuild_from_store(rt.db, rt.caps, reset=True)

    gates = delivery.gates_for

    def racing(rt_: Runtime) -> list[Gate]:
        return [*gates(rt_), redis_restarts_and_is_rebuilt]

    monkeypatch.setattr(delivery, "gates_for", racing)
    for batch_id in process_touches(rt, claim.touch_ids, claim.token):
        drive_batch(rt, batch_id, claim.token)
    monkeypatch.setattr(delivery, "gates_for", gates)
    assert status(rt, "a") == ("sent", None)
    enroll_all(rt, "b", ["u0000"])
    run_until_idle(rt)
    assert status(rt, "b") == ("suppressed", "capped:sms")  # one SMS a week: a had it
    client.close()


def test_a_send_neither_rebuilds_caps_nor_fails_while_they_are_unavailable(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, engine_redis_url: str
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=2)
    _, claim = claimed(rt, "a", ["u0000", "u0001"])
    client = redis.Redis.from_url(engine_redis_url)
    client.flushdb()  # Redis lost its data ...
    client.set("recall:cap:rebuild-lock", "another process")  # ... and a rebuild runs
    process_touches(rt, claim.touch_ids, claim.token)  # no RetryLater, no rebuild here
    assert rt.caps.epoch() is None
    with rt.db.connect() as conn:
        rows = conn.execute(select(TOUCHES.c.status, TOUCHES.c.reason,
                                   TOUCHES.c.reserved_at)).all()
    assert {(r.status, r.reason, r.reserved_at) for r in rows} == {
        ("scheduled", "caps_unavailable", None)}  # they wait; nothing is lost
    client.delete("recall:cap:rebuild-lock")
    run_until_idle(rt)  # the tick hands the rebuild to a task, then claims them again
    with rt.db.connect() as conn:
        assert set(conn.execute(select(TOUCHES.c.status)).scalars()) == {"sent"}
    client.close()


def test_a_rebuild_loads_only_reservations_that_can_still_refuse(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=1)
    old, recent = T0 - timedelta(days=60), T0 - timedelta(days=3)
    with rt.db.begin() as conn:
        conn.execute(insert(TOUCHES), [
            {"enrollment_id": n, "journey_id": "a", "journey_version": "v", "user_id": "u0000",
             "step_id": "sms", "channel": "sms", "status": "sent", "due_at": at,
             "reserved_at": at} for n, at in ((1, old), (2, recent))])
    assert rebuild_caps(rt) == 1  # 60 days ago is outside every window
    assert [h.key for h in rt.caps.held("u0000")] == ["2:sms"]


def test_a_reclaimed_claim_frees_the_slot_its_dead_worker_reserved(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=1, claim_lease_s=1)
    claims, claim = claimed(rt, "a", ["u0000"])
    with rt.db.connect() as conn:  # the send task gates the touch, then its worker dies
        works: list[Work] = delivery._load_works(rt, conn, claim.touch_ids, claim.token)
    run_gates(delivery.gates_for(rt), works, rt.clock.now())
    assert [h.key for h in rt.caps.held("u0000")] != []
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    _wait_real(1.1)  # the claim's lease runs out (real time)
    tick(rt, claims)  # reclaimed (and claimed again, not yet gated)
    assert rt.caps.held("u0000") == []


def test_after_redis_loses_its_data_claims_come_back_at_once_and_a_task_rebuilds(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, engine_redis_url: str
) -> None:
    rt = make_runtime(journeys={"a": sms_journey("a", 1)}, users=3, policy=POLICY)
    claims, _ = claimed(rt, "a", ["u0000", "u0001", "u0002"])
    client = redis.Redis.from_url(engine_redis_url)
    client.flushdb()  # the queued send task went with it
    rebuilds, claims.rebuild_here = claims.rebuilds, False
    dropped = tick(rt, claims)
    assert claims.rebuilds == rebuilds + 1 and dropped.touches == []
    with rt.db.connect() as conn:  # not after the 300 s lease: now
        assert set(conn.execute(select(TOUCHES.c.status)).scalars()) == {"scheduled"}
    rebuild_caps(rt)  # the task
    run_until_idle(rt)
    with rt.db.connect() as conn:
        assert set(conn.execute(select(TOUCHES.c.status)).scalars()) == {"sent"}
    client.close()


def _wait_real(seconds: float) -> None:
    import time

    time.sleep(seconds)  # a lease is real time: only real time makes it run out
