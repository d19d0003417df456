"""Engines and sessions. One engine per (URL, process): engines are created after fork.

SQLite (the embedded default) runs in WAL mode with a busy timeout. A transaction that reads
and then writes must begin ``BEGIN IMMEDIATE`` (``begin_write``): a deferred one that finds
the database changed under its read cannot wait for the write lock, SQLite answers
"database is locked" at once. Plain reads stay deferred, so a read nested inside a write
transaction (the stored clock, say) never waits on its own process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from orchestrator.config import Settings, get_settings

_ENGINES: dict[tuple[str, int], Engine] = {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy not emit BEGIN itself: we emit BEGIN / BEGIN IMMEDIATE ourselves.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql(conn.info.pop("begin_mode", "BEGIN"))


def make_engine(url: str) -> Engine:
    """An engine whose errors never carry bound values (``hide_parameters``): a failed
    INSERT of users would otherwise put phone numbers and OpenIDs into logs and tracebacks."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if os.environ.get("RECALL_DB_NULLPOOL"):
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=5, max_overflow=10)
    return create_engine(url, **kwargs)


def get_engine(settings: Settings | None = None) -> Engine:
    url = (settings or get_settings()).effective_database_url
    key = (url, os.getpid())
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = make_engine(url)
    return engine


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: ``BEGIN IMMEDIATE`` on SQLite, a plain one elsewhere."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.info["begin_mode"] = "BEGIN IMMEDIATE"
        with conn.begin():
            yield conn


@contextmanager
def session_scope(engine: Engine | None = None, *, immediate: bool = False) -> Iterator[Session]:
    """A session committed on success, rolled back on error; ``immediate`` for sessions that
    read then write on SQLite (PostgreSQL claims use FOR UPDATE SKIP LOCKED instead)."""
    engine = engine or get_engine()
    if immediate and is_sqlite(engine):
        with begin_write(engine) as conn, Session(bind=conn, expire_on_commit=False) as session:
            yield session
            session.flush()
        return
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
