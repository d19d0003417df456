"""Frequency caps in Redis: one Lua script checks every window of a person and reserves in
all of them or none, in one round trip (``caps.lua``).

The arithmetic is pure (``rules.py``, ``windows.py``); this module only encodes it as script
arguments and reads the answers, as dramatiq's rate limiters sit over a backend doing one
atomic thing.

Redis layout, per person (the ``user_id``; the store maps OpenID, UnionID, external_userid
and phone to one user, so one person is one key whatever identity a channel uses)::

    {prefix}:p:{<user_id>}:all            sorted set  "<channel>|<key>"  -> reserved at (ms)
    {prefix}:p:{<user_id>}:ch:<channel>   sorted set  "<key>"            -> reserved at (ms)
    {prefix}:p:{<user_id>}:prov           set         "<channel>|<key>"  loaded provisionally
    {prefix}:epoch                        marker: caps were rebuilt from SQL on *this* server
                                          (JSON, with the server's ``run_id``)
    {prefix}:rebuild-lock                 one rebuild at a time (real-time lease)

Scores are business time (``now`` passed by the caller); Redis TTLs never decide business
time. The only EXPIRE is garbage collection of idle people, ``horizon_s + gc_slack_s`` real
seconds after their last reservation (see ``CapStore``).

**Redis may lose data** (a restart without persistence, a restore of an older snapshot, a
failover, an eviction). Before each chunk of reservations a guard script, on the same
connection, checks that the marker exists *and* names the ``run_id`` of the server
answering (a restored snapshot keeps the marker but not the reservations made since: its
server is a new process with a new ``run_id``), and that ``maxmemory-policy`` is
``noeviction`` (any other policy may evict reservation keys, which carry a TTL, and caps
would silently undercount). Otherwise nothing is granted: ``CapsNeedRebuild`` (rebuild from
SQL first) or ``CapsUnsafe`` (fix the server's configuration). A connection is to one
server process, so the chunk that follows the guard cannot land on another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from itertools import islice
from typing import Any, Literal
from uuid import uuid4
from zoneinfo import ZoneInfo

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.clock import utcnow
from orchestrator.errors import ConfigError, RetryLater, StoreError
from orchestrator.policy.rules import CapRule, applicable_rules, window_bounds
from orchestrator.policy.windows import CALENDAR_LONGEST_S, from_ms, to_ms

RESERVE_LUA = resources.files("orchestrator.policy").joinpath("caps.lua").read_text("utf-8")

# Longest window a rule may span (a calendar month with its DST hour fits) and, on top, how
# long an idle person's reservations survive in real time: more than max_defer (24 h by
# default) plus slack for a lagging caller's clock.
DEFAULT_HORIZON_S = 35 * 86400
DEFAULT_GC_SLACK_S = 7 * 86400
PIPELINE_DEPTH = 1000

_FINISH_REBUILD_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local marker = cjson.decode(ARGV[2])
marker['run_id'] = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
redis.call('SET', KEYS[2], cjson.encode(marker))
redis.call('DEL', KEYS[1])
return 1
"""
# Answers 1 (reserve), -1 (no marker), -3 (the marker was written on another server) or
# {-2, policy} (the server may evict keys).
_GUARD_LUA = """
local policy = string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w%-]+)')
if policy ~= 'noeviction' then return {-2, policy} end
local raw = redis.call('GET', KEYS[1])
if not raw then return -1 end
local ok, marker = pcall(cjson.decode, raw)
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
if not ok or type(marker) ~= 'table' or marker['run_id'] ~= run_id then return -3 end
return 1
"""
_RENEW_LOCK_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CapsNeedRebuild(StoreError):
    """Redis holds no caps of its own (restarted empty, restored, failed over): rebuild them
    from SQL before reserving."""


class CapsUnsafe(StoreError):
    """Redis is configured to evict keys: reservations could vanish, so none are granted."""


class CapsRebuildInterrupted(StoreError):
    """Redis lost the rebuild lock mid-rebuild (it restarted, or the lease ran out)."""


@dataclass(frozen=True, slots=True)
class CapDecision:
    """``ok``: reserved (or ``already_held`` by an earlier attempt with the same key).

    Refused: ``cap`` names the first rule that refused; ``retry_at`` is when every refusing
    window frees a slot if nothing else reserves meanwhile (``None``: never, a cap of 0).
    """

    ok: bool
    cap: str | None = None
    retry_at: datetime | None = None
    already_held: bool = False


