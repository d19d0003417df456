"""Shared fixtures: real databases and a real Redis.

Server suites (PostgreSQL, Redis server) run when the servers answer. Without them they are
skipped with a loud notice, except under ``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.store import migrate
from orchestrator.store.db import make_engine
from tests.support import PG_URL, _missing, redis_db_url, require_server, stop_embedded_redis


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_embedded_redis()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True)
        terminalreporter.write_line(
            f"SKIPPED the server suites for: {', '.join(sorted(_missing))}. Only the embedded "
            "default (SQLite + embedded Redis) was tested. Start or install them to run them.",
            red=True,
        )
        terminalreporter.write_line(bar, red=True)


def _postgres_engine() -> Iterator[Engine]:
    require_server("PostgreSQL", PG_URL, 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    # The schema travels in the URL, so a worker process given this URL sees the same data.
    url = sa.engine.make_url(PG_URL).set(query={"options": f"-csearch_path={schema}"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def _sqlite_engine(path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, migrated database: SQLite file and PostgreSQL schema, in turn."""
    if request.param == "sqlite":
        yield from _sqlite_engine(tmp_path / "recall.db")
    else:
        yield from _postgres_engine()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    yield from _sqlite_engine(tmp_path / "recall.db")


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    yield from _postgres_engine()


@pytest.fixture
def redis_server_url() -> Iterator[str]:
    """A Redis database (the server's, else an embedded one) flushed before and after."""
    url = redis_db_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
