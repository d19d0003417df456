"""Policy fixtures: the run's Redis database, flushed around each use."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from orchestrator.policy.caps import CapStore
from tests.support import redis_db_url


@pytest.fixture(scope="session")
def caps_redis_url() -> str:
    """The run's Redis database: the server's, else an embedded Redis."""
    return os.environ.get("RECALL_TEST_POLICY_REDIS_URL") or redis_db_url()


@pytest.fixture(scope="session")
def policy_redis(caps_redis_url: str) -> Iterator[redis.Redis]:
    """A client of the policy tests' own Redis database, flushed before and after."""
    client = redis.Redis.from_url(caps_redis_url)
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