@dataclass(frozen=True, slots=True)
class CapRequest:
    """One touch to reserve. ``rules`` overrides the batch's ``rules_by_channel`` (e.g. a
    journey that tightens the policy)."""

    person: str
    channel: str
    key: str
    rules: tuple[CapRule, ...] | None = None

    def __post_init__(self) -> None:
        if self.rules is not None and not isinstance(self.rules, tuple):
            object.__setattr__(self, "rules", tuple(self.rules))  # hashable: plans are cached


@dataclass(frozen=True, slots=True)
class HeldReservation:
    """A reservation that SQL says is held: the touch is sending, unknown, sent or delivered.
    ``provisional``: the touch was still being gated, its check may not have passed; it
    counts against the person's other touches and is checked again if it asks."""

    person: str
    channel: str
    key: str
    at: datetime
    provisional: bool = False


def touch_key(enrollment_id: int, step_id: str) -> str:
    """The touch idempotency key used as cap member (the same as ``channels.base.Message.key``)."""
    return f"{enrollment_id}:{step_id}"


_RESERVED = CapDecision(ok=True)
_ALREADY_HELD = CapDecision(ok=True, already_held=True)


class CapStore:
    """Atomic check-and-reserve of frequency caps for people, on one Redis (not a cluster).

    ``horizon_s`` is the longest window any rule may span (a longer rule raises
    ``ConfigError``). Reservations older than ``horizon_s + gc_slack_s`` of business time are
    trimmed on the next grant, and a person's keys EXPIRE that many *real* seconds after their
    last grant. That is safe because business time never runs slower than real time (the
    system clock is real time; ``recall simulate`` only moves its virtual clock forward,
    faster): by the time the EXPIRE fires, every reservation in those keys has left every
    window. Should keys vanish anyway (a paused virtual clock, Redis eviction), ``rebuild``
    restores them from SQL.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "recall:cap",
        horizon_s: int = DEFAULT_HORIZON_S,
        gc_slack_s: int = DEFAULT_GC_SLACK_S,
        rebuild_lease_s: int = 600,
    ) -> None:
        if horizon_s < CALENDAR_LONGEST_S["month"]:
            raise ConfigError(
                f"CapStore horizon_s={horizon_s} is shorter than a calendar month "
                f"({CALENDAR_LONGEST_S['month']} s); give at least that"
            )
        self._redis = redis
        self.prefix = prefix
        self.epoch_key = f"{prefix}:epoch"
        self._lock_key = f"{prefix}:rebuild-lock"
        self.horizon_s = horizon_s
        self.gc_s = horizon_s + gc_slack_s
        self._lease_ms = rebuild_lease_s * 1000
        self.reserve_sha = redis.register_script(RESERVE_LUA).sha
        # EVAL, not EVALSHA: it opens every chunk, so it must run on a restarted server too.
        self._guard_command = _command("EVAL", _GUARD_LUA, 1, self.epoch_key)
        self._finish_rebuild = redis.register_script(_FINISH_REBUILD_LUA)
        self._renew_lock = redis.register_script(_RENEW_LOCK_LUA)
        self._unlock = redis.register_script(_UNLOCK_LUA)

    # ------------------------------------------------------------------ keys

    def _all_key(self, person: str) -> str:
        return f"{self.prefix}:p:{{{person}}}:all"

    def _channel_key(self, person: str, channel: str) -> str:
        return f"{self.prefix}:p:{{{person}}}:ch:{channel}"

    def _provisional_key(self, person: str) -> str:
        return f"{self.prefix}:p:{{{person}}}:prov"

    # ------------------------------------------------------------------ health

    def check(self) -> Literal["ok", "rebuild"]:
        """Whether reservations may be granted now: ``ok``, or ``rebuild`` (this server holds
        no caps of its own). Raises ``CapsUnsafe`` when the server may evict keys."""
        reply = self._redis.eval(_GUARD_LUA, 1, self.epoch_key)
        try:
            self._judge(reply)
        except CapsNeedRebuild:
            return "rebuild"
        return "ok"

    def rebuilding(self) -> bool:
        """Whether a rebuild holds its lock right now (another need not be started)."""
        return bool(self._redis.exists(self._lock_key))

    def _judge(self, reply: Any) -> None:
        """Raise what a guard reply forbids (see ``_GUARD_LUA``)."""
        if reply == 1:
            return
        if isinstance(reply, Exception):
            raise reply
        if reply == -1:
            raise self._missing()
        if reply == -3:
            raise CapsNeedRebuild(
                f"caps in Redis were rebuilt on another server ({self.epoch_key} names another "
                "run_id: Redis restarted from a snapshot, was restored or failed over, and "
                "reservations made since may be gone); rebuild them from SQL first: "
                "`recall caps rebuild --reset`"
            )
        policy = _text(reply[1]) if isinstance(reply, list) and len(reply) > 1 else "?"
        raise CapsUnsafe(
            f"Redis maxmemory-policy is {policy!r}: it may evict cap reservations (their keys "
            "carry a TTL) and caps would be undercounted, so none are granted; set "
            "`maxmemory-policy noeviction` (redis.conf, or CONFIG SET) on the caps' Redis"
        )

    def _missing(self) -> CapsNeedRebuild:
        return CapsNeedRebuild(
            f"caps in Redis are empty ({self.epoch_key} is missing: Redis restarted or was "
            "flushed); rebuild them from SQL first: `recall caps rebuild` or "
            "orchestrator.policy.rebuild.rebuild_from_store(engine, cap_store)"
        )

    # ------------------------------------------------------------------ reserve

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
        """Check every cap that applies to ``channel`` and reserve ``key`` in all or none.

        ``rules`` may be the whole policy: only global rules, the channel's own and the
        channel's platform quota count. Raises ``CapsNeedRebuild`` on an empty Redis.
        """
        request = CapRequest(person, channel, key, tuple(rules))
        return self.reserve_many([request], now=now, rules_by_channel={}, tz=tz)[0]

    def reserve_many(
        self,
        requests: Sequence[CapRequest],
        *,
        now: datetime,
        rules_by_channel: Mapping[str, Sequence[CapRule]],
        tz: ZoneInfo,
    ) -> list[CapDecision]:
        """``reserve`` for a batch, pipelined ``PIPELINE_DEPTH`` deep; decisions in order.

        Requests are granted in the order given: sort by journey priority first so that a
        scarce slot goes to the most urgent touch. A request's rules are its own ``rules`` or
        ``rules_by_channel[channel]`` (filtered to those that apply to the channel). Safe to
        repeat after any failure: an already-held key answers ``already_held``.
        """
        plans = _Plans(self, now, tz, rules_by_channel)
        decisions: list[CapDecision] = []
        for chunk in _batched(requests, PIPELINE_DEPTH):
            decisions.extend(self._reserve_chunk(chunk, plans))
        return decisions

    def _reserve_chunk(self, chunk: Sequence[CapRequest], plans: _Plans) -> list[CapDecision]:
        replies = self._run_reserve(chunk, plans)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # script cache empty (a new server: the guard passed, so it was rebuilt)
            self._redis.script_load(RESERVE_LUA)
            retried = self._run_reserve([chunk[i] for i in missing], plans)
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return [
            self._decision(reply, plans.plan(request).names)
            for request, reply in zip(chunk, replies, strict=True)
        ]

    def _run_reserve(self, chunk: Sequence[CapRequest], plans: _Plans) -> list[Any]:
        # The commands are packed here rather than by redis-py's Pipeline: all but four
        # arguments are the same for the whole batch and are encoded once per rule set, which
        # is most of the client's work at tens of thousands of checks a second.
        parts: list[bytes] = []
        for r in chunk:
            plan = plans.plan(r)
            parts += (
                plan.head,
                _bulk(self._all_key(r.person)),
                _bulk(self._channel_key(r.person, r.channel)),
                _bulk(self._provisional_key(r.person)),
                _bulk(r.key),
                _bulk(f"{r.channel}|{r.key}"),
                plan.tail,
            )
        return _exchange(self._redis, b"".join(parts), len(chunk),
                         guard=self._guard_command, judge=self._judge)

    def _decision(self, reply: Any, names: Sequence[str]) -> CapDecision:
        if reply == 1:
            return _RESERVED
        if reply == 2:
            return _ALREADY_HELD
        if reply == -1:  # the marker vanished mid-chunk (a flush)
            raise self._missing()
        if isinstance(reply, Exception):
            raise reply
        refused, free_ms = int(reply[0]), int(reply[1])
        return CapDecision(False, names[refused - 1], from_ms(free_ms) if free_ms >= 0 else None)

    # ------------------------------------------------------------------ release, read

    def release(self, *, person: str, channel: str, key: str) -> None:
        """Free the slot of a touch that was definitely rejected (idempotent)."""
        self.release_many([CapRequest(person, channel, key)])

    def release_many(self, requests: Iterable[CapRequest]) -> None:
        """``release`` for a batch, atomically in one round trip."""
        pipe = self._redis.pipeline(transaction=True)
        for r in requests:
            pipe.zrem(self._all_key(r.person), f"{r.channel}|{r.key}")
            pipe.zrem(self._channel_key(r.person, r.channel), r.key)
            pipe.srem(self._provisional_key(r.person), f"{r.channel}|{r.key}")
        pipe.execute()

    def forget(self, person: str) -> int:
        """Delete every reservation key of ``person`` (``recall forget``): the keys name the
        user id. Returns how many keys went."""
        channels = {h.channel for h in self.held(person)}
        keys = [self._all_key(person), *(self._channel_key(person, c) for c in sorted(channels))]
        return int(self._redis.delete(*keys))

    def held(self, person: str) -> list[HeldReservation]:
        """The reservations Redis holds for ``person``, oldest first."""
        rows: list[tuple[bytes | str, float]] = self._redis.zrange(  # type: ignore[assignment]
            self._all_key(person), 0, -1, withscores=True
        )
        held = []
        for member, score in rows:
            text = member.decode() if isinstance(member, bytes) else member
            channel, key = text.split("|", 1)
            held.append(HeldReservation(person, channel, key, from_ms(int(score))))
        return held

    def epoch(self) -> dict[str, Any] | None:
        """The rebuild marker (``epoch``, ``rebuilt_at``, ``reservations``, ``run_id`` of the
        server it was written on), or ``None`` when Redis holds no caps."""
        raw = self._redis.get(self.epoch_key)
        return json.loads(raw) if raw is not None else None

    # ------------------------------------------------------------------ rebuild

    def rebuild(
        self,
        held: Iterable[HeldReservation],
        *,
        reset: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Load held reservations, then set the epoch marker (naming this server's ``run_id``)
        so that reserving resumes.

        Until the marker is set every ``reserve`` refuses with ``CapsNeedRebuild``, so no
        reservation is granted on a partial load. One rebuild at a time (a real-time lock);
        another in progress raises ``RetryLater``. Without ``reset`` the load is added to what
        Redis holds (``ZADD NX``); ``reset`` first removes the marker and every reservation.
        Returns the number of reservations loaded.
        """
        token = uuid4().hex
        if not self._redis.set(self._lock_key, token, nx=True, px=self._lease_ms):
            raise RetryLater(5.0, f"a caps rebuild is in progress elsewhere ({self._lock_key})")
        try:
            if reset:
                self._redis.delete(self.epoch_key)
                self._delete_reservations()
            count = self._load(held, token, progress)
            marker = {"epoch": token, "rebuilt_at": utcnow().isoformat(), "reservations": count}
            keys = [self._lock_key, self.epoch_key]
            if not self._finish_rebuild(keys, [token, json.dumps(marker)]):
                raise self._interrupted()
            return count
        finally:
            self._unlock([self._lock_key], [token])

    def _load(
        self, held: Iterable[HeldReservation], token: str, progress: Callable[[int], None] | None
    ) -> int:
        count = 0
        for chunk in _batched(held, 2000):
            pipe = self._redis.pipeline(transaction=False)
            for h in chunk:
                score = to_ms(h.at)
                all_key = self._all_key(h.person)
                channel_key = self._channel_key(h.person, h.channel)
                pipe.zadd(all_key, {f"{h.channel}|{h.key}": score}, nx=True)
                pipe.zadd(channel_key, {h.key: score}, nx=True)
                pipe.expire(all_key, self.gc_s)
                pipe.expire(channel_key, self.gc_s)
                if h.provisional:
                    provisional_key = self._provisional_key(h.person)
                    pipe.sadd(provisional_key, f"{h.channel}|{h.key}")
                    pipe.expire(provisional_key, self.gc_s)
            pipe.execute()
            count += len(chunk)
            if not self._renew_lock([self._lock_key], [token, self._lease_ms]):
                raise self._interrupted()
            if progress is not None:
                progress(len(chunk))
        return count

    def _interrupted(self) -> CapsRebuildInterrupted:
        return CapsRebuildInterrupted(
            f"caps rebuild lost its lock {self._lock_key} (Redis restarted, or the rebuild ran "
            "past its lease); nothing was marked rebuilt: run the rebuild again"
        )

    def _delete_reservations(self) -> None:
        pattern = _glob_escape(f"{self.prefix}:p:") + "*"
        for keys in _batched(self._redis.scan_iter(match=pattern, count=1000), 500):
            self._redis.unlink(*keys)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One rule set's EVALSHA at one ``now``, RESP-encoded around the per-touch arguments."""

    head: bytes  # *N, EVALSHA, sha, numkeys, KEYS[1]
    tail: bytes  # ARGV[3:]: now, gc, trim, rules
    names: list[str]


