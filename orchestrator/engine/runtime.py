"""Everything a process needs to run the engine, built once per process (after fork)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis import Redis
from sqlalchemy import Engine

from orchestrator.clock import Clock
from orchestrator.config import Settings, get_settings
from orchestrator.engine.book import JourneyBook

if TYPE_CHECKING:
    from orchestrator.channels.base import Channel
    from orchestrator.policy.caps import CapStore


@dataclass
class Runtime:
    settings: Settings
    db: Engine
    clock: Clock
    book: JourneyBook
    _redis: Redis | None = None
    _channels: dict[str, Channel] = field(default_factory=dict)
    _caps: CapStore | None = None

    @property
    def redis(self) -> Redis:
        """Connected on first use: enrolling or importing needs no Redis."""
        if self._redis is None:
            from orchestrator.store.redis import get_redis

            self._redis = get_redis(self.settings)
        return self._redis

    def channel(self, name: str) -> Channel:
        if name not in self._channels:
            import orchestrator.channels  # noqa: F401  (registers the adapters)
            from orchestrator.channels.base import build_channel

            self._channels[name] = build_channel(name, self.settings, self.redis)
        return self._channels[name]

    def close(self) -> None:
        """Release the adapters' pools and connections."""
        for channel in self._channels.values():
            close = getattr(channel, "close", None)
            if close is not None:
                close()
        self._channels.clear()

    @property
    def caps(self) -> CapStore:
        if self._caps is None:
            from orchestrator.policy.caps import CapStore

            self._caps = CapStore(self.redis)
        return self._caps

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, clock: Clock | None = None,
                      db: Engine | None = None, redis: Redis | None = None) -> Runtime:
        from orchestrator.store.clock import StoredClock
        from orchestrator.store.db import get_engine

        settings = settings or get_settings()
        db = db or get_engine(settings)
        book = JourneyBook(settings.journeys_dir, settings.templates_dir, settings.state_dir,
                           settings.timezone)
        return cls(
            settings=settings,
            db=db,
            clock=clock or StoredClock(db),
            book=book,
            _redis=redis,
        )
