"""The whole reservation semantics in plain Python: the oracle the Lua script is tested
against (``tests/policy``), and a readable statement of what ``CapStore`` promises.

It keeps, per person, ``(channel, key) -> reserved at (ms)`` and a "rebuilt" flag standing
for the epoch marker. Window arithmetic comes from ``rules.window_bounds``, which the real
store uses too; everything else (counting, refusing, retry times, trimming, idempotency)
is written here independently of the script.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from orchestrator.policy.caps import (
    DEFAULT_GC_SLACK_S,
    DEFAULT_HORIZON_S,
    CapDecision,
    CapsNeedRebuild,
    HeldReservation,
)
from orchestrator.policy.rules import CapRule, WindowBounds, applicable_rules, window_bounds
from orchestrator.policy.windows import from_ms, latest_retry, rolling_retry_ms, to_ms


class ReferenceCaps:
    """What a ``CapStore`` on one Redis does, without Redis."""

    def __init__(
        self, *, horizon_s: int = DEFAULT_HORIZON_S, gc_slack_s: int = DEFAULT_GC_SLACK_S
    ) -> None:
        self.gc_ms = (horizon_s + gc_slack_s) * 1000
        self.rebuilt = False
        self._held: dict[str, dict[tuple[str, str], int]] = {}

    def reserve(
        self,
        *,
        person: str,
        channel: str,
        key: str,
        now: datetime,
        rules: Sequence[CapRule],
        tz: ZoneInfo,
    ) -> CapDecision:
        if not self.rebuilt:
            raise CapsNeedRebuild("reference caps: not rebuilt")
        mine = self._held.setdefault(person, {})
        if (channel, key) in mine:
            return CapDecision(ok=True, already_held=True)
        refusals = []
        for rule in applicable_rules(rules, channel):
            bounds = window_bounds(rule, now, tz)
            counted = [
                score
                for (held_channel, _), score in mine.items()
                if (bounds.scope == "all" or held_channel == channel) and bounds.counts(score)
            ]
            if len(counted) >= bounds.max:
                refusals.append((rule.name, _frees_at(bounds, counted)))
        if refusals:
            retry = latest_retry([free for _, free in refusals])
            return CapDecision(False, refusals[0][0], None if retry is None else from_ms(retry))
        now_ms = to_ms(now)
        for held_key in [k for k, score in mine.items() if score < now_ms - self.gc_ms]:
            del mine[held_key]
        mine[(channel, key)] = now_ms
        return CapDecision(ok=True)

    def release(self, *, person: str, channel: str, key: str) -> None:
        self._held.get(person, {}).pop((channel, key), None)

    def flush(self) -> None:
        """Redis restarted empty."""
        self._held.clear()
        self.rebuilt = False

    def rebuild(self, held: Iterable[HeldReservation]) -> int:
        count = 0
        for h in held:
            self._held.setdefault(h.person, {}).setdefault((h.channel, h.key), to_ms(h.at))
            count += 1
        self.rebuilt = True
        return count

    def held(self, person: str) -> list[HeldReservation]:
        """Oldest first, ties by member (the order of a Redis sorted set)."""
        entries = sorted(
            self._held.get(person, {}).items(), key=lambda kv: (kv[1], f"{kv[0][0]}|{kv[0][1]}")
        )
        return [HeldReservation(person, c, k, from_ms(score)) for (c, k), score in entries]


def _frees_at(bounds: WindowBounds, counted: list[int]) -> int | None:
    if bounds.rolling_ms is None:
        return bounds.end_ms if bounds.max > 0 else None
    return rolling_retry_ms(counted, bounds.max, bounds.rolling_ms)


__all__ = ["ReferenceCaps"]
