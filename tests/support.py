"""Helpers shared by test modules (import as ``tests.support``)."""

from __future__ import annotations

import os
import socket

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("RECALL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RECALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
_missing: set[str] = set()


def _reachable(url: str, default_port: int) -> bool:
    parsed = sa.engine.make_url(url.replace("redis://", "postgresql://", 1))
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or default_port), 1):
            return True
    except OSError:
        return False


def require_server(name: str, url: str, port: int) -> None:
    if _reachable(url, port):
        return
    message = f"{name} at {url} is not reachable"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (.ci/run starts it)", pytrace=False)
    _missing.add(name)
    pytest.skip(f"SERVER SUITE SKIPPED: {message}")
