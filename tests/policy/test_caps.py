"""The cap store on real Redis: behaviour by example, then the Lua script against the pure
reference model under random sequences of reserve / release / restart / rebuild."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator.errors import ConfigError
from orchestrator.policy.caps import (
    CapDecision,
    CapRequest,
    CapsNeedRebuild,
    CapStore,
    HeldReservation,
)
from orchestrator.policy.reference import ReferenceCaps
from orchestrator.policy.rules import CapRule

from .capcheck import CHANNELS, violations

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # a Monday, 10:00 in Shanghai
POLICY = [
    CapRule.per("global", None, 3, "7d"),
    CapRule.per("sms", "sms", 2, "7d"),
    CapRule.per("wechat_article", "wechat_article", 4, "month"),
    CapRule.per("wecom_group_invite", "wecom_group_invite", 1, "day"),
]


def reserve(
    store: CapStore,
    person: str,
    channel: str,
    key: str,
    at: datetime,
    rules: list[CapRule] = POLICY,
) -> CapDecision:
    return store.reserve(person=person, channel=channel, key=key, now=at, rules=rules, tz=SHANGHAI)


# ---------------------------------------------------------------- by example


def test_an_empty_redis_refuses_until_rebuilt(empty_caps: CapStore) -> None:
    with pytest.raises(CapsNeedRebuild, match=r"recall:cap:epoch is missing.*recall caps rebuild"):
        reserve(empty_caps, "u1", "sms", "1:sms", T0)
    assert empty_caps.held("u1") == []  # nothing was reserved
    empty_caps.rebuild([])
    assert reserve(empty_caps, "u1", "sms", "1:sms", T0).ok


def test_a_full_rolling_cap_refuses_until_its_oldest_reservation_leaves(caps: CapStore) -> None:
    assert reserve(caps, "u1", "sms", "1:a", T0).ok
    assert reserve(caps, "u1", "sms", "2:a", T0 + timedelta(hours=1)).ok
    refused = reserve(caps, "u1", "sms", "3:a", T0 + timedelta(hours=2))
    assert refused == CapDecision(False, "sms", T0 + timedelta(days=7))
    assert reserve(caps, "u1", "sms", "3:a", T0 + timedelta(days=7)).ok


def test_the_global_cap_counts_every_channel(caps: CapStore) -> None:
    assert reserve(caps, "u1", "sms", "1:a", T0).ok
    assert reserve(caps, "u1", "wechat_article", "1:b", T0).ok
    assert reserve(caps, "u1", "wecom_group_invite", "1:c", T0).ok
    assert reserve(caps, "u1", "wechat_article", "2:b", T0) == CapDecision(
        False, "global", T0 + timedelta(days=7)
    )
    assert reserve(caps, "u2", "wechat_article", "2:b", T0).ok  # another person is untouched


def test_a_calendar_cap_frees_at_local_midnight(caps: CapStore) -> None:
    assert reserve(caps, "u1", "wecom_group_invite", "1:i", T0).ok
    refused = reserve(caps, "u1", "wecom_group_invite", "2:i", T0 + timedelta(hours=5))
    tomorrow = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # 2026-03-03 00:00 in Shanghai
    assert refused == CapDecision(False, "wecom_group_invite", tomorrow)
    assert reserve(caps, "u1", "wecom_group_invite", "2:i", tomorrow).ok


def test_the_platform_article_quota_holds_without_a_policy_rule(caps: CapStore) -> None:
    rules = [CapRule.per("global", None, 10, "7d")]
    for n in range(4):
        assert reserve(caps, "u1", "wechat_article", f"{n}:a", T0 + timedelta(days=n), rules).ok
    refused = reserve(caps, "u1", "wechat_article", "9:a", T0 + timedelta(days=5), rules)
    assert refused == CapDecision(
        False, "platform:wechat_article", datetime(2026, 3, 31, 16, tzinfo=UTC)
    )


def test_a_retry_with_the_same_key_is_already_held_and_not_counted_twice(caps: CapStore) -> None:
    assert reserve(caps, "u1", "sms", "1:a", T0) == CapDecision(True)
    assert reserve(caps, "u1", "sms", "1:a", T0 + timedelta(minutes=5)) == CapDecision(
        True, already_held=True
    )
    assert [h.key for h in caps.held("u1")] == ["1:a"]
    assert caps.held("u1")[0].at == T0  # the first reservation's time stays


def test_release_frees_the_slot(caps: CapStore) -> None:
    assert reserve(caps, "u1", "sms", "1:a", T0).ok
    assert reserve(caps, "u1", "sms", "2:a", T0).ok
    assert not reserve(caps, "u1", "sms", "3:a", T0).ok
    caps.release(person="u1", channel="sms", key="2:a")
    caps.release(person="u1", channel="sms", key="2:a")  # idempotent
    assert reserve(caps, "u1", "sms", "3:a", T0).ok


def test_a_stricter_journey_cap_waits_for_enough_reservations_to_leave(caps: CapStore) -> None:
    for hours in (0, 1, 2):
        assert reserve(caps, "u1", "sms", f"{hours}:a", T0 + timedelta(hours=hours), []).ok
    stricter = [CapRule.per("journey-sms", "sms", 1, "7d")]  # 3 held, 1 allowed: 3 must go
    refused = reserve(caps, "u1", "sms", "9:a", T0 + timedelta(hours=3), stricter)
    assert refused == CapDecision(False, "journey-sms", T0 + timedelta(days=7, hours=2))


def test_a_cap_of_zero_refuses_with_no_retry_time(caps: CapStore) -> None:
    rules = [CapRule.per("sms", "sms", 0, "7d")]
    assert reserve(caps, "u1", "sms", "1:a", T0, rules) == CapDecision(False, "sms", None)


def test_retry_at_waits_for_every_refusing_window(caps: CapStore) -> None:
    rules = [CapRule.per("sms-week", "sms", 1, "week"), CapRule.per("sms-3d", "sms", 1, "3d")]
    assert reserve(caps, "u1", "sms", "1:a", T0, rules).ok
    refused = reserve(caps, "u1", "sms", "2:a", T0 + timedelta(hours=1), rules)
    next_monday = datetime(2026, 3, 8, 16, 0, tzinfo=UTC)  # 2026-03-09 00:00 Shanghai
    assert refused == CapDecision(False, "sms-week", next_monday)


def test_reserve_many_decides_in_order_and_uses_each_requests_rules(caps: CapStore) -> None:
    strict = (CapRule.per("sms-journey", "sms", 1, "7d"),)
    requests = [
        CapRequest("u1", "sms", "1:a"),
        CapRequest("u1", "sms", "2:a", rules=strict),
        CapRequest("u1", "sms", "3:a"),
        CapRequest("u1", "sms", "4:a"),
        CapRequest("u1", "sms", "1:a"),
    ]
    decisions = caps.reserve_many(requests, now=T0, rules_by_channel={"sms": POLICY}, tz=SHANGHAI)
    assert decisions == [
        CapDecision(True),
        CapDecision(False, "sms-journey", T0 + timedelta(days=7)),
        CapDecision(True),
        CapDecision(False, "sms", T0 + timedelta(days=7)),
        CapDecision(True, already_held=True),
    ]


def test_reserve_many_without_rules_for_a_channel_says_which(caps: CapStore) -> None:
    with pytest.raises(
        ConfigError,
        match=r"no cap rules for channel 'sms' \(rules_by_channel has \['wechat_article'\]\)",
    ):
        caps.reserve_many(
            [CapRequest("u1", "sms", "1:a")],
            now=T0,
            rules_by_channel={"wechat_article": POLICY},
            tz=SHANGHAI,
        )


def test_a_rule_longer_than_the_horizon_is_a_config_error(caps: CapStore) -> None:
    with pytest.raises(
        ConfigError, match=r"cap 'quarter' spans 7776000 s.*raise CapStore\(horizon_s"
    ):
        reserve(caps, "u1", "sms", "1:a", T0, [CapRule.per("quarter", None, 9, "90d")])
    roomy = CapStore(caps._redis, horizon_s=100 * 86400)  # noqa: SLF001 - same Redis
    assert reserve(roomy, "u1", "sms", "1:a", T0, [CapRule.per("quarter", None, 9, "90d")]).ok


def test_reserving_survives_a_flushed_script_cache(
    caps: CapStore, policy_redis: redis.Redis
) -> None:
    policy_redis.script_flush()
    assert reserve(caps, "u1", "sms", "1:a", T0).ok


def test_old_reservations_are_trimmed_and_keys_expire_for_garbage_collection(
    caps: CapStore, policy_redis: redis.Redis
) -> None:
    assert reserve(caps, "u1", "sms", "1:a", T0).ok
    later = T0 + timedelta(seconds=caps.gc_s + 1)
    assert reserve(caps, "u1", "sms", "2:a", later).ok
    assert [h.key for h in caps.held("u1")] == ["2:a"]
    assert policy_redis.zrange("recall:cap:p:{u1}:ch:sms", 0, -1) == [b"2:a"]
    assert reserve(caps, "u1", "sms", "1:a", later) == CapDecision(True)  # trimmed: a new one
    ttl = policy_redis.ttl("recall:cap:p:{u1}:ch:sms")
    assert caps.gc_s - 5 <= ttl <= caps.gc_s


def test_prefixes_keep_stores_apart(caps: CapStore, policy_redis: redis.Redis) -> None:
    other = CapStore(policy_redis, prefix="recall:other")
    with pytest.raises(CapsNeedRebuild, match="recall:other:epoch"):
        reserve(other, "u1", "sms", "1:a", T0)


# ---------------------------------------------------------------- against the model


persons = st.sampled_from(["u1", "u2", "u3"])
channels = st.sampled_from(CHANNELS)
keys = st.integers(0, 12).map(lambda n: f"{n}:step")
# Mostly forward, sometimes back (a lagging worker's clock), across days and weeks, and now
# and then past the garbage-collection horizon (old reservations get trimmed).
steps = st.one_of(
    st.integers(0, 6 * 3600),
    st.integers(0, 4 * 86400),
    st.integers(-6 * 3600, 0),
    st.integers(40 * 86400, 45 * 86400),
).map(lambda s: timedelta(seconds=s))
policies = st.lists(
    st.builds(
        CapRule.per,
        name=st.sampled_from(["a", "b", "c", "d"]),
        channel=st.sampled_from([None, *CHANNELS]),
        max=st.integers(0, 4),
        per=st.sampled_from(["1h", "36h", "3d", "7d", "day", "week", "month"]),
    ),
    max_size=4,
    unique_by=lambda r: r.name,
)


class CapsAgainstModel(RuleBasedStateMachine):
    """Every answer of the Lua script equals the model's; no cap is ever exceeded."""

    client: ClassVar[redis.Redis]

    def __init__(self) -> None:
        super().__init__()
        self.client.flushdb()
        self.store = CapStore(self.client)
        self.model = ReferenceCaps()
        self.store.rebuild([])
        self.model.rebuild([])
        self.now = T0
        self.rules: list[CapRule] = POLICY
        self.tz = SHANGHAI

    @initialize(
        rules=st.one_of(st.just(POLICY), policies),
        tz=st.sampled_from(["Asia/Shanghai", "America/New_York"]).map(ZoneInfo),
        start=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    )
    def choose(self, rules: list[CapRule], tz: ZoneInfo, start: datetime) -> None:
        self.rules, self.tz, self.now = rules, tz, start

    @precondition(lambda self: self.model.rebuilt)
    @rule(person=persons, channel=channels, key=keys, step=steps)
    def reserve(self, person: str, channel: str, key: str, step: timedelta) -> None:
        self.now += step
        args = dict(
            person=person, channel=channel, key=key, now=self.now, rules=self.rules, tz=self.tz
        )
        assert self.store.reserve(**args) == self.model.reserve(**args)  # type: ignore[arg-type]

    @precondition(lambda self: self.model.rebuilt)
    @rule(person=persons, channel=channels, key=keys, step=steps, tighter=st.integers(1, 2))
    def reserve_under_a_stricter_journey_policy(
        self, person: str, channel: str, key: str, step: timedelta, tighter: int
    ) -> None:
        """A journey may tighten the policy: its windows then hold more than its max."""
        self.now += step
        rules = [replace(r, max=min(r.max, max(r.max - tighter, 1))) for r in self.rules]
        args = dict(person=person, channel=channel, key=key, now=self.now, rules=rules, tz=self.tz)
        assert self.store.reserve(**args) == self.model.reserve(**args)  # type: ignore[arg-type]

    @precondition(lambda self: self.model.rebuilt)
    @rule(batch=st.lists(st.tuples(persons, channels, keys), min_size=1, max_size=6), step=steps)
    def reserve_many(self, batch: list[tuple[str, str, str]], step: timedelta) -> None:
        self.now += step
        requests = [CapRequest(*item) for item in batch]
        by_channel = {channel: self.rules for channel in CHANNELS}
        got = self.store.reserve_many(
            requests, now=self.now, rules_by_channel=by_channel, tz=self.tz
        )
        expected = [
            self.model.reserve(
                person=r.person,
                channel=r.channel,
                key=r.key,
                now=self.now,
                rules=self.rules,
                tz=self.tz,
            )
            for r in requests
        ]
        assert got == expected

    @rule(person=persons, channel=channels, key=keys)
    def release(self, person: str, channel: str, key: str) -> None:
        self.store.release(person=person, channel=channel, key=key)
        self.model.release(person=person, channel=channel, key=key)

    @precondition(lambda self: self.model.rebuilt)
    @rule()
    def redis_restarts_and_sql_rebuilds(self) -> None:
        held = [h for p in ("u1", "u2", "u3") for h in self.model.held(p)]  # what SQL holds
        self.client.flushdb()
        self.model.flush()
        with pytest.raises(CapsNeedRebuild):
            self.store.reserve(
                person="u1", channel="sms", key="x", now=self.now, rules=self.rules, tz=self.tz
            )
        assert self.store.rebuild(held) == self.model.rebuild(held) == len(held)

    @invariant()
    def same_reservations_and_no_cap_exceeded(self) -> None:
        held: list[HeldReservation] = []
        for person in ("u1", "u2", "u3"):
            assert self.store.held(person) == self.model.held(person)
            held += self.model.held(person)
        assert violations(held, self.rules, self.tz) == []


def test_lua_script_matches_the_reference_model(policy_redis: redis.Redis) -> None:
    CapsAgainstModel.client = policy_redis
    run_state_machine_as_test(
        CapsAgainstModel,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
