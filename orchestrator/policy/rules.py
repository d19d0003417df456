"""Cap rules as plain values, the platform quotas, and each rule's window at a given ``now``.

The journey language (``orchestrator.journeys``) parses ``caps:`` from YAML; the engine turns
each entry into a ``CapRule`` (``CapRule.per("sms", "sms", 2, "7d")``). Nothing here imports
the journey models, so the policy package stays importable on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from orchestrator.policy.windows import (
    CALENDAR_LONGEST_S,
    CALENDAR_UNITS,
    CalendarUnit,
    calendar_window,
    rolling_low_ms,
    to_ms,
)

Scope = Literal["all", "channel"]
_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATIONS = re.compile(r"(?:\d+[smhdw])+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class CapRule:
    """At most ``max`` reservations per person in a window.

    ``channel=None`` counts every channel (the global cap). Exactly one of ``rolling_s``
    (a rolling window of that many seconds) and ``calendar`` (``day|week|month`` in local
    time) is set. ``tz`` pins a calendar rule to one time zone (platform quotas are counted
    in Asia/Shanghai whatever the policy timezone); ``None`` means the policy's.
    """

    name: str
    channel: str | None
    max: int
    rolling_s: int | None = None
    calendar: CalendarUnit | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if (self.rolling_s is None) == (self.calendar is None):
            raise ValueError(
                f"cap {self.name!r}: give exactly one of rolling_s (seconds) or calendar "
                f"(day, week or month), got rolling_s={self.rolling_s} calendar={self.calendar}"
            )
        if self.rolling_s is not None and self.rolling_s <= 0:
            raise ValueError(f"cap {self.name!r}: rolling_s must be positive, got {self.rolling_s}")
        if self.calendar is not None and self.calendar not in CALENDAR_UNITS:
            raise ValueError(f"cap {self.name!r}: calendar must be day, week or month")
        if self.max < 0:
            raise ValueError(f"cap {self.name!r}: max must be >= 0, got {self.max}")

    @classmethod
    def per(
        cls, name: str, channel: str | None, max: int, per: str, tz: str | None = None
    ) -> CapRule:
        """From the YAML spelling: ``per`` is ``day|week|month`` or a duration (``7d``, ``36h``)."""
        if per in CALENDAR_UNITS:
            return cls(name, channel, max, calendar=per, tz=tz)
        if not _DURATIONS.fullmatch(per):
            raise ValueError(f"cap {name!r}: bad per {per!r}; write 7d, 36h, day, week or month")
        seconds = sum(int(n) * _UNIT_S[u] for n, u in _DURATION.findall(per))
        return cls(name, channel, max, rolling_s=seconds, tz=tz)

    @property
    def scope(self) -> Scope:
        return "all" if self.channel is None else "channel"

    @property
    def longest_s(self) -> int:
        """The longest time this rule's window can span."""
        return self.rolling_s if self.rolling_s is not None else CALENDAR_LONGEST_S[self.calendar]  # type: ignore[index]

    def applies_to(self, channel: str) -> bool:
        return self.channel is None or self.channel == channel


# Quotas the platforms enforce (and silently filter beyond): a policy may lower them, never
# raise them. Counted in China's calendar whatever the policy timezone.
PLATFORM_LIMITS: dict[str, CapRule] = {
    "wechat_article": CapRule(
        "platform:wechat_article", "wechat_article", 4, calendar="month", tz="Asia/Shanghai"
    ),
    "wecom_group_invite": CapRule(
        "platform:wecom_group_invite", "wecom_group_invite", 1, calendar="day", tz="Asia/Shanghai"
    ),
}


def platform_limit_problems(rules: Iterable[CapRule]) -> list[str]:
    """Messages for rules that would raise a platform quota (for ``recall validate``)."""
    problems = []
    for rule in rules:
        limit = PLATFORM_LIMITS.get(rule.channel or "")
        if limit is not None and rule.calendar == limit.calendar and rule.max > limit.max:
            problems.append(
                f"cap {rule.name!r}: {rule.channel} allows at most {limit.max} per "
                f"{limit.calendar} (platform quota); {rule.max} cannot be configured"
            )
    return problems


def applicable_rules(rules: Iterable[CapRule], channel: str) -> tuple[CapRule, ...]:
    """The rules that count a reservation on ``channel``: global ones, the channel's own, and
    the channel's platform quota unless a policy rule already is the very same window."""
    chosen = tuple(rule for rule in rules if rule.applies_to(channel))
    limit = PLATFORM_LIMITS.get(channel)
    if limit is None or any(_covers(rule, limit) for rule in chosen):
        return chosen
    return (*chosen, limit)


def _covers(rule: CapRule, limit: CapRule) -> bool:
    return (
        rule.channel == limit.channel
        and rule.calendar == limit.calendar
        and rule.max <= limit.max
        and rule.tz == limit.tz
    )


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """One rule's window at one ``now``, in score milliseconds.

    Rolling: counts ``score > low_ms`` and frees a slot ``rolling_ms`` after the k-th oldest.
    Calendar: counts ``low_ms <= score < end_ms`` and frees a slot at ``end_ms``.
    """

    name: str
    scope: Scope
    max: int
    low_ms: int
    end_ms: int | None
    rolling_ms: int | None

    def counts(self, score: int) -> bool:
        if self.end_ms is None:
            return score > self.low_ms
        return self.low_ms <= score < self.end_ms


def window_bounds(rule: CapRule, now: datetime, tz: ZoneInfo) -> WindowBounds:
    """Where ``rule``'s window lies at ``now`` (calendar windows in ``rule.tz`` or ``tz``)."""
    if rule.rolling_s is not None:
        rolling_ms = rule.rolling_s * 1000
        low = rolling_low_ms(to_ms(now), rolling_ms)
        return WindowBounds(rule.name, rule.scope, rule.max, low, None, rolling_ms)
    zone = ZoneInfo(rule.tz) if rule.tz else tz
    start, end = calendar_window(now, rule.calendar, zone)  # type: ignore[arg-type]
    return WindowBounds(rule.name, rule.scope, rule.max, to_ms(start), to_ms(end), None)


__all__ = [
    "PLATFORM_LIMITS",
    "CapRule",
    "Scope",
    "WindowBounds",
    "applicable_rules",
    "platform_limit_problems",
    "window_bounds",
]
