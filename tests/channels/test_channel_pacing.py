"""Token bucket and back-off, driven by a hand-moved monotonic clock."""

from __future__ import annotations

import random

import pytest

from orchestrator.channels.pacing import Backoff, TokenBucket, shared_bucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_bucket_lets_a_burst_through_then_spaces_callers() -> None:
    clock = FakeTime()
    bucket = TokenBucket(10, burst=2, monotonic=clock.monotonic, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.1, 0.1])
    assert clock.now == pytest.approx(100.3)  # 5 tokens at 10/s with a burst of 2


def test_reservations_queue_up_without_holding_the_lock() -> None:
    clock = FakeTime()
    bucket = TokenBucket(4, burst=1, monotonic=clock.monotonic, sleep=clock.sleep)
    # Three callers arrive at the same instant: each is told its own turn.
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.25, 0.5])


def test_an_idle_bucket_refills_up_to_its_burst() -> None:
    clock = FakeTime()
    bucket = TokenBucket(10, burst=3, monotonic=clock.monotonic, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire()
    clock.now += 60  # a long pause does not bank more than the burst
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.1])


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate_per_s must be > 0"):
        TokenBucket(0)


def test_shared_buckets_are_one_per_name_and_rate() -> None:
    assert shared_bucket("twilio:AC1", 50) is shared_bucket("twilio:AC1", 50)
    assert shared_bucket("twilio:AC1", 50) is not shared_bucket("twilio:AC2", 50)


def test_backoff_grows_with_jitter_and_stops() -> None:
    backoff = Backoff(attempts=4, base_s=0.2, cap_s=0.5, rng=random.Random(7))
    delays = [backoff.delay(retry) for retry in (1, 2, 3)]
    assert all(d is not None for d in delays)
    assert 0 <= delays[0] <= 0.2 and 0 <= delays[1] <= 0.4 and 0 <= delays[2] <= 0.5
    assert backoff.delay(4) is None  # four calls made: give up


def test_backoff_honours_a_short_retry_after_and_declines_a_long_one() -> None:
    backoff = Backoff(attempts=3, cap_s=2.0)
    assert backoff.delay(1, retry_after_s=1.5) == 1.5
    assert backoff.delay(1, retry_after_s=30) is None  # the engine reschedules instead
