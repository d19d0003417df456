"""Provider access tokens shared by every worker through Redis.

WeChat and WeCom issue one access token per app; fetching a new one invalidates the old
one. So N workers must never each fetch their own: the token lives in Redis, and a refresh
happens under a Redis lock (``redis.lock.Lock``, real-time lease) with a check inside the
lock. A worker whose call was rejected with the token ``T`` asks ``refresh(stale=T)``: if the
cached token is no longer ``T`` somebody already refreshed it and that one is returned;
otherwise this worker fetches. N concurrent rejections of ``T`` produce exactly one fetch.

Token expiry is lease time (real), so a Redis TTL is the right tool here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import LockError

from orchestrator.errors import ChannelRetryable

# Refresh a little before the provider's expiry so no call carries a token that dies in flight.
EXPIRY_MARGIN_S = 300
MIN_TTL_S = 60

TokenFetcher = Callable[[], tuple[str, int]]  # -> (access_token, expires_in seconds)


def token_key(prefix: str, provider: str, app_id: str, *, fingerprint: str = "") -> str:
    """``{prefix}:token:{provider}:{app_id}[:{fingerprint}]``.

    ``fingerprint`` tells apart tokens of the same app id issued by different servers (the
    sandbox vs the real host) or for different secrets (WeCom has one token per app secret).
    """
    key = f"{prefix}:token:{provider}:{app_id}"
    return f"{key}:{fingerprint}" if fingerprint else key


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:12]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class TokenCache:
    """One provider token in Redis: read it, or refresh it exactly once under a lock."""

    redis: Redis
    key: str
    fetch: TokenFetcher
    provider: str = ""
    lock_lease_s: float = 30.0  # longer than a token fetch's own timeout
    lock_wait_s: float = 30.0

    def get(self) -> str:
        """The cached token, fetching the first one if there is none."""
        cached = _text(self.redis.get(self.key))
        return cached if cached else self.refresh(stale=None)

    def refresh(self, *, stale: str | None) -> str:
        """Replace ``stale`` (the token a call was just rejected with; ``None``: none cached).

        Inside the lock the cache is read again: if it already holds another token, a
        concurrent worker refreshed it and that token is returned without a fetch.
        """
        lock = self.redis.lock(
            f"{self.key}:lock", timeout=self.lock_lease_s, blocking_timeout=self.lock_wait_s
        )
        try:
            with lock:
                current = _text(self.redis.get(self.key))
                if current and current != stale:
                    return current
                token, expires_in = self.fetch()
                ttl = max(int(expires_in) - EXPIRY_MARGIN_S, MIN_TTL_S)
                self.redis.set(self.key, token, ex=ttl)
                return token
        except LockError as exc:
            raise ChannelRetryable(
                f"access token refresh for {self.key}: could not hold the Redis lock "
                f"within {self.lock_wait_s:.0f}s ({exc}); another worker may be stuck "
                "fetching: retry later",
                provider=self.provider,
            ) from exc
