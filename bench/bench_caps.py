"""cap_checks_per_s: atomic cap check-and-reserve through ``CapStore.reserve_many`` against
the same work as raw ``EVALSHA`` commands pipelined 1,000 deep (>= 30,000/s and
>= 60 % of the raw figure).

The baseline is as raw as it gets: the very same script, keys and arguments, packed into
RESP bytes *before* the clock starts, then sent 1,000 at a time over one connection with
the replies read back and nothing decoded into decisions. ``reserve_many`` does everything
inside the clock: window arithmetic, packing, and turning replies into ``CapDecision``s.
Both start from an empty store under their own key prefix and see the same requests at the
same business times, so they do the same Redis work (checked: equal grant counts).

Runs against ``RECALL_BENCH_REDIS_URL`` (else ``RECALL_REDIS_URL``, else
redis://127.0.0.1:6379/12) under a fresh ``recall:bench:*`` prefix that it deletes after.
Prints one JSON object per line: ``{"name", "value", "unit", "baseline", "ratio"}``.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis

from orchestrator.policy.caps import PIPELINE_DEPTH, CapRequest, CapStore
from orchestrator.policy.rules import CapRule, applicable_rules, window_bounds
from orchestrator.policy.windows import to_ms

CHECKS = 200_000
PEOPLE = 50_000
BATCH = 10_000  # touches a dispatcher tick hands over; one business `now` per batch
ROUNDS = 3
TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CHANNELS = ("wechat_article", "wecom_group_invite", "sms")
POLICY = (
    CapRule.per("global", None, 3, "7d"),
    CapRule.per("sms", "sms", 2, "7d"),
    CapRule.per("wechat_article", "wechat_article", 4, "month"),
    CapRule.per("wecom_group_invite", "wecom_group_invite", 1, "day"),
)
Batch = tuple[datetime, list[CapRequest]]


def workload(seed: int = 1) -> list[Batch]:
    rng = random.Random(seed)
    batches = []
    for n in range(CHECKS // BATCH):
        requests = [
            CapRequest(f"user{rng.randrange(PEOPLE)}", rng.choice(CHANNELS), f"{n}-{i}:step")
            for i in range(BATCH)
        ]
        batches.append((T0 + timedelta(hours=6 * n), requests))
    return batches


def run_api(client: redis.Redis, batches: list[Batch]) -> tuple[float, int]:
    store = CapStore(client, prefix=f"recall:bench:{uuid.uuid4().hex}")
    store.rebuild([])
    rules = {channel: POLICY for channel in CHANNELS}
    granted = 0
    started = time.perf_counter()
    for now, requests in batches:
        decisions = store.reserve_many(requests, now=now, rules_by_channel=rules, tz=TZ)
        granted += sum(d.ok for d in decisions)
    return time.perf_counter() - started, granted


def raw_commands(store: CapStore, now: datetime, requests: list[CapRequest]) -> Iterator[list[Any]]:
    """The script's documented KEYS and ARGV (``caps.lua``), built here independently."""
    now_ms = to_ms(now)
    for r in requests:
        argv: list[Any] = [
            r.key,
            f"{r.channel}|{r.key}",
            now_ms,
            store.gc_s,
            now_ms - store.gc_s * 1000,
        ]
        chosen = applicable_rules(POLICY, r.channel)
        argv.append(len(chosen))
        for rule in chosen:
            b = window_bounds(rule, now, TZ)
            scope = 1 if b.scope == "all" else 2
            if b.end_ms is None:
                argv += [scope, b.max, f"({b.low_ms}", "+inf", "r", b.rolling_ms]
            else:
                argv += [scope, b.max, b.low_ms, f"({b.end_ms}", "c", b.end_ms]
        keys = [
            store.epoch_key,
            f"{store.prefix}:p:{{{r.person}}}:all",
            f"{store.prefix}:p:{{{r.person}}}:ch:{r.channel}",
        ]
        yield ["EVALSHA", store.reserve_sha, 3, *keys, *argv]


def run_raw(client: redis.Redis, batches: list[Batch]) -> tuple[float, int]:
    store = CapStore(client, prefix=f"recall:bench:{uuid.uuid4().hex}")
    store.rebuild([])
    connection = client.connection_pool.get_connection()
    try:
        packed = []
        for now, requests in batches:
            commands = list(raw_commands(store, now, requests))
            for start in range(0, len(commands), PIPELINE_DEPTH):
                chunk = commands[start : start + PIPELINE_DEPTH]
                packed.append((connection.pack_commands(chunk), len(chunk)))
        granted = 0
        started = time.perf_counter()
        for payload, count in packed:
            connection.send_packed_command(payload)
            for _ in range(count):
                granted += connection.read_response() == 1
        return time.perf_counter() - started, granted
    finally:
        client.connection_pool.release(connection)


def main() -> None:
    url = os.environ.get("RECALL_BENCH_REDIS_URL") or os.environ.get(
        "RECALL_REDIS_URL", "redis://127.0.0.1:6379/12"
    )
    client = redis.Redis.from_url(url)
    batches = workload()
    try:
        api, raw = [], []
        for _ in range(ROUNDS):  # alternate, keep the best of each
            api.append(run_api(client, batches))
            raw.append(run_raw(client, batches))
        (api_s, api_granted), (raw_s, raw_granted) = min(api), min(raw)
        if api_granted != raw_granted:
            raise SystemExit(f"bench_caps: the two paths disagree ({api_granted} vs {raw_granted})")
        value, baseline = CHECKS / api_s, CHECKS / raw_s
        print(json.dumps({
            "name": "cap_checks_per_s", "value": round(value), "unit": "checks/s",
            "baseline": round(baseline), "ratio": round(value / baseline, 3),
        }))  # fmt: skip
    finally:
        for keys in _chunks(client.scan_iter(match="recall:bench:*", count=5000), 1000):
            client.unlink(*keys)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


if __name__ == "__main__":
    main()