class _Plans:
    """The script arguments of each rule set at one ``now``, encoded once per batch."""

    def __init__(
        self,
        store: CapStore,
        now: datetime,
        tz: ZoneInfo,
        rules_by_channel: Mapping[str, Sequence[CapRule]],
    ) -> None:
        self._store, self._now, self._tz = store, now, tz
        self._rules_by_channel = rules_by_channel
        self._cache: dict[tuple[str, tuple[CapRule, ...] | None], _Plan] = {}

    def plan(self, request: CapRequest) -> _Plan:
        cache_key = (request.channel, request.rules)
        plan = self._cache.get(cache_key)
        if plan is None:
            plan = self._cache[cache_key] = self._encode(request.channel, self._rules(request))
        return plan

    def _rules(self, request: CapRequest) -> Sequence[CapRule]:
        if request.rules is not None:
            return request.rules
        try:
            return self._rules_by_channel[request.channel]
        except KeyError:
            raise ConfigError(
                f"no cap rules for channel {request.channel!r} (rules_by_channel has "
                f"{sorted(self._rules_by_channel)}); pass the policy's rules for every channel"
            ) from None

    def _encode(self, channel: str, rules: Sequence[CapRule]) -> _Plan:
        store, now_ms = self._store, to_ms(self._now)
        chosen = applicable_rules(rules, channel)
        argv: list[str | int] = [now_ms, store.gc_s, now_ms - store.gc_s * 1000, len(chosen)]
        for rule in chosen:
            argv += self._rule_args(rule)
        keys_and_sha: list[str | int] = ["EVALSHA", store.reserve_sha, 4, store.epoch_key]
        # + three keys and two arguments of each request, packed per request
        head = b"*%d\r\n" % (len(keys_and_sha) + 5 + len(argv))
        head += b"".join(_bulk(a) for a in keys_and_sha)
        tail = b"".join(_bulk(a) for a in argv)
        return _Plan(head, tail, [rule.name for rule in chosen])

    def _rule_args(self, rule: CapRule) -> list[str | int]:
        if rule.longest_s > self._store.horizon_s:
            raise ConfigError(
                f"cap {rule.name!r} spans {rule.longest_s} s, longer than the cap store's "
                f"horizon_s={self._store.horizon_s}; raise CapStore(horizon_s=...)"
            )
        b = window_bounds(rule, self._now, self._tz)
        scope = 1 if b.scope == "all" else 2
        if b.end_ms is None:
            return [scope, b.max, f"({b.low_ms}", "+inf", "r", b.rolling_ms or 0]
        return [scope, b.max, b.low_ms, f"({b.end_ms}", "c", b.end_ms]


def _command(*args: str | int) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


def _bulk(value: str | int) -> bytes:
    """One RESP bulk string."""
    data = value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _exchange(
    redis: Redis, packed: bytes, count: int, *, guard: bytes, judge: Callable[[Any], None]
) -> list[Any]:
    """Run ``guard`` and let ``judge`` refuse (it raises), then send ``count`` packed commands
    at once on the *same* connection, hence the same server, and read their replies; an error
    reply is returned in its place (the stream stays in step), a broken connection raises."""
    pool = redis.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([guard])  # type: ignore[no-untyped-call]
        try:
            verdict = connection.read_response()
        except ResponseError as exc:
            verdict = exc
        judge(verdict)
        connection.send_packed_command([packed])  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(connection)


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


__all__ = [
    "CapDecision",
    "CapRequest",
    "CapStore",
    "CapsNeedRebuild",
    "CapsRebuildInterrupted",
    "CapsUnsafe",
    "HeldReservation",
    "touch_key",
]
