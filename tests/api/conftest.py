from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.api.app import create_app
from orchestrator.api.server import serve_in_thread
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from tests.support import redis_db_url
from tests.tracking.seed import T0, Seeder

API_KEYS = ("key-one", "key-two")


@pytest.fixture
def api_redis_url() -> Iterator[str]:
    """The run's Redis database (the server's, else an embedded one), flushed around the test."""
    url = redis_db_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        api_keys=",".join(API_KEYS),
        redis_url=redis_db_url(),
        state_dir=tmp_path / "state",
        journeys_dir=tmp_path / "journeys",
        templates_dir=tmp_path / "templates",
        public_base_url="https://recall.example.com",
        generic_webhook_secret="whsec-generic",
        landing_token_secret="whsec-generic",
        stripe_webhook_secret="whsec_stripe",
        wechatpay_api_key="192006250b4c09247ec02edce69f6a2d",
        twilio_auth_token="twilio-token",
        wechat_token="wechat-token",
        wecom_token="wecom-token",
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def app(settings: Settings, db_engine: Engine, clock: ManualClock) -> FastAPI:
    return create_app(settings, engine=db_engine, clock=clock)


class Swappable:
    """One uvicorn server for the session; each test plugs its own app in."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no app plugged in"
        await self.app(scope, receive, send)


@pytest.fixture(scope="session")
def api_server() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve_in_thread(swappable) as handle:
        yield swappable, handle.base_url


@pytest.fixture
def base_url(app: FastAPI, api_server: tuple[Swappable, str]) -> Iterator[str]:
    """The URL of a real uvicorn on loopback serving this test's app."""
    swappable, url = api_server
    swappable.app = app
    yield url
    swappable.app = None


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=30,
                      follow_redirects=False) as client:
        yield client


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEYS[1]}"}


@pytest.fixture
def seed(db_engine: Engine) -> Seeder:
    return Seeder(db_engine)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: HTTP behaviour the database backend cannot change; run it "
        "on SQLite only (keeps the area fast; DB semantics are tested on both)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = [
        item for item in items
        if item.get_closest_marker("sqlite_only")
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("db_engine") == "postgres"
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
