"""Per-client rate limit of the public link routes (``/s/{code}``, ``/l/{journey_id}``).

A token bucket per client address: ``per_min`` requests a minute, with bursts up to
``per_min``. It lives in the API process (no Redis round trip or database write per
request, so short links keep working while Redis is down); M API processes allow M times
the rate in total. Only the most recently seen ``max_clients`` addresses are remembered,
so a flood from many addresses cannot grow the table without bound.

The client is ``request.client.host``: behind a reverse proxy, let uvicorn take the address
from ``X-Forwarded-For`` (``recall api`` does, for proxies listed in ``FORWARDED_ALLOW_IPS``).
Campus networks put many students behind one address: keep the limit generous.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from fastapi import HTTPException, Request


class RateLimiter:
    def __init__(self, per_min: int, *, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_min = per_min
        self._rate = per_min / 60.0
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """0.0 when ``client`` may go on; else the seconds until it may try again."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.per_min), now))
            tokens = min(float(self.per_min), tokens + (now - at) * self._rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate
            self._buckets[client] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        return wait


def limit_links(request: Request) -> None:
    """FastAPI dependency: 429 with ``Retry-After`` when the client goes too fast."""
    limiter: RateLimiter = request.app.state.link_limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.acquire(client)
    if wait > 0:
        raise HTTPException(
            429, f"too many requests from this address (limit {limiter.per_min} a minute); "
            "try again shortly", {"Retry-After": str(math.ceil(wait))},
        )
