"""The production stack a bench measures, and what it owns.

- **PostgreSQL**: a database of its own (``recall_bench_<pid>_<n>``) on the server
  ``RECALL_BENCH_POSTGRES_URL`` names (default postgresql://postgres@127.0.0.1:5432/postgres,
  used only to create and drop it), migrated, then dropped at the end.
- **Redis**: the database ``RECALL_BENCH_REDIS_URL`` names (default
  redis://127.0.0.1:6379/12). The bench owns it: it is emptied before and after a run, so
  point it at a database nothing else uses.
- **Processes**: ``recall sandbox`` (answers every provider call: WeChat, WeCom and
  Twilio, over HTTP on loopback, on the same two cores), ``recall worker`` processes and
  one ``recall beat``, each configured by environment and killed at the end.

Nothing here is timed; the bench scripts time what they drive through it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from orchestrator.chaos.services import Database, Service, wait_until
from orchestrator.engine.stack import free_port, wait_for_port

BENCH = Path(__file__).resolve().parent
JOURNEYS = BENCH / "journeys"
TEMPLATES = BENCH / "templates"
SENDERS = ("staff-a", "staff-b")
READY_S = 240.0  # a loaded machine takes tens of seconds to boot a Celery worker
_serial = itertools.count()


def log(message: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def postgres_admin_url() -> str:
    return os.environ.get("RECALL_BENCH_POSTGRES_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")


def redis_url() -> str:
    return os.environ.get("RECALL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def recall_argv() -> list[str]:
    script = Path(sys.executable).with_name("recall")
    return [str(script)] if script.exists() else [shutil.which("recall") or "recall"]


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Stack:
    """One deployment for one measurement: database, Redis database, processes."""

    def __init__(self, label: str, *, extra_env: dict[str, str] | None = None) -> None:
        self.label = label
        self.dir = Path(tempfile.mkdtemp(prefix=f"recall-bench-{label}-"))
        self.db = Database(postgres_admin_url(), f"recall_bench_{os.getpid()}_{next(_serial)}")
        self.redis = redis.Redis.from_url(redis_url())
        self.sandbox_port = free_port()
        self.extra_env = extra_env or {}
        self.services: list[Service] = []
        self._exit = ExitStack()
        self.engine: sa.Engine | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Stack:
        self._exit.callback(shutil.rmtree, self.dir, ignore_errors=True)
        self.redis.flushdb()
        self._exit.callback(self.redis.flushdb)
        self.db.create()
        self._exit.callback(self.db.drop)
        from orchestrator.store.migrate import upgrade

        self.engine = engine_for(self.db.url)
        self._exit.callback(self.engine.dispose)
        upgrade(self.engine)
        self._exit.callback(self._kill_all)
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _kill_all(self) -> None:
        for service in reversed(self.services):
            service.kill()

    def env(self, **more: str) -> dict[str, str]:
        """The deployment's settings, and nothing inherited that could point elsewhere."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
        base = f"http://127.0.0.1:{self.sandbox_port}"
        env.update({
            "RECALL_DATABASE_URL": self.db.url,
            "RECALL_REDIS_URL": redis_url(),
            "RECALL_STATE_DIR": str(self.dir / "state"),
            "RECALL_JOURNEYS_DIR": str(JOURNEYS),
            "RECALL_TEMPLATES_DIR": str(TEMPLATES),
            "RECALL_WECHAT_API_BASE": base,
            "RECALL_WECOM_API_BASE": base,
            "RECALL_TWILIO_API_BASE": base,
            "RECALL_CELERY_QUEUE": f"bench-{self.db.name}",
            "RECALL_WECOM_DEFAULT_SENDER": SENDERS[0],
            **self.extra_env, **more,
        })
        return env

    def settings(self) -> Any:
        """The same settings, for the driver's own process."""
        from orchestrator.config import Settings

        env = self.env()
        return Settings(**{k.removeprefix("RECALL_").lower(): v for k, v in env.items()
                           if k.startswith("RECALL_")})

    # --- processes ---------------------------------------------------------------------
    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Service:
        service = Service(name, argv, env or self.env(), self.dir / f"{name}.log")
        if cwd is not None:
            service.argv = ["env", "-C", str(cwd), *argv]
        self.services.append(service.start())
        return service

    def start_sandbox(self) -> httpx.Client:
        self.start("sandbox", [*recall_argv(), "sandbox", "--port", str(self.sandbox_port)])
        wait_for_port(self.sandbox_port, timeout_s=READY_S)
        client = httpx.Client(base_url=f"http://127.0.0.1:{self.sandbox_port}",
                              trust_env=False, timeout=120)
        self._exit.callback(client.close)
        client.post("/_sandbox/config", json={"wecom_auto_confirm": True}).raise_for_status()
        return client

    def start_workers(self, count: int, concurrency: int, *, queues: str = "all"
                      ) -> list[Service]:
        started = [self.start(f"worker{len(self.services)}", [
            *recall_argv(), "worker", "--concurrency", str(concurrency), "--queues", queues])
            for _ in range(count)]
        self.wait_ready(started, "ready.")
        return started

    def start_beat(self) -> Service:
        beat = self.start("beat", [*recall_argv(), "beat"])
        self.wait_ready([beat], "beat: Starting...")
        return beat

    def wait_ready(self, services: list[Service], marker: str) -> None:
        def ready() -> bool:
            for s in services:
                if not s.alive():
                    raise RuntimeError(f"{s.name} exited while starting: see {s.log}\n"
                                       + _tail(s.log))
            return all(s.log.exists() and marker in s.log.read_text(errors="replace")
                       for s in services)

        if not wait_until(ready, READY_S, every_s=0.2):
            raise RuntimeError(f"not ready within {READY_S:.0f}s: see the logs in {self.dir}")

    # --- data --------------------------------------------------------------------------
    def copy_users(self, count: int, *, start: int = 0) -> list[str]:
        """``count`` reachable users (phone, OpenID, WeCom contact), loaded with COPY."""
        ids = [f"u{i:07d}" for i in range(start, start + count)]
        rows = ((uid, f"oBENCH{n:022d}", f"wmBENCH{n:07d}", SENDERS[n % len(SENDERS)],
                 f"+86139{n:08d}") for n, uid in enumerate(ids, start))
        self.copy("users", ["user_id", "openid", "external_userid", "wecom_sender", "phone",
                            "sms_opt_out", "wechat_followed", "attributes", "erased"],
                  ((*r, False, True, "{}", False) for r in rows))
        return ids

    def copy(self, table: str, columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
        assert self.engine is not None
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f"ANALYZE {table}")

    def scalar(self, sql: str, **params: Any) -> Any:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[sa.Row[Any]]:
        assert self.engine is not None
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))


def child_rss_mb(service: Service) -> list[float]:
    """Peak resident set (VmHWM) of each pool child of a Celery worker service, in MiB."""
    peaks = []
    for pid in service.group():
        if pid == service.pid:
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024)
    return peaks


def sent_duplicates(sandbox: httpx.Client, path_suffix: str) -> tuple[int, int]:
    """(accepted sends, duplicate recipients) from the sandbox's own record of ``path``."""
    record = sandbox.get("/_sandbox/record", params={"outcome": "accepted"}).json()
    seen: dict[str, int] = {}
    for entry in record:
        if entry["method"] == "POST" and entry["path"].endswith(path_suffix):
            for recipient in entry["recipients"]:
                seen[recipient] = seen.get(recipient, 0) + 1
    return sum(seen.values()), sum(n - 1 for n in seen.values() if n > 1)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.25) -> None:
    if not wait_until(predicate, timeout_s, every_s=every_s):
        raise RuntimeError(f"{what}: not within {timeout_s:.0f}s")


def emit(name: str, value: float, unit: str, baseline: float | None, ratio: float | None
         ) -> str:
    line = json.dumps({"name": name, "value": value, "unit": unit, "baseline": baseline,
                       "ratio": ratio})
    print(line, flush=True)
    return line
