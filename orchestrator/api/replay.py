"""Replay protection for WeChat and WeCom callbacks.

Their signature covers the token, ``timestamp`` and ``nonce`` (and, in safe mode, the
encrypted body), so a request copied from an access log would verify forever. A callback
is therefore accepted only when, beyond its signature:

- its ``timestamp`` is within ``WINDOW_S`` (300 s) of real time, either way; and
- its ``nonce`` has not been accepted before from that provider within the window (a Redis
  key per nonce, ``SET NX``, kept ``NONCE_TTL_S`` real seconds: long enough to outlive every
  timestamp the window still accepts).

Both are real time, not business time: the provider stamps the request with its own wall
clock. A nonce is claimed only after the signature verified (an unsigned request cannot
fill the store) and is given back when handling the push fails, so the provider's retry
of the same push is not refused as a replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from redis import Redis

from orchestrator.errors import SignatureError

WINDOW_S = 300
NONCE_TTL_S = 2 * WINDOW_S + 60
MAX_NONCE_LEN = 64
PREFIX = "recall:callback-nonce"


def check_timestamp(timestamp: str, *, now: datetime, window_s: int = WINDOW_S) -> int:
    """The callback's ``timestamp`` (unix seconds) when within ``window_s`` of ``now``."""
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise SignatureError("callback timestamp must be unix seconds", field="timestamp")
    age = now.timestamp() - int(text)
    if abs(age) > window_s:
        raise SignatureError(
            f"callback timestamp is {age:+.0f} s from now, outside the {window_s} s window: "
            "a replay, or the sender's clock is wrong",
            field="timestamp",
        )
    return int(text)


class NonceStore:
    """Nonces seen per provider, in Redis (one key each, expiring in real time)."""

    def __init__(self, redis: Redis, *, prefix: str = PREFIX, ttl_s: int = NONCE_TTL_S) -> None:
        self._redis, self._prefix, self._ttl_s = redis, prefix, ttl_s

    def _key(self, provider: str, nonce: str) -> str:
        return f"{self._prefix}:{provider}:{nonce}"

    def claim(self, provider: str, nonce: str) -> bool:
        """True the first time ``nonce`` is seen within the TTL; False for a repeat."""
        return bool(self._redis.set(self._key(provider, nonce), b"1", nx=True, ex=self._ttl_s))

    def release(self, provider: str, nonce: str) -> None:
        self._redis.delete(self._key(provider, nonce))


def check_nonce(nonce: str) -> str:
    if not nonce or len(nonce) > MAX_NONCE_LEN or not nonce.isascii() or not nonce.isprintable():
        raise SignatureError(
            f"callback nonce must be 1 to {MAX_NONCE_LEN} printable ASCII characters",
            field="nonce",
        )
    return nonce


@contextmanager
def fresh_callback(
    store: NonceStore, provider: str, *, timestamp: str, nonce: str, now: datetime
) -> Iterator[None]:
    """Refuse a stale or replayed callback; run the body with the nonce claimed.

    Call it after the signature verified. If the body raises, the nonce is released so
    that the provider's retry of the same push is accepted.
    """
    check_timestamp(timestamp, now=now)
    check_nonce(nonce)
    if not store.claim(provider, nonce):
        raise SignatureError(
            f"callback nonce {nonce!r} was already used within {WINDOW_S} s: a replayed "
            "request is refused",
            field="nonce",
        )
    try:
        yield
    except BaseException:
        store.release(provider, nonce)
        raise
