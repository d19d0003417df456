"""Cap rules as values: parsing, validation, which rules count a channel, platform quotas."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from orchestrator.policy.rules import (
    PLATFORM_LIMITS,
    CapRule,
    applicable_rules,
    platform_limit_problems,
    window_bounds,
)
from orchestrator.policy.windows import to_ms

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("per", "rolling_s", "calendar"),
    [("7d", 7 * 86400, None), ("36h", 36 * 3600, None), ("1d12h", 36 * 3600, None),
     ("90m", 5400, None), ("day", None, "day"), ("week", None, "week"), ("month", None, "month")],
)  # fmt: skip
def test_per_spellings(per: str, rolling_s: int | None, calendar: str | None) -> None:
    rule = CapRule.per("sms", "sms", 2, per)
    assert (rule.rolling_s, rule.calendar) == (rolling_s, calendar)


@pytest.mark.parametrize("per", ["", "7", "seven days", "fortnight", "7d 2x"])
def test_bad_per_is_refused_with_the_spelling_to_use(per: str) -> None:
    with pytest.raises(ValueError, match=r"bad per .*write 7d, 36h, day, week or month"):
        CapRule.per("sms", "sms", 2, per)


def test_a_rule_has_exactly_one_window_and_a_non_negative_max() -> None:
    with pytest.raises(ValueError, match="exactly one of rolling_s"):
        CapRule("x", None, 1)
    with pytest.raises(ValueError, match="exactly one of rolling_s"):
        CapRule("x", None, 1, rolling_s=60, calendar="day")
    with pytest.raises(ValueError, match="max must be >= 0"):
        CapRule("x", None, -1, rolling_s=60)


def test_applicable_rules_are_global_own_channel_and_platform_quota() -> None:
    glob = CapRule.per("global", None, 3, "7d")
    sms = CapRule.per("sms", "sms", 2, "7d")
    article = CapRule.per("wechat_article", "wechat_article", 2, "week")
    rules = [glob, sms, article]
    assert applicable_rules(rules, "sms") == (glob, sms)
    assert applicable_rules(rules, "wechat_article") == (
        glob, article, PLATFORM_LIMITS["wechat_article"],
    )  # fmt: skip
    # A policy rule that is the platform's very window replaces it (no double count).
    same = CapRule(
        "wecom_group_invite", "wecom_group_invite", 1, calendar="day", tz="Asia/Shanghai"
    )
    assert applicable_rules([same], "wecom_group_invite") == (same,)


def test_raising_a_platform_quota_is_reported() -> None:
    rules = [
        CapRule.per("wechat_article", "wechat_article", 5, "month"),
        CapRule.per("wecom_group_invite", "wecom_group_invite", 1, "day"),
    ]
    assert platform_limit_problems(rules) == [
        "cap 'wechat_article': wechat_article allows at most 4 per month (platform quota); "
        "5 cannot be configured"
    ]


def test_platform_quotas_count_in_shanghai_whatever_the_policy_zone() -> None:
    now = datetime(2026, 1, 31, 17, 0, tzinfo=UTC)  # Feb 1st 01:00 in Shanghai, Jan 31 in NY
    bounds = window_bounds(PLATFORM_LIMITS["wechat_article"], now, ZoneInfo("America/New_York"))
    assert bounds.low_ms == to_ms(datetime(2026, 1, 31, 16, 0, tzinfo=UTC))
    assert bounds.end_ms == to_ms(datetime(2026, 2, 28, 16, 0, tzinfo=UTC))


def test_rolling_bounds_count_strictly_after_now_minus_the_window() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    bounds = window_bounds(CapRule.per("g", None, 3, "1h"), now, SHANGHAI)
    assert not bounds.counts(to_ms(now) - 3_600_000)
    assert bounds.counts(to_ms(now) - 3_599_999)
    assert bounds.counts(to_ms(now) + 10**9)  # a lagging caller's "future" still counts
