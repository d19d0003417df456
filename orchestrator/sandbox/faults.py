"""Fault injection: the next N matching provider calls misbehave in a chosen way.

Kinds and when they act:

- before the call runs (nothing is sent, the record says ``fault:<kind>``):
  ``http_500`` (HTTP 500), ``busy`` (WeChat/WeCom errcode -1, Twilio 503/20503),
  ``rate_limit`` (WeChat/WeCom errcode 45009, Twilio 429/20429);
- around a call that does run: ``latency`` (wait ``seconds``, then run and answer),
  ``timeout`` (run, record as accepted, answer only after ``seconds`` so the client gives up),
  ``drop`` (run, record as accepted, close the connection without answering);
- at once: ``token_expired`` invalidates every access token issued so far (next calls: 42001).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["latency", "http_500", "busy", "rate_limit", "drop", "timeout", "token_expired"]
BEFORE_CALL: frozenset[str] = frozenset({"http_500", "busy", "rate_limit"})
DEFAULT_SECONDS: dict[str, float] = {"latency": 1.0, "timeout": 30.0}


class FaultSpec(BaseModel):
    """Body of ``POST /_sandbox/faults``. ``count: null`` means until cleared; ``rate`` is the
    chance each matching call is hit (chaos runs use e.g. 0.1 with a ``seed``)."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["wechat", "wecom", "twilio", "*"] = "*"
    path_contains: str = ""
    kind: FaultKind
    count: int | None = Field(default=1, ge=1)
    seconds: float | None = Field(default=None, ge=0)
    rate: float = Field(default=1.0, gt=0, le=1)

    def matches(self, provider: str, path: str) -> bool:
        return self.provider in ("*", provider) and self.path_contains in path


@dataclass(slots=True)
class Fault:
    """A fault that hit one call."""

    kind: str
    seconds: float


class FaultBook:
    """Armed faults, consumed first-armed first. Not thread-safe: the state's lock guards it."""

    def __init__(self, seed: int | None = None) -> None:
        self._armed: list[tuple[FaultSpec, list[int | None]]] = []
        self._random = random.Random(seed)

    def arm(self, spec: FaultSpec) -> None:
        self._armed.append((spec, [spec.count]))

    def clear(self) -> None:
        self._armed = []

    def reseed(self, seed: int | None) -> None:
        self._random = random.Random(seed)

    def armed(self) -> list[dict[str, object]]:
        return [{**spec.model_dump(), "remaining": left[0]} for spec, left in self._armed]

    def take(self, provider: str, path: str) -> Fault | None:
        """The fault this call suffers, if any, counting it against its spec."""
        if not self._armed:  # the hot path: nothing armed
            return None
        for index, (spec, left) in enumerate(self._armed):
            if not spec.matches(provider, path):
                continue
            if spec.rate < 1.0 and self._random.random() >= spec.rate:
                continue
            if left[0] is not None:
                left[0] -= 1
                if left[0] == 0:
                    del self._armed[index]
            seconds = (
                spec.seconds if spec.seconds is not None else DEFAULT_SECONDS.get(spec.kind, 0.0)
            )
            return Fault(kind=spec.kind, seconds=seconds)
        return None
