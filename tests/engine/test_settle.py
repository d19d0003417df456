"""A touch's outcome moves its enrollment on at once when nothing else decides what follows
(the journey's end, an exit, a plain wait): no second cursor pass per sent touch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.engine import runner
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from tests.engine.conftest import T0, TEMPLATES

SMS_THEN = """\
id: j
name: j
entry: {{ segment: "True" }}
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/c"
{after}
"""
AFTER = {
    "end": "",
    "exit": "  - exit: true",
    "wait": "  - wait: 2d\n  - id: sms2\n    send: sms\n    template: w/sms.j2\n"
            "    link: \"https://m.example.com/c\"",
    "branch": "  - if: \"clicked('sms')\"\n    then: exit\n    else: exit",
}


def run(make_runtime: Callable[..., Runtime], after: str,
        monkeypatch: pytest.MonkeyPatch) -> tuple[Runtime, list[Any], list[list[int]]]:
    rt = make_runtime({"j": SMS_THEN.format(after=AFTER[after])}, TEMPLATES, users=3)
    passes: list[list[int]] = []
    real = runner.run_cursors

    def counted(rt_: Runtime, ids: list[int]) -> int:
        passes.append(list(ids))
        return real(rt_, ids)

    monkeypatch.setattr(runner, "run_cursors", counted)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("j"), ["u0000", "u0001", "u0002"], now=T0)
    run_until_idle(rt)
    with rt.db.connect() as conn:
        rows = conn.execute(select(ENROLLMENTS).order_by(ENROLLMENTS.c.id)).all()
    return rt, rows, passes


def test_the_last_touch_completes_its_enrollment_without_a_cursor_pass(
    make_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, rows, passes = run(make_runtime, "end", monkeypatch)
    assert [(r.state, r.exit_reason, r.cursor, r.due_at) for r in rows] == \
        [("completed", "completed", 1, None)] * 3
    assert all(r.exited_at == T0 for r in rows)
    assert len(passes) == 1  # the pass that created the touches, none after their outcome


def test_an_exit_after_the_touch_is_written_with_its_outcome(
    make_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rows, passes = run(make_runtime, "exit", monkeypatch)
    assert {(r.state, r.exit_reason, r.cursor) for r in rows} == {("completed", "exit", 2)}
    assert len(passes) == 1


def test_a_plain_wait_after_the_touch_starts_at_its_outcome(
    make_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, rows, passes = run(make_runtime, "wait", monkeypatch)
    assert {(r.state, r.cursor, r.due_at) for r in rows} == {("active", 2, T0 + timedelta(days=2))}
    assert len(passes) == 1
    with rt.db.connect() as conn:
        assert set(conn.execute(select(TOUCHES.c.status)).scalars()) == {"sent"}


def test_a_branch_after_the_touch_is_left_to_a_cursor_pass(
    make_runtime: Callable[..., Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rows, passes = run(make_runtime, "branch", monkeypatch)
    assert {(r.state, r.exit_reason) for r in rows} == {("completed", "exit")}
    assert len(passes) == 2  # the branch needed the facts: one more pass
