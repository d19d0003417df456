"""What happens to claimed touches before any provider call, as small ordered gates.

    inactive → rung holdout → consent and reach (with channel fallback) → quiet hours
    → caps → render

Each gate looks only at the touches still undecided and may decide some of them:
``cancelled`` (the enrollment ended), ``suppressed`` with a reason (held out of the step by
its rung holdout, opted out, not reachable, capped), ``deferred`` to a later due time
(quiet hours, capped with ``when_capped: defer``) or ``failed`` (the template would not
render). What is left after
``render`` holds its cap reservation and is ready to freeze into batches.

A test send (``touch.test``: ``recall send-test``, a journey's ``test_recipients``) passes
the same gates except quiet hours and caps, which let it through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from orchestrator.journeys.model import Journey, Policy, SendStep

Decision = str  # "cancelled" | "suppressed" | "deferred" | "failed"


@dataclass
class Work:
    """One claimed touch on its way through the gates."""

    touch: dict[str, Any]
    enrollment: dict[str, Any]
    user: dict[str, Any]
    journey: Journey
    policy: Policy
    step: SendStep
    tz: ZoneInfo
    channel: str
    decision: Decision | None = None
    reason: str | None = None
    due_at: datetime | None = None
    tried: list[str] = field(default_factory=list)
    title: str | None = None
    text: str = ""
    link: str | None = None
    link_target: str | None = None
    reserved: bool = False
    render_error: str | None = None

    @property
    def id(self) -> int:
        return int(self.touch["id"])

    @property
    def known_user(self) -> bool:
        """The user's row was found (a stand-in has no ``erased`` column)."""
        return "erased" in self.user

    @property
    def key(self) -> str:
        return f"{self.touch['enrollment_id']}:{self.touch['step_id']}"

    def decide(self, decision: Decision, reason: str | None = None,
               due_at: datetime | None = None) -> None:
        self.decision, self.reason, self.due_at = decision, reason, due_at


Gate = Callable[[Sequence[Work], datetime], None]


def undecided(works: Sequence[Work]) -> list[Work]:
    return [w for w in works if w.decision is None]


def run_gates(gates: Sequence[Gate], works: Sequence[Work], now: datetime) -> list[Work]:
    for gate in gates:
        pending = undecided(works)
        if not pending:
            break
        gate(pending, now)
    return undecided(works)


def inactive_gate(works: Sequence[Work], now: datetime) -> None:
    for w in works:
        if w.enrollment["state"] != "active":
            w.decide("cancelled", w.enrollment.get("exit_reason") or "exited")


RUNG_HOLDOUT = "rung_holdout"  # the reason of a touch its step's rung holdout skipped


def rung_holdout_gate(works: Sequence[Work], now: datetime) -> None:
    """A user drawn into the step's rung holdout is not touched at this step: suppressed
    before consent, caps or rendering (nothing is reserved, nothing sent), and the
    enrollment goes on to the next step."""
    for w in works:
        if w.touch.get("rung_arm") == "holdout":
            w.decide("suppressed", RUNG_HOLDOUT)
