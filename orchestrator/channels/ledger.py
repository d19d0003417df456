"""Which provider calls of a send batch already happened, so a retry never repeats one.

WeChat mass send is idempotent on the provider side (``clientmsgid``); Twilio messages,
WeChat template messages and WeCom ``add_msg_template`` are not. For those the adapter
writes an entry per call into a Redis hash named after the batch:

- ``pending`` just before the call goes out,
- the call's result (JSON) once the provider answered,
- nothing (entry deleted) when the provider definitely refused it, so a retry may send.

When the same batch comes back (a retry after ``ChannelRetryable``, a redelivered Celery
task), recorded results are returned as they are, and a ``pending`` entry means the earlier
attempt's outcome is unknown: it is reconciled, never sent again.

This is a guard, not the source of truth: the engine's touch rows are, and every adapter
that can ask its provider (Twilio's message list, WeCom's task list, WeChat's clientmsgid)
looks up what the ledger does not know. Where the provider has no lookup (WeChat template
messages) the ledger is all there is, so it says whether it can be trusted: each hash is
stamped with the ``run_id`` of the Redis server that holds it, and ``intact`` is false
when the server changed since (a restart, a restore, a failover) or the hash is gone. The
hash expires after ``ttl_s`` of real time (retries of one batch happen within a day).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis

PENDING = "pending"
DEFAULT_TTL_S = 14 * 86_400
SERVER = "~server"  # field stamped with the holding server's run_id
RUN_ID_CACHE_S = 5.0


@dataclass(frozen=True)
class Entry:
    pending: bool
    data: dict[str, Any]


class SendLedger:
    def __init__(
        self, redis: Redis, *, prefix: str, channel: str, ttl_s: int = DEFAULT_TTL_S
    ) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:ledger:{channel}"
        self.ttl_s = ttl_s
        self._run_id: str | None = None
        self._run_id_at = 0.0

    def key(self, batch_id: str) -> str:
        return f"{self.prefix}:{batch_id}"

    def load(self, batch_id: str) -> dict[str, Entry]:
        raw: Mapping[Any, Any] = self.redis.hgetall(self.key(batch_id))
        return {_text(k): _entry(_text(v)) for k, v in raw.items() if _text(k) != SERVER}

    def intact(self, batch_id: str) -> bool:
        """Whether this batch's hash is still the one its calls were written to: it exists
        and the server holding it is the one that stamped it."""
        stamp = self.redis.hget(self.key(batch_id), SERVER)
        return stamp is not None and _text(stamp) == server_id(self.redis)

    def mark_pending(self, batch_id: str, fields: Iterable[str]) -> None:
        fields = list(fields)
        if fields:
            key = self.key(batch_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hsetnx(key, SERVER, self._server())
            pipe.hset(key, mapping=dict.fromkeys(fields, PENDING))
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def _server(self) -> str:
        # Cached a few seconds: a stale id (the server restarted meanwhile) only makes a new
        # hash look not intact, which is the safe side.
        now = time.monotonic()
        if self._run_id is None or now - self._run_id_at > RUN_ID_CACHE_S:
            self._run_id, self._run_id_at = server_id(self.redis), now
        return self._run_id

    def record(self, batch_id: str, results: Mapping[str, Mapping[str, Any]]) -> None:
        if results:
            key = self.key(batch_id)
            mapping: dict[Any, Any] = {
                f: json.dumps(dict(v), separators=(",", ":")) for f, v in results.items()
            }
            pipe = self.redis.pipeline(transaction=False)
            pipe.hsetnx(key, SERVER, self._server())
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def forget(self, batch_id: str, fields: Iterable[str]) -> None:
        """The provider definitely did not act on these calls: a retry may make them."""
        fields = list(fields)
        if fields:
            self.redis.hdel(self.key(batch_id), *fields)


# Remove ids from one JSON-object field of a ledger hash, atomically (a worker may be writing
# the same hash).
_DROP_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local map = cjson.decode(raw)
local dropped = 0
for i = 2, #ARGV do
  if map[ARGV[i]] ~= nil then map[ARGV[i]] = nil; dropped = dropped + 1 end
end
if dropped > 0 then
  if next(map) == nil then redis.call('HSET', KEYS[1], ARGV[1], '{}')
  else redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(map)) end
end
return dropped
"""


def drop_excluded(redis: Redis, batch_ids: Iterable[str], ids: Iterable[str], *,
                  prefix: str = "recall", channel: str = "wechat_article",
                  field: str = "excluded") -> int:
    """Remove ``ids`` (OpenIDs) from the ``excluded`` map of each batch's ledger: that map
    names recipients by OpenID, which ``recall forget`` must not leave behind."""
    script = redis.register_script(_DROP_LUA)
    args = [field, *ids]
    dropped = 0
    for batch_id in batch_ids:
        dropped += int(script(keys=[f"{prefix}:ledger:{channel}:{batch_id}"], args=args))
    return dropped


def server_id(redis: Redis) -> str:
    """The ``run_id`` of the Redis server process: a new one after every restart."""
    return str(redis.info("server")["run_id"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(value: str) -> Entry:
    if value == PENDING:
        return Entry(pending=True, data={})
    return Entry(pending=False, data=json.loads(value))
