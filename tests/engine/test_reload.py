"""Journey files picked up by the next tick, without restarting; old enrollments keep theirs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import Enrollment, JourneyState, JourneyVersion
from tests.engine.conftest import T0

ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
STATES = JourneyState.__table__  # type: ignore[attr-defined]
VERSIONS = JourneyVersion.__table__  # type: ignore[attr-defined]

NUDGE = """\
id: nudge
name: 提醒
entry:
  segment: "True"
reentry: 30d
goal: { event: order_placed, within: 7d }
steps:
  - wait: 1d
  - id: sms
    send: sms
    template: n/sms.j2
"""
OLD_TEXT = "回来看看吧"
NEW_TEXT = "今天下单立减5元，快回来看看"


def start(make_runtime: Callable[..., Runtime]) -> tuple[Runtime, ManualClock]:
    rt = make_runtime(journeys={"nudge": NUDGE}, templates={"n/sms.j2": OLD_TEXT}, users=4)
    assert isinstance(rt.clock, ManualClock)
    return rt, rt.clock


def enroll_now(rt: Runtime, user_id: str) -> None:
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("nudge"), [user_id], now=rt.clock.now())


def sms_bodies(sandbox: SandboxHandle) -> dict[str, str]:
    return {r["body"]["To"]: r["body"]["Body"] for r in sandbox.state.records("twilio")
            if "Messages.json" in r["path"] and r["outcome"] == "accepted"}


def versions_of(rt: Runtime) -> dict[str, Any]:
    with rt.db.connect() as conn:
        entered = {user: version for user, version in conn.execute(
            select(ENROLLMENTS.c.user_id, ENROLLMENTS.c.journey_version))}
        stored = set(conn.execute(select(VERSIONS.c.version)
                                  .where(VERSIONS.c.journey_id == "nudge")).scalars())
        current = conn.execute(select(STATES.c.version)
                               .where(STATES.c.journey_id == "nudge")).scalar_one()
    return {"enrollments": entered, "stored": stored, "state": current}


def edit_template_between_two_enrollments(rt: Runtime, clock: ManualClock) -> tuple[str, str]:
    """u0000 enters on the first version, the template changes, u0001 enters on the next;
    both become due a day later. Returns (old, new) versions."""
    old = rt.book.latest("nudge").version
    assert rt.book.reload_if_changed() is False  # nothing changed
    enroll_now(rt, "u0000")
    run_until_idle(rt)
    (rt.settings.templates_dir / "n/sms.j2").write_text(NEW_TEXT, encoding="utf-8")
    clock.advance(60)
    run_until_idle(rt)
    new = rt.book.latest("nudge").version
    enroll_now(rt, "u0001")
    clock.set(T0 + timedelta(days=1, minutes=2))
    run_until_idle(rt)
    return old, new


def test_an_edited_template_is_a_new_version_from_the_next_tick(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, clock = start(make_runtime)
    old, new = edit_template_between_two_enrollments(rt, clock)
    assert new != old
    assert versions_of(rt) == {"enrollments": {"u0000": old, "u0001": new},
                               "stored": {old, new}, "state": new}
    assert rt.book.get(rt.db, "nudge", old).version == old  # rebuilt from the store
    bodies = sms_bodies(sandbox)
    assert set(bodies) == {"+8613800000000", "+8613800000001"}
    assert NEW_TEXT in bodies["+8613800000001"]


def test_an_enrollment_made_before_the_edit_still_renders_the_old_template(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, clock = start(make_runtime)
    edit_template_between_two_enrollments(rt, clock)
    old_body = sms_bodies(sandbox)["+8613800000000"]
    assert OLD_TEXT in old_body and NEW_TEXT not in old_body


def test_a_broken_edit_keeps_the_last_good_journeys_running(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt, clock = start(make_runtime)
    good = rt.book.latest("nudge").version
    enroll_now(rt, "u0000")
    run_until_idle(rt)

    journey_file = rt.settings.journeys_dir / "nudge.yaml"
    journey_file.write_text(NUDGE.replace("  - wait: 1d\n", "  - wait: [1d\n"),
                            encoding="utf-8")
    clock.advance(60)
    with caplog.at_level(logging.ERROR, logger="orchestrator.engine.book"):
        run_until_idle(rt)
    assert f"journeys not reloaded, still running the last good ones: {journey_file}:" \
        in caplog.text
    assert rt.book.latest("nudge").version == good

    clock.set(T0 + timedelta(days=1))
    run_until_idle(rt)
    assert OLD_TEXT in sms_bodies(sandbox)["+8613800000000"]  # the good version ran on

    journey_file.write_text(NUDGE.replace("wait: 1d", "wait: 2d"), encoding="utf-8")
    clock.advance(60)
    run_until_idle(rt)
    assert rt.book.latest("nudge").version != good  # fixed: picked up at the next tick
    assert versions_of(rt)["state"] == rt.book.latest("nudge").version
