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

# Short enough that the sandbox's `timeout` fault (answer after 30 s) makes the client give
# up quickly; generous for anything else on loopback.
TEST_TIMEOUT = (2.0, 1.0)


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
    settings: Settings, redis_client: redis.Redis, key_prefix: str
) -> Iterator[WeChatArticleChannel]:
    channel = WeChatArticleChannel(
        settings, redis_client, key_prefix=key_prefix, timeout=TEST_TIMEOUT
    )
    yield channel
    channel.close()


@pytest.fixture
def invite(settings: Settings, redis_client: redis.Redis, key_prefix: str) -> WeComInviteChannel:
    return WeComInviteChannel(settings, redis_client, key_prefix=key_prefix, timeout=TEST_TIMEOUT)


@pytest.fixture
def sleeps() -> list[float]:
    """Back-off waits the SMS adapter asked for (recorded instead of slept)."""
    return []


@pytest.fixture
def sms(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, sleeps: list[float]
) -> Iterator[SmsChannel]:
    channel = SmsChannel(
        settings, redis_client, key_prefix=key_prefix, timeout=TEST_TIMEOUT, sleep=sleeps.append
    )
    yield channel
    channel.close()
