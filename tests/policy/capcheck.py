"""Brute-force cap checking over held reservations: the invariant the store must keep.

For every rule and every window of it, the reservations inside are at most ``max``:
rolling windows ``(t - R, t]`` (the worst ones end at a reservation), calendar periods.
Written without the store's or the model's counting code on purpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from orchestrator.policy.caps import HeldReservation
from orchestrator.policy.rules import CapRule, applicable_rules
from orchestrator.policy.windows import calendar_window

CHANNELS = ("wechat_article", "wecom_group_invite", "sms")


def violations(
    held: Iterable[HeldReservation], rules: Sequence[CapRule], tz: ZoneInfo
) -> list[str]:
    """Every (person, rule, window) holding more than the rule allows."""
    by_person: dict[str, list[HeldReservation]] = {}
    for h in held:
        by_person.setdefault(h.person, []).append(h)
    every_rule = {r for channel in CHANNELS for r in applicable_rules(rules, channel)}
    found = []
    for person, mine in sorted(by_person.items()):
        for rule in sorted(every_rule, key=lambda r: r.name):
            times = sorted(h.at for h in mine if rule.channel in (None, h.channel))
            found += [f"{person}: {problem}" for problem in _over(rule, times, tz)]
    return found


def _over(rule: CapRule, times: list[datetime], tz: ZoneInfo) -> list[str]:
    if rule.rolling_s is not None:
        span = timedelta(seconds=rule.rolling_s)
        return [
            f"{rule.name}: {n} in the {span} before {end.isoformat()}"
            for end in times
            if (n := sum(1 for t in times if end - span < t <= end)) > rule.max
        ]
    zone = ZoneInfo(rule.tz) if rule.tz else tz
    periods = Counter(calendar_window(t, rule.calendar, zone)[0] for t in times)  # type: ignore[arg-type]
    return [
        f"{rule.name}: {n} in the {rule.calendar} from {start.isoformat()}"
        for start, n in periods.items()
        if n > rule.max
    ]
