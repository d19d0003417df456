"""Channel adapters against the real sandbox over HTTP on loopback, with a real Redis.

One sandbox server per test module (forgotten before each test); each test gets its own
Redis key prefix (in the run's Redis database) and removes its keys afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from orchestrator.channels import SmsChannel, WeChatArticleChannel, WeComInviteChannel
from orchestrator.config import Settings
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.server import SandboxHandle, run_in_thread
from orchestrator.sandbox.state import SandboxState
from tests.support import redis_db_url

# Generous: on a loaded machine a loopback answer may take seconds, and a client that gives up
# on a healthy call would turn a slow test into a wrong one.
TEST_TIMEOUT = (5.0, 20.0)
# For tests marked ``short_timeout`` (the sandbox's ``timeout`` fault answers only after 30 s):
# the client gives up long before, so such a test waits one second, not thirty.
SHORT_TIMEOUT = (2.0, 1.0)


def _timeout(request: pytest.FixtureRequest) -> tuple[float, float]:
    return SHORT_TIMEOUT if request.node.get_closest_marker("short_timeout") else TEST_TIMEOUT


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "short_timeout: the adapters give up after 1 s (tests of a provider that "
        "never answers in time)"
    )


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxHandle]:
    with run_in_thread(state=SandboxState(SandboxConfig())) as handle:
        yield handle


@pytest.fixture
def sandbox(server: SandboxHandle) -> SandboxHandle:
    server.state.reset()
    server.state.configure(SandboxConfig().model_dump())
    return server


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_db_url())
    yield client
    client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"recall-test-channels-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(redis_client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def settings(sandbox: SandboxHandle) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        wechat_api_base=sandbox.base_url,
        wecom_api_base=sandbox.base_url,
        twilio_api_base=sandbox.base_url,
        public_base_url="http://127.0.0.1:8000",
    )


@pytest.fixture
def article(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, request: pytest.FixtureRequest
) -> Iterator[WeChatArticleChannel]:
    channel = WeChatArticleChannel(
        settings, redis_client, key_prefix=key_prefix, timeout=_timeout(request)
    )
    yield channel
    channel.close()


@pytest.fixture
def invite(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, request: pytest.FixtureRequest
) -> WeComInviteChannel:
    return WeComInviteChannel(
        settings, redis_client, key_prefix=key_prefix, timeout=_timeout(request)
    )


@pytest.fixture
def sleeps() -> list[float]:
    """Back-off waits the SMS adapter asked for (recorded instead of slept)."""
    return []


@pytest.fixture
def sms(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, sleeps: list[float],
    request: pytest.FixtureRequest,
) -> Iterator[SmsChannel]:
    channel = SmsChannel(
        settings, redis_client, key_prefix=key_prefix, timeout=_timeout(request),
        sleep=sleeps.append,
    )
    yield channel
    channel.close()
