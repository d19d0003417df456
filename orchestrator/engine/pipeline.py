"""What happens to claimed touches before any provider call, as small ordered gates.

    inactive → reachability and consent (with channel fallback) → quiet hours → caps → render

Each gate looks only at the touches still undecided and may decide some of them:
``cancelled`` (the enrollment ended), ``suppressed`` with a reason (opted out, not
reachable, capped), or ``deferred`` to a later due time (quiet hours, capped with
``when_capped: defer``). What is left after ``render`` is ready to freeze into batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from orchestrator.journeys.model import Journey, Policy, SendStep

Decision = str  # "cancelled" | "suppressed" | "deferred"


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

    @property
    def id(self) -> int:
        return int(self.touch["id"])

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


# --- reachability: who can be reached on which channel at all ---------------------------

ADDRESS = {"wechat_article": "openid", "wecom_group_invite": "external_userid", "sms": "phone"}


def unreachable_reason(channel: str, user: dict[str, Any]) -> str | None:
    if not user.get(ADDRESS[channel]):
        return f"unreachable:no_{ADDRESS[channel]}"
    if channel == "wechat_article" and user.get("wechat_followed") is False:
        return "not_following"
    if channel == "sms" and user.get("sms_opt_out"):
        return "opted_out:sms"
    return None


def inactive_gate(works: Sequence[Work], now: datetime) -> None:
    for w in works:
        if w.enrollment["state"] != "active":
            w.decide("cancelled", w.enrollment.get("exit_reason") or "exited")
