"""Access tokens issued per app (WeChat appid / WeCom corpid+secret) and checked on every call.

Token lifetimes are lease time, so they run on a monotonic clock (injectable for tests), not
on the business clock that a simulation moves by days.

- WeChat issues a new token on every fetch; the previous one stays valid for five more
  minutes (WeChat's documented overlap), then answers 40001 "not latest".
- WeCom returns the same token while it is valid (WeCom's documented behaviour).
- ``expire_all`` (the ``token_expired`` fault) makes every issued token answer 42001.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.sandbox.calls import ProviderError

OVERLAP_S = 300.0  # how long WeChat keeps the previous token valid after a refresh


@dataclass(slots=True)
class IssuedToken:
    provider: str
    app: str
    expires_at: float
    superseded: bool = False  # expired because a newer token replaced it (40001, not 42001)


class TokenBook:
    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._tokens: dict[str, IssuedToken] = {}
        self._latest: dict[tuple[str, str], str] = {}

    def issue(self, provider: str, app: str, ttl_s: float, *, reuse: bool) -> tuple[str, int]:
        """A token for ``app`` and its remaining lifetime in seconds."""
        now = self._monotonic()
        current = self._latest.get((provider, app))
        if current is not None:
            issued = self._tokens[current]
            if reuse and issued.expires_at > now:
                return current, int(issued.expires_at - now)
            if issued.expires_at > now + OVERLAP_S:
                issued.expires_at = now + OVERLAP_S
                issued.superseded = True
        self._forget_long_expired(now)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = IssuedToken(provider, app, now + ttl_s)
        self._latest[(provider, app)] = token
        return token, int(ttl_s)

    def check(self, provider: str, token: str | None, *, invalid_code: int) -> str:
        """The app the token belongs to, or the provider error a real server would answer."""
        if not token:
            raise ProviderError(41001, "access_token missing")
        issued = self._tokens.get(token)
        if issued is None or issued.provider != provider:
            raise ProviderError(
                invalid_code, "invalid credential, access_token is invalid or not latest"
            )
        if issued.expires_at <= self._monotonic():
            if issued.superseded:
                raise ProviderError(
                    invalid_code, "invalid credential, access_token is invalid or not latest"
                )
            raise ProviderError(42001, "access_token expired")
        return issued.app

    def expire_all(self, provider: str = "*") -> int:
        """Expire every token of ``provider`` ('*' = all) now; returns how many were live."""
        now = self._monotonic()
        hit = 0
        for issued in self._tokens.values():
            if provider in ("*", issued.provider) and issued.expires_at > now:
                issued.expires_at = now
                issued.superseded = False
                hit += 1
        return hit

    def _forget_long_expired(self, now: float) -> None:
        # Keep expired tokens for a day so late callers still get 42001 rather than 40001.
        if len(self._tokens) < 1024:
            return
        stale = [t for t, issued in self._tokens.items() if issued.expires_at < now - 86_400]
        for token in stale:
            del self._tokens[token]
