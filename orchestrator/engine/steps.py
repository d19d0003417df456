"""Pure journey semantics: from a cursor and the facts, what happens next.

``advance`` runs the non-send steps that are due (waits start, branches are decided, exits
end the journey) and stops at the next send step or wait. It touches no I/O: the caller
passes the time at which the cursor became runnable and the facts a branch may ask about.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from orchestrator.journeys.durations import next_in_window
from orchestrator.journeys.expressions import compile_expression
from orchestrator.journeys.model import ExitStep, Journey, WaitStep


@dataclass(frozen=True)
class Facts:
    """What a branch may ask about one enrollment, as of the moment it is reached."""

    sent: frozenset[str] = frozenset()
    delivered: frozenset[str] = frozenset()
    clicked: frozenset[str] = frozenset()
    joined: frozenset[str] = frozenset()
    user: Mapping[str, Any] = field(default_factory=dict)
    had_event: Callable[[str, timedelta], bool] = lambda _name, _within: False

    def context(self) -> dict[str, Any]:
        def event(name: str, within: str | timedelta = timedelta(days=3650)) -> bool:
            from orchestrator.journeys.durations import parse_duration

            span = within if isinstance(within, timedelta) else parse_duration(within)
            return self.had_event(name, span)

        return {
            **self.user,
            "user": self.user,
            "sent": lambda step: step in self.sent,
            "delivered": lambda step: step in self.delivered,
            "clicked": lambda step: step in self.clicked,
            "joined": lambda step: step in self.joined,
            "event": event,
        }


@dataclass(frozen=True)
class Next:
    """``send``: create the touch of step ``cursor`` now. ``wait``: run ``cursor`` at
    ``due_at``. ``done``: the journey's steps are over (``exit_reason``)."""

    kind: Literal["send", "wait", "done"]
    cursor: int
    due_at: datetime | None = None
    exit_reason: str | None = None


def advance(journey: Journey, cursor: int, at: datetime, tz: ZoneInfo, facts: Facts) -> Next:
    steps = journey.steps
    i = cursor
    while i < len(steps):
        step = steps[i]
        if step.kind == "send":
            return Next("send", i, at)
        if step.kind == "wait":
            due = at + step.wait
            if step.window is not None:
                due = next_in_window(due, tz, step.window)
            return Next("wait", i + 1, due)
        if step.kind == "exit":
            return Next("done", len(steps), exit_reason="exit")
        target = step.then if _truthy(step.if_, facts) else step.else_
        if target == "exit":
            return Next("done", len(steps), exit_reason="exit")
        i = journey.step_index(target)
    return Next("done", len(steps), exit_reason="completed")


def after_send(journey: Journey, cursor: int, at: datetime) -> Next | None:
    """What follows a send step whose touch reached its outcome at ``at``, when that needs
    no facts and no time zone: the journey's end, an ``exit``, or a plain wait. None when
    a cursor pass must decide (a branch, a wait with a window, another send)."""
    steps = journey.steps
    if cursor >= len(steps):
        return Next("done", len(steps), exit_reason="completed")
    step = steps[cursor]
    if isinstance(step, ExitStep):
        return Next("done", len(steps), exit_reason="exit")
    if isinstance(step, WaitStep) and step.window is None:
        return Next("wait", cursor + 1, at + step.wait)
    return None


@lru_cache(maxsize=1024)
def _compiled(source: str) -> Any:
    return compile_expression(source)


def _truthy(source: str, facts: Facts) -> bool:
    return bool(_compiled(source).evaluate(facts.context()))
