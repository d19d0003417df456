"""One racing process of ``test_caps_race``: many journeys reserving for the same users.

Kept apart from the test module so that a spawned process imports little.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from orchestrator.policy.caps import CapRequest, CapStore
from orchestrator.policy.rules import CapRule

CHANNELS = ("wechat_article", "wecom_group_invite", "sms")
USERS = tuple(f"u{n}" for n in range(6))
JOURNEYS = 40
TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
POLICY = (
    CapRule.per("global", None, 3, "7d"),
    CapRule.per("sms", "sms", 2, "7d"),
    CapRule.per("wechat_article", "wechat_article", 4, "month"),
    CapRule.per("wecom_group_invite", "wecom_group_invite", 1, "day"),
)
Reservation = tuple[str, str, str, datetime]


def race(url: str, worker: int, barrier: Any, results: Any) -> None:
    """Reserve every user on every channel for each journey, at random business times over
    three weeks; release a fifth of the grants (definite rejections). Report both lists."""
    store = CapStore(redis.Redis.from_url(url))
    rng = random.Random(worker)
    granted: list[Reservation] = []
    released: list[Reservation] = []
    barrier.wait()
    for journey in range(JOURNEYS):
        now = T0 + timedelta(hours=rng.randrange(0, 21 * 24))
        requests = [
            CapRequest(user, channel, f"w{worker}j{journey}:{channel}")
            for user in USERS
            for channel in CHANNELS
        ]
        rng.shuffle(requests)
        decisions = store.reserve_many(
            requests, now=now, rules_by_channel={c: POLICY for c in CHANNELS}, tz=TZ
        )
        new = [
            (r.person, r.channel, r.key, now)
            for r, d in zip(requests, decisions, strict=True)
            if d.ok
        ]
        granted += new
        for person, channel, key, at in rng.sample(new, k=len(new) // 5):
            store.release(person=person, channel=channel, key=key)
            released.append((person, channel, key, at))
    results.put((worker, granted, released))
