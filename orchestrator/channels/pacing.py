"""Client-side pacing in lease (real) time: a token bucket and a jittered back-off.

Both take ``monotonic`` / ``sleep`` / ``rng`` so tests drive them without waiting.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class TokenBucket:
    """At most ``rate_per_s`` acquisitions a second on average, ``burst`` at once.

    Thread-safe. A caller that finds the bucket empty *reserves* the next token (the level
    goes negative) and sleeps outside the lock for exactly its turn, so waiting threads are
    served in arrival order and the lock is held for microseconds.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        burst: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.burst = burst if burst is not None else max(1.0, rate_per_s / 10)
        self._monotonic = monotonic
        self._sleep = sleep
        self._level = self.burst
        self._stamp = monotonic()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; returns how long the caller must wait before using it."""
        with self._lock:
            now = self._monotonic()
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
            self._level -= 1.0
            return 0.0 if self._level >= 0 else -self._level / self.rate_per_s

    def acquire(self) -> float:
        """Block until a token is ours; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait


_SHARED: dict[tuple[str, float], TokenBucket] = {}
_SHARED_LOCK = threading.Lock()


def shared_bucket(name: str, rate_per_s: float) -> TokenBucket:
    """One bucket per (name, rate) in this process, shared by every adapter instance."""
    with _SHARED_LOCK:
        bucket = _SHARED.get((name, rate_per_s))
        if bucket is None:
            bucket = _SHARED[(name, rate_per_s)] = TokenBucket(rate_per_s)
        return bucket


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter, bounded in attempts and in each wait.

    ``attempts`` counts calls, so 3 means the first call and at most two retries. A
    provider's Retry-After longer than ``cap_s`` is not waited for here: the adapter raises
    and lets the engine reschedule (a worker thread should not sleep for minutes).
    """

    attempts: int = 3
    base_s: float = 0.2
    cap_s: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, retry: int, retry_after_s: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based); None = do not retry here."""
        if retry >= self.attempts:
            return None
        if retry_after_s is not None:
            return retry_after_s if retry_after_s <= self.cap_s else None
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (retry - 1)))
