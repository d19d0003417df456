"""Policy fixtures: Redis database 3 on the local server, flushed around each use."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from orchestrator.policy.caps import CapStore

CAPS_REDIS_URL = os.environ.get("RECALL_TEST_POLICY_REDIS_URL", "redis://127.0.0.1:6379/3")


@pytest.fixture(scope="session")
def policy_redis() -> Iterator[redis.Redis]:
    """A client of the policy tests' own Redis database (3), flushed before and after."""
    client = redis.Redis.from_url(CAPS_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        message = f"Redis at {CAPS_REDIS_URL} is not reachable"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it (.ci/run starts it)", pytrace=False)
        pytest.skip(f"SERVER SUITE SKIPPED: {message}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def empty_caps(policy_redis: redis.Redis) -> CapStore:
    """A cap store on a flushed database: no epoch marker, so reserving needs a rebuild."""
    policy_redis.flushdb()
    return CapStore(policy_redis)


@pytest.fixture
def caps(empty_caps: CapStore) -> CapStore:
    """A cap store ready to reserve (rebuilt from no held touches)."""
    empty_caps.rebuild([])
    return empty_caps
