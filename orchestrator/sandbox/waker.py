"""Held-back answers: the waits of latency/timeout/stall faults, interruptible and listed.

A stopping server ends every wait at once (``wake_all``). While an answer waits, ``held()``
lists it with the caller's address, so a harness can tell which process is waiting for it,
and ``release`` lets it go early.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import count


@dataclass(frozen=True, slots=True)
class Held:
    """One answer being held back. ``seq`` is the call's record entry (None while a
    ``latency`` wait runs before the call); ``client`` is the caller's ``host:port``;
    ``fault`` the id of the armed fault that holds it."""

    kind: str
    provider: str
    method: str
    path: str
    client: str | None
    seq: int | None = None
    fault: int | None = None
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class Waker:
    """Interruptible waits for latency/timeout/stall faults, so a stopping server answers at
    once and a harness can see (and end) what is being held."""

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Future[None], tuple[int, Held | None]] = {}
        self._ids = count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._changed = threading.Condition()

    async def sleep(self, seconds: float, held: Held | None = None) -> None:
        if seconds <= 0 or self._stopping:
            return
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, future)
        self._track(future, held)
        try:
            await future
        finally:
            self._untrack(future)
            timer.cancel()

    def waiting(self) -> int:
        """How many answers are being held back right now."""
        with self._changed:
            return len(self._waiting)

    def wait_until_waiting(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` answers are held back (for harnesses timing a stop)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._waiting) >= count, timeout_s)

    def held(self) -> list[dict[str, object]]:
        """Every answer held back now, oldest first, with its ``id`` for ``release``."""
        with self._changed:
            entries = sorted((n, held) for n, held in self._waiting.values() if held)
        return [{"id": n, **asdict(held)} for n, held in entries]

    def release(self, ids: set[int] | None = None) -> int:
        """Answer the held calls with these ids (all when None) now; returns how many."""
        with self._changed:
            chosen = sum(1 for n, _ in self._waiting.values() if ids is None or n in ids)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # Chosen again in the loop: a wait that starts meanwhile is ended too.
            loop.call_soon_threadsafe(self._resolve_matching, ids)
        return chosen

    def wake_all(self) -> None:
        """End every pending wait now and skip future ones (thread-safe; used by stop())."""
        self._stopping = True
        self.release()

    def _resolve_matching(self, ids: set[int] | None) -> None:
        with self._changed:
            chosen = [f for f, (n, _) in self._waiting.items() if ids is None or n in ids]
        for future in chosen:
            _resolve(future)

    def _track(self, future: asyncio.Future[None], held: Held | None) -> None:
        with self._changed:
            self._waiting[future] = (next(self._ids), held)
            self._changed.notify_all()

    def _untrack(self, future: asyncio.Future[None]) -> None:
        with self._changed:
            self._waiting.pop(future, None)
            self._changed.notify_all()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
