"""The shared token cache: one fetch per refresh, however many workers ask at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from orchestrator.channels.tokens import EXPIRY_MARGIN_S, MIN_TTL_S, TokenCache, token_key
from orchestrator.errors import ChannelRetryable


class Issuer:
    """A token endpoint stand-in for the pure cache tests: counts fetches, issues t1, t2..."""

    def __init__(self, expires_in: int = 7200) -> None:
        self.fetches = 0
        self.expires_in = expires_in
        self._lock = threading.Lock()

    def __call__(self) -> tuple[str, int]:
        with self._lock:
            self.fetches += 1
            return f"t{self.fetches}", self.expires_in


@pytest.fixture
def key(key_prefix: str) -> str:
    return token_key(key_prefix, "wechat", "wx-app", fingerprint="abc")


def test_key_names_provider_app_and_fingerprint() -> None:
    assert token_key("p", "wecom", "ww1", fingerprint="f00") == "p:token:wecom:ww1:f00"
    assert token_key("p", "wechat", "wx1") == "p:token:wechat:wx1"


def test_first_get_fetches_then_the_cache_answers(redis_client: redis.Redis, key: str) -> None:
    issuer = Issuer()
    cache = TokenCache(redis_client, key, issuer)
    assert [cache.get(), cache.get(), cache.get()] == ["t1", "t1", "t1"]
    assert issuer.fetches == 1
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= 7200 - EXPIRY_MARGIN_S


def test_a_short_lived_token_is_kept_at_least_the_minimum(
    redis_client: redis.Redis, key: str
) -> None:
    TokenCache(redis_client, key, Issuer(expires_in=100)).get()
    assert 0 < redis_client.ttl(key) <= MIN_TTL_S


def test_refreshing_a_token_somebody_already_replaced_does_not_fetch(
    redis_client: redis.Redis, key: str
) -> None:
    issuer = Issuer()
    cache = TokenCache(redis_client, key, issuer)
    cache.get()  # t1
    assert cache.refresh(stale="t1") == "t2"  # our call failed with t1: fetch
    assert cache.refresh(stale="t1") == "t2"  # a slower worker that also failed with t1
    assert issuer.fetches == 2


def test_many_workers_rejected_with_the_same_token_cause_one_fetch(
    redis_client: redis.Redis, key: str
) -> None:
    issuer = Issuer()
    TokenCache(redis_client, key, issuer).get()  # t1 is cached and then rejected everywhere
    workers = 16
    start = threading.Barrier(workers)

    def rejected_worker() -> str:
        cache = TokenCache(redis_client, key, issuer)  # each worker has its own client
        start.wait()
        return cache.refresh(stale="t1")

    with ThreadPoolExecutor(workers) as pool:
        tokens = list(pool.map(lambda _: rejected_worker(), range(workers)))
    assert tokens == ["t2"] * workers
    assert issuer.fetches == 2  # the first token and exactly one refresh


def test_a_lock_held_elsewhere_is_a_retryable_error(redis_client: redis.Redis, key: str) -> None:
    issuer = Issuer()
    holder = redis_client.lock(f"{key}:lock", timeout=30)
    assert holder.acquire(blocking=False)
    try:
        cache = TokenCache(redis_client, key, issuer, provider="wechat", lock_wait_s=0.05)
        with pytest.raises(ChannelRetryable, match=r"could not hold the Redis lock") as caught:
            cache.get()
        assert caught.value.provider == "wechat"
    finally:
        holder.release()
    assert issuer.fetches == 0
