"""Queued callbacks (status callbacks, event pushes) and their delivery over HTTP.

A provider call only queues a small ``Pending`` item; the payload is built, signed and posted
at flush time, so the hot path stays cheap. Deliveries that fail are reported, not retried.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Pending:
    """Something a provider will push later: ``kind`` names it, ``key`` finds its subject."""

    provider: str
    kind: str  # status | masssendjobfinish | templatesendjobfinish | change_external_chat | inbound
    key: str
    data: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Delivery:
    """One built, signed HTTP request to a callback URL."""

    provider: str
    kind: str
    url: str
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, client: httpx.Client) -> dict[str, Any]:
        result: dict[str, Any] = {"provider": self.provider, "kind": self.kind, "url": self.url}
        try:
            response = client.post(self.url, content=self.content, headers=self.headers)
        except httpx.HTTPError as exc:
            result.update(status=None, error=f"{type(exc).__name__}: {exc}")
        else:
            result["status"] = response.status_code
        return result


class Outbox:
    """FIFO of pending pushes. Not thread-safe on its own: the state's lock guards it."""

    def __init__(self) -> None:
        self._queue: deque[Pending] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, item: Pending) -> None:
        self._queue.append(item)

    def drain(self) -> list[Pending]:
        items = list(self._queue)
        self._queue.clear()
        return items

    def clear(self) -> None:
        self._queue.clear()


def deliver(deliveries: list[Delivery], timeout_s: float) -> list[dict[str, Any]]:
    """POST each delivery in order, on a shared connection pool.

    ``trust_env=False``: callbacks go straight to the target, never through an env proxy.
    """
    if not deliveries:
        return []
    client = _client(timeout_s)
    return [delivery.send(client) for delivery in deliveries]


_CLIENTS: dict[float, httpx.Client] = {}
_CLIENTS_LOCK = threading.Lock()


@atexit.register
def _close_clients() -> None:
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()


def _client(timeout_s: float) -> httpx.Client:
    """One long-lived client per timeout: building one (its TLS context) costs ~20 ms."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(timeout_s)
        if client is None:
            client = _CLIENTS[timeout_s] = httpx.Client(timeout=timeout_s, trust_env=False)
        return client


class AutoFlusher:
    """A daemon thread that calls ``flush`` every ``interval_s`` seconds until stopped."""

    def __init__(self, flush: Callable[[], object], interval_s: float) -> None:
        self.interval_s = interval_s
        self._flush = flush
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-auto-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval_s + 30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._flush()
            except Exception:  # a failing flush must not kill the flusher
                log.exception("sandbox auto-flush failed")
