"""Fault injection: the next N matching provider calls misbehave in a chosen way.

Kinds and when they act:

- before the call runs (nothing is sent, the record says ``fault:<kind>``):
  ``http_500`` (HTTP 500), ``busy`` (WeChat/WeCom errcode -1, Twilio 503/20503),
  ``rate_limit`` (WeChat/WeCom errcode 45009, Twilio 429/20429; ``retry_after`` adds a
  ``Retry-After`` header), ``stall`` (the request never reaches the provider: the answer, a
  504, is held ``seconds`` so the client gives up first);
- around a call that does run: ``latency`` (wait ``seconds``, then run and answer),
  ``timeout`` (run, record as accepted, answer only after ``seconds`` so the client gives up),
  ``drop`` (run, record as accepted, close the connection without answering);
- at once: ``token_expired`` invalidates every access token issued so far (next calls: 42001).

Every answer held back (``latency``, ``timeout``, ``stall``) is listed, with the caller's
address, at ``GET /_sandbox/held`` while it waits: a chaos harness arms a ``timeout`` on a
send path, sees the call arrive there, and kills the process that made it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import count
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal[
    "latency", "http_500", "busy", "rate_limit", "stall", "drop", "timeout", "token_expired"
]
BEFORE_CALL: frozenset[str] = frozenset({"http_500", "busy", "rate_limit", "stall"})
DEFAULT_SECONDS: dict[str, float] = {"latency": 1.0, "timeout": 30.0, "stall": 30.0}


class FaultSpec(BaseModel):
    """Body of ``POST /_sandbox/faults``. ``count: null`` means until cleared; ``rate`` is the
    chance each matching call is hit (chaos runs use e.g. 0.1 with a ``seed``)."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["wechat", "wecom", "twilio", "*"] = "*"
    path_contains: str = ""
    method: Literal["GET", "POST"] | None = None
    kind: FaultKind
    count: int | None = Field(default=1, ge=1)
    seconds: float | None = Field(default=None, ge=0)
    rate: float = Field(default=1.0, gt=0, le=1)
    retry_after: int | None = Field(default=None, ge=0, description="rate_limit: Retry-After")

    def matches(self, provider: str, path: str, method: str | None = None) -> bool:
        return (
            self.provider in ("*", provider)
            and self.path_contains in path
            and (self.method is None or method is None or self.method == method.upper())
        )


@dataclass(slots=True)
class Fault:
    """A fault that hit one call."""

    kind: str
    seconds: float
    retry_after: int | None = None
    id: int | None = None  # the armed spec's id


@dataclass(slots=True)
class _Armed:
    id: int
    spec: FaultSpec
    remaining: int | None


class FaultBook:
    """Armed faults, consumed first-armed first. Not thread-safe: the state's lock guards it."""

    def __init__(self, seed: int | None = None) -> None:
        self._armed: list[_Armed] = []
        self._ids = count(1)  # ids never repeat, so disarming a spent fault is harmless
        self._random = random.Random(seed)

    def arm(self, spec: FaultSpec) -> int:
        """Arm ``spec``; returns its id (for ``disarm``)."""
        armed = _Armed(next(self._ids), spec, spec.count)
        self._armed.append(armed)
        return armed.id

    def disarm(self, fault_id: int) -> bool:
        """Remove one armed fault; False if it is unknown or already used up."""
        kept = [a for a in self._armed if a.id != fault_id]
        found = len(kept) != len(self._armed)
        self._armed = kept
        return found

    def clear(self) -> None:
        self._armed = []

    def reseed(self, seed: int | None) -> None:
        self._random = random.Random(seed)

    def armed(self) -> list[dict[str, object]]:
        return [{"id": a.id, **a.spec.model_dump(), "remaining": a.remaining}
                for a in self._armed]

    def take(self, provider: str, path: str, method: str | None = None) -> Fault | None:
        """The fault this call suffers, if any, counting it against its spec."""
        if not self._armed:  # the hot path: nothing armed
            return None
        for index, armed in enumerate(self._armed):
            spec = armed.spec
            if not spec.matches(provider, path, method):
                continue
            if spec.rate < 1.0 and self._random.random() >= spec.rate:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
                if armed.remaining == 0:
                    del self._armed[index]
            seconds = (
                spec.seconds if spec.seconds is not None else DEFAULT_SECONDS.get(spec.kind, 0.0)
            )
            return Fault(spec.kind, seconds, spec.retry_after, armed.id)
        return None
