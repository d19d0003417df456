"""The real stack in one box, for ``recall run``, ``recall simulate`` and ``recall demo``:
Redis (server or embedded), the provider sandbox (unless real base URLs are configured),
the HTTP API, and Celery worker processes. Everything is stopped on exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from orchestrator.config import Settings
from orchestrator.engine.lifecycle import (
    STOP_TIMEOUT_S,
    Say,
    StateLock,
    Stopped,
    StopSignals,
    say_on_stderr,
    spawn,
    stop_processes,
)
from orchestrator.errors import ConfigError

PROVIDER_BASES = ("wechat_api_base", "wecom_api_base", "twilio_api_base")
DEFAULT_PUBLIC_BASE_URL = Settings.model_fields["public_base_url"].default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float = 30.0) -> None:
    """Until ``port`` accepts connections (bounded), for servers started in the background."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise ConfigError(f"nothing answered on 127.0.0.1:{port} within {timeout_s:.0f}s")


@dataclass
class ApiServer:
    """The FastAPI app under uvicorn in a daemon thread."""

    settings: Settings
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        import uvicorn

        from orchestrator.api.app import create_app
        from orchestrator.api.exposure import check_can_serve, sandbox_secrets_allowed

        check_can_serve(self.settings, "127.0.0.1")
        app = create_app(self.settings,
                         allow_sandbox_secrets=sandbox_secrets_allowed(self.settings, "127.0.0.1"))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="recall-api")
        self.thread.start()
        wait_for_port(self.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():  # a client holding a request open: stop waiting for it
            self.server.force_exit = True
            self.thread.join(timeout_s)


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as its ``RECALL_*`` variable, so a child process sees the same config."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, Path):
            value = value.resolve()
        env[f"RECALL_{name.upper()}"] = str(value)
    return env


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a worker process needs to see the same deployment."""
    from orchestrator.store.redis import redis_url

    env = {**os.environ, **settings_env(settings)}
    env["RECALL_DATABASE_URL"] = settings.effective_database_url
    env["RECALL_REDIS_URL"] = redis_url(settings)
    return env


def start_worker(settings: Settings, *, concurrency: int = 1, pool: str = "prefork",
                 name: str = "w1") -> subprocess.Popen[bytes]:
    """A real Celery worker process (``celery -A workers.main worker``)."""
    return spawn(
        [sys.executable, "-m", "celery", "-A", "workers.main", "worker", f"--pool={pool}",
         f"--concurrency={concurrency}", "--loglevel=WARNING", f"--hostname={name}@%h",
         "-Q", f"{settings.celery_queue},{settings.celery_queue}.tick",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=worker_env(settings), log=Path(settings.state_dir) / f"worker-{name}.log")


def start_beat(settings: Settings) -> subprocess.Popen[bytes]:
    """The Celery beat (``celery -A workers.main beat``): it ticks the dispatcher."""
    state_dir = Path(settings.state_dir)
    return spawn(
        [sys.executable, "-m", "celery", "-A", "workers.main", "beat", "--loglevel=WARNING",
         "-s", str(state_dir / "beat-schedule")],
        env=worker_env(settings), log=state_dir / "beat.log")


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    stop_processes([proc], timeout_s)


class Stack:
    """Start what the settings do not point at, and stop it again.

    The stack owns its state directory (``StateLock``) while it runs. SIGINT and SIGTERM end
    it as the end of the ``with`` block does (``Stopped`` is raised in the main thread), and
    the stop is said through ``say``: beat and workers first, then the API, the sandbox and
    the embedded Redis, whose ``redis.url`` is removed.
    """

    def __init__(self, settings: Settings, *, workers: int = 1, api: bool = True,
                 api_port: int | None = None, beat: bool = False,
                 say: Say = say_on_stderr) -> None:
        self.settings = settings
        self.n_workers = workers
        self.with_api = api
        self.with_beat = beat
        self.api_port = api_port
        self.say = say
        self.signals = StopSignals()
        self._lock = StateLock(settings.state_dir)
        self._exit = ExitStack()
        self.sandbox: Any = None
        self.api: ApiServer | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.beat: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Stack:
        from orchestrator.store.db import get_engine
        from orchestrator.store.migrate import upgrade
        from orchestrator.store.redis import start_embedded, stop_embedded

        self.signals.install()  # a signal from here on is held until everything is recorded
        try:
            self._lock.acquire()
            self._exit.callback(self._lock.release)
            if not self.settings.redis_url:
                self._exit.callback(stop_embedded, self.settings)
                start_embedded(self.settings)
            upgrade(get_engine(self.settings))
            self._start_sandbox()
            if self.with_api:
                port = self.api_port or free_port()
                if self.settings.public_base_url == DEFAULT_PUBLIC_BASE_URL:
                    # Nobody said where the world reaches us: short links and callbacks
                    # point at this API. A configured public URL (a proxy) is kept.
                    self.settings = self.settings.model_copy(
                        update={"public_base_url": f"http://127.0.0.1:{port}"})
                self.api = ApiServer(self.settings, port)
                self._exit.callback(self.api.stop)
            self._configure_sandbox()
            self._exit.callback(self._stop_children)
            for n in range(self.n_workers):
                self.workers.append(start_worker(self.settings, name=f"w{n + 1}"))
            if self.with_beat:
                self.beat = start_beat(self.settings)
            self.signals.arm()
        except BaseException as exc:
            self._close(exc)
            raise
        return self

    def _start_sandbox(self) -> None:
        if all(getattr(self.settings, name) for name in PROVIDER_BASES):
            return
        from orchestrator.sandbox.server import run_in_thread

        self.sandbox = run_in_thread()
        self._exit.callback(self.sandbox.stop)
        update = {name: self.sandbox.base_url for name in PROVIDER_BASES
                  if not getattr(self.settings, name)}
        self.settings = self.settings.model_copy(update=update)

    def _configure_sandbox(self) -> None:
        if self.sandbox is None or self.api is None:
            return
        s = self.settings
        self.sandbox.state.configure({
            "wechat_appid": s.wechat_appid,
            "wechat_secret": s.wechat_secret.get_secret_value(),
            "wechat_token": s.wechat_token.get_secret_value(),
            "wechat_callback_url": f"{self.api.base_url}/v1/callbacks/wechat",
            "wecom_corp_id": s.wecom_corp_id,
            "wecom_secret": s.wecom_secret.get_secret_value(),
            "wecom_token": s.wecom_token.get_secret_value(),
            "wecom_callback_url": f"{self.api.base_url}/v1/callbacks/wecom",
            "wecom_auto_confirm": True,
            "twilio_account_sid": s.twilio_account_sid,
            "twilio_auth_token": s.twilio_auth_token.get_secret_value(),
            "twilio_inbound_url": f"{self.api.base_url}/v1/callbacks/twilio",
        })

    def children(self) -> list[subprocess.Popen[bytes]]:
        """The processes this stack started, beat first (it stops first)."""
        return [*([self.beat] if self.beat else []), *self.workers]

    def parts(self) -> str:
        """What runs, in the order it stops."""
        names = [*(["beat"] if self.beat else []),
                 *(f"worker {n + 1}" for n in range(len(self.workers))),
                 *(["API"] if self.api else []), *(["sandbox"] if self.sandbox else []),
                 *([] if self.settings.redis_url else ["embedded Redis"])]
        return ", ".join(names)

    def _stop_children(self) -> None:
        for proc in stop_processes(self.children()):
            self.say(f"pid {proc.pid} did not stop within {STOP_TIMEOUT_S:.0f}s: killed")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        self.signals.disarm()
        signum = exc.signum if isinstance(exc, Stopped) else self.signals.received
        began = time.monotonic()
        if signum is not None:
            self.say(f"{Stopped(signum).signame} received: stopping {self.parts()}")
        try:
            self._exit.close()
        finally:
            self.signals.restore()
        if signum is not None:
            self.say(f"stopped in {time.monotonic() - began:.1f}s")
