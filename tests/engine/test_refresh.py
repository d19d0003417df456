"""The scheduled audience refresh: golden-window signals enroll at the refresh, once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.clock import ManualClock
from orchestrator.engine.ingest import ingest_events
from orchestrator.engine.refresh import (
    LAST_REFRESH_KEY,
    RefreshResult,
    maybe_refresh,
    refresh_now,
)
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Enrollment, Event, KeyValue, UserFeatures
from tests.engine.conftest import POLICY, T0

ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]
FEATURES = UserFeatures.__table__  # type: ignore[attr-defined]
KV = KeyValue.__table__  # type: ignore[attr-defined]

RESCUE = """\
id: rescue
name: 支付失败挽回
entry:
  event: signal.payment_failure
reentry: 3d
goal: { event: order_placed, within: 3d }
steps:
  - id: sms
    send: sms
    template: r/sms.j2
"""
TEMPLATES = {"r/sms.j2": "订单没付成功？{{ event.props.after_hours }}小时内再试一次"}
REFRESH_AT = T0 + timedelta(days=1)  # 09:00 in Shanghai (T0 is 09:00 too: not after the base)
SIGNAL_ID = "signal.payment_failure:u0001:2026-03-02"
PHONE = "+8613800000001"


def start(make_runtime: Callable[..., Runtime]) -> tuple[Runtime, ManualClock]:
    """A rescue journey on ``signal.payment_failure`` and one payment failure in history."""
    rt = make_runtime(journeys={"rescue": RESCUE}, templates=TEMPLATES, users=5)
    assert isinstance(rt.clock, ManualClock)
    failed_at = T0 + timedelta(hours=3)
    ingest_events(rt.db, [{"event_id": "pay-1", "user_id": "u0001", "name": "payment_failed",
                           "ts": failed_at.isoformat(), "value": 12.5, "props": {}}],
                  now=failed_at, journeys=None)
    return rt, rt.clock


def signals(rt: Runtime) -> list[str]:
    with rt.db.connect() as conn:
        return list(conn.execute(select(EVENTS.c.event_id).where(EVENTS.c.name.like("signal.%"))
                                 .order_by(EVENTS.c.event_id)).scalars())


def enrollments(rt: Runtime) -> list[Any]:
    with rt.db.connect() as conn:
        return conn.execute(select(ENROLLMENTS).order_by(ENROLLMENTS.c.id)).all()


def scored_users(rt: Runtime) -> int:
    with rt.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(FEATURES)).scalar_one())


def schedule_row(rt: Runtime) -> dict[str, Any]:
    with rt.db.connect() as conn:
        return dict(conn.execute(select(KV.c.value).where(KV.c.key == LAST_REFRESH_KEY))
                    .scalar_one())


def sms_to(sandbox: SandboxHandle, phone: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records("twilio")
            if "Messages.json" in r["path"] and r["outcome"] == "accepted"
            and r["body"]["To"] == phone]


def test_a_signal_enrolls_at_the_scheduled_refresh_and_only_once(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, clock = start(make_runtime)

    clock.set(REFRESH_AT - timedelta(seconds=1))
    run_until_idle(rt)
    assert (signals(rt), enrollments(rt), scored_users(rt)) == ([], [], 0)
    assert "ran_at" not in schedule_row(rt)

    clock.set(REFRESH_AT)
    run_until_idle(rt)
    assert signals(rt) == [SIGNAL_ID]
    [enrollment] = enrollments(rt)
    assert (enrollment.journey_id, enrollment.user_id, enrollment.trigger_event_id) == (
        "rescue", "u0001", SIGNAL_ID)
    assert enrollment.entered_at.replace(tzinfo=None) == REFRESH_AT.replace(tzinfo=None)
    [sms] = sms_to(sandbox, PHONE)
    assert "2.0小时内再试一次" in sms["body"]["Body"]  # the signal's props reach the template
    assert scored_users(rt) == 5
    assert schedule_row(rt)["ran_at"] == REFRESH_AT.isoformat()

    # Again at the same business time: the schedule has nothing due, and an on-demand
    # refresh finds the same signal (same id) and enrolls nobody.
    assert maybe_refresh(rt, REFRESH_AT) is None
    again = refresh_now(rt, REFRESH_AT)
    assert (again.signals, again.new_signals, again.enrolled) == (1, 0, 0)
    run_until_idle(rt)
    assert len(enrollments(rt)) == 1
    assert len(sms_to(sandbox, PHONE)) == 1


def test_missed_fires_collapse_into_one_refresh_at_the_latest(
    make_runtime: Callable[..., Runtime],
) -> None:
    rt, _ = start(make_runtime)
    late = REFRESH_AT + timedelta(days=2, hours=5)
    result = maybe_refresh(rt, late)
    assert isinstance(result, RefreshResult)
    assert result.fire == REFRESH_AT + timedelta(days=2)
    assert result.at == late
    assert maybe_refresh(rt, late + timedelta(hours=1)) is None
    assert maybe_refresh(rt, REFRESH_AT + timedelta(days=3)) is not None


def test_concurrent_ticks_run_one_refresh(make_runtime: Callable[..., Runtime]) -> None:
    rt, _ = start(make_runtime)
    gate = threading.Barrier(4)

    def contend() -> RefreshResult | None:
        gate.wait()
        return maybe_refresh(rt, REFRESH_AT)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: contend(), range(4)))
    assert len([r for r in results if r is not None]) == 1
    assert signals(rt) == [SIGNAL_ID]


def test_a_failed_refresh_is_logged_and_the_tick_goes_on(
    make_runtime: Callable[..., Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    rt, clock = start(make_runtime)
    policy = rt.settings.journeys_dir / "policy.yaml"
    policy.write_text(POLICY + "audience:\n  tiers: { at_risk_days: -1 }\n", encoding="utf-8")
    clock.set(REFRESH_AT)
    with caplog.at_level(logging.ERROR, logger="orchestrator.engine.refresh"):
        run_until_idle(rt)
    assert "scheduled audience refresh for 2026-03-03T01:00:00+00:00 failed" in caplog.text
    row = schedule_row(rt)
    assert "at_risk_days" in row["error"] and "ran_at" not in row
    assert signals(rt) == []
    # Backing off (in real time): the next tick does not try again at once.
    assert maybe_refresh(rt, REFRESH_AT + timedelta(minutes=1)) is None
