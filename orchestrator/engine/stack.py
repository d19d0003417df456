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
from typing import Any

from pydantic import SecretStr

from orchestrator.config import Settings
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
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="recall-api")
        self.thread.start()
        wait_for_port(self.port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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
    log = Path(settings.state_dir) / f"worker-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.main", "worker", f"--pool={pool}",
             f"--concurrency={concurrency}", "--loglevel=WARNING", f"--hostname={name}@%h",
             "-Q", f"{settings.celery_queue},{settings.celery_queue}.tick",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=worker_env(settings), stdout=sink, stderr=subprocess.STDOUT,
        )


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stack:
    """Start what the settings do not point at, and stop it again."""

    def __init__(self, settings: Settings, *, workers: int = 1, api: bool = True,
                 api_port: int | None = None) -> None:
        self.settings = settings
        self.n_workers = workers
        self.with_api = api
        self.api_port = api_port
        self._exit = ExitStack()
        self.sandbox: Any = None
        self.api: ApiServer | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Stack:
        from orchestrator.store.db import get_engine
        from orchestrator.store.migrate import upgrade
        from orchestrator.store.redis import start_embedded, stop_embedded

        try:
            if not self.settings.redis_url:
                start_embedded(self.settings)
                self._exit.callback(stop_embedded, self.settings)
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
            for n in range(self.n_workers):
                proc = start_worker(self.settings, name=f"w{n + 1}")
                self.workers.append(proc)
                self._exit.callback(stop_process, proc)
        except BaseException:
            self._exit.close()
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

    def __exit__(self, *exc: object) -> None:
        self._exit.close()
