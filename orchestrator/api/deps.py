"""What every route needs, built once per app: settings, database, business clock, metrics,
the journeys (for enrollment at ingest) and the API-key check.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy import Engine

from orchestrator.api.metrics import ApiMetrics
from orchestrator.clock import Clock, SystemClock
from orchestrator.config import Settings, is_placeholder
from orchestrator.errors import JourneyError, NotConfigured

if TYPE_CHECKING:
    from orchestrator.engine.book import JourneyBook
    from orchestrator.engine.ingest import IngestResult

log = logging.getLogger(__name__)
RELOAD_CHECK_S = 2.0  # real time between two looks at the journey files


def _fingerprint(*roots: Path) -> str:
    """Changes whenever a file under ``roots`` is added, removed or modified."""
    digest = hashlib.sha256()
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
    return digest.hexdigest()


class JourneyCache:
    """The current journeys, reloaded when their files change.

    A broken edit does not stop ingestion: the last good journeys stay in use (and the
    problem is logged); only a first load that fails raises.
    """

    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self._settings, self._engine, self._clock = settings, engine, clock
        self._book: JourneyBook | None = None
        self._fingerprint = ""
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def book(self) -> JourneyBook | None:
        if not self._settings.journeys_dir.is_dir():
            return None
        with self._lock:
            if time.monotonic() - self._checked_at >= RELOAD_CHECK_S:
                self._refresh()
            return self._book

    def _refresh(self) -> None:
        from orchestrator.engine.book import JourneyBook

        self._checked_at = time.monotonic()
        s = self._settings
        fingerprint = _fingerprint(s.journeys_dir, s.templates_dir)
        if fingerprint == self._fingerprint:
            return
        try:
            book = JourneyBook(s.journeys_dir, s.templates_dir, s.state_dir, s.timezone)
        except JourneyError as exc:
            if self._book is None:
                raise
            log.error("journeys changed but do not load; still using the previous ones:\n%s", exc)
            self._fingerprint = fingerprint
            return
        # Store each version's files, so the engine can run the version an enrollment holds.
        book.sync(self._engine, now=self._clock.now())
        self._book, self._fingerprint = book, fingerprint


@dataclass
class Services:
    """``clock`` is business time (virtual under ``recall simulate``); ``wall_clock`` is real
    time, for what the outside world timestamps (callback freshness, landing-token age)."""

    settings: Settings
    engine: Engine
    clock: Clock
    metrics: ApiMetrics
    wall_clock: Clock = field(default_factory=SystemClock)
    allow_sandbox_secrets: bool = False
    journeys: JourneyCache = field(init=False)

    def __post_init__(self) -> None:
        self.journeys = JourneyCache(self.settings, self.engine, self.clock)

    @property
    def local_only(self) -> bool:
        """Nobody but this machine can reach this API: the embedded stack on loopback, the
        same condition under which the sandbox placeholders are accepted."""
        return self.allow_sandbox_secrets

    def inbound_secret(self, name: str) -> str:
        """The secret that authenticates a public endpoint (``generic_webhook_secret``…).

        A sandbox placeholder is refused unless this API is the embedded stack on loopback
        (``orchestrator.api.exposure``): the placeholders are public, so they prove nothing.
        """
        value: SecretStr = getattr(self.settings, name)
        secret = value.get_secret_value()
        if not secret:
            raise NotConfigured(f"RECALL_{name.upper()} is empty; set the shared secret")
        if is_placeholder(secret) and not self.allow_sandbox_secrets:
            raise NotConfigured(
                f"RECALL_{name.upper()} is the public sandbox placeholder, which this API "
                "accepts only as the embedded stack on loopback; set the real secret (the "
                "sender can retry after that)"
            )
        return secret

    def ingest(self, events: Sequence[Mapping[str, Any]]) -> IngestResult:
        """The one ingest path (enrolls ``entry.event`` journeys in the same call)."""
        from orchestrator.engine.ingest import ingest_events

        return ingest_events(
            self.engine, events, now=self.clock.now(), journeys=self.journeys.book()
        )


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(
    auto_error=False,
    description="One of the keys in RECALL_API_KEYS (comma-separated), as a Bearer token.",
)


def require_api_key(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <one of RECALL_API_KEYS>``.

    Every configured key is compared in constant time, so timing tells nothing about which
    key is close. With no key configured, every request is refused (and told why).
    """
    from orchestrator.api.session import matching_key

    presented = credentials.credentials if credentials else ""
    keys = services.settings.api_key_list
    if not matching_key(presented, keys):
        raise HTTPException(401, UNAUTHORIZED if keys else NO_KEYS, {"WWW-Authenticate": "Bearer"})


# What a 401 says: what to send, or, on an API without keys, what its operator must set. It
# never says whether a presented key was close.
UNAUTHORIZED = ("authentication required: send `Authorization: Bearer <key>` with one of the "
                "keys in the server's RECALL_API_KEYS")
NO_KEYS = ("authentication required, and this server has no keys (RECALL_API_KEYS is empty), "
           "so it refuses every such request: set RECALL_API_KEYS=<key>[,<key>...] where it "
           "runs, restart it, and send `Authorization: Bearer <key>`")


ApiKey = Depends(require_api_key)


