"""What to do next with a frozen batch: pure decisions over the counters in its row.

A batch is in one of four states:

- ``frozen``: nothing is in doubt (no call made yet, or every earlier call was answered and
  refused): the next attempt *sends* what is still open, with the batch's idempotency key;
- ``unknown``: a call may have reached the provider without its answer reaching us (a
  timeout, or a worker that died mid-call: the state is set before every call): the next
  attempt *looks up* first and sends only what the provider definitely does not have;
- ``sent`` / ``failed``: every touch has a definite outcome.

The next attempt time is real (lease) time and lives in the row, so a ``Retry-After`` of any
length never has to outlive a lease or a broker's visibility timeout. Giving up is the last
resort and has exactly two forms:

- still in doubt after ``max_attempts`` unanswered attempts in a row, or past the window in
  which the provider deduplicates a repeat (WeChat's ``clientmsgid``: 24 hours) ->
  ``failed/unknown_outcome``; the cap slot stays held, since the person may have it;
- never sent, and refused (rate limits, 5xx) until ``deadline`` after freezing ->
  ``failed/expired:<code>``; a rate limit alone never fails a touch before that.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Action = Literal["send", "lookup", "wait", "give_up_unknown", "give_up_expired"]
OPEN_STATES = ("frozen", "unknown")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts``: unanswered attempts in a row before an outcome in doubt is given up;
    ``deadline``: business time after freezing before a never-sent batch is given up;
    back-off ``base_s * 2**(n-1)`` capped at ``cap_s``, with full jitter above half."""

    max_attempts: int = 8
    deadline: timedelta = timedelta(hours=24)
    base_s: float = 5.0
    cap_s: float = 600.0

    def backoff(self, n: int, rng: random.Random | None = None) -> float:
        """Seconds before attempt number ``n + 1`` after ``n`` failed ones (n >= 1)."""
        full = min(self.cap_s, self.base_s * 2.0 ** max(0, n - 1))
        jitter: float = (rng or random).random()
        return full * (0.5 + 0.5 * jitter)


@dataclass(frozen=True)
class BatchClock:
    """What a decision needs to know about one batch (times UTC-aware)."""

    state: str
    unanswered: int
    next_attempt_at: datetime | None  # real time
    created_at: datetime  # business time the batch was frozen
    lookup_until: datetime | None  # business time: last moment a lookup may repeat the call


def next_action(batch: BatchClock, *, now: datetime, real_now: datetime,
                policy: RetryPolicy) -> Action:
    """The next step for an open batch (``state`` frozen or unknown)."""
    if batch.state == "unknown":
        if batch.unanswered >= policy.max_attempts:
            return "give_up_unknown"
        if batch.lookup_until is not None and now >= batch.lookup_until:
            return "give_up_unknown"
    elif now >= batch.created_at + policy.deadline:
        return "give_up_expired"
    if batch.next_attempt_at is not None and batch.next_attempt_at > real_now:
        return "wait"
    return "lookup" if batch.state == "unknown" else "send"


def retry_delay(policy: RetryPolicy, *, attempts: int, retry_after_s: float | None,
                lookup_until: datetime | None, now: datetime,
                rng: random.Random | None = None) -> float:
    """Seconds until the next attempt: the provider's ``Retry-After`` when it gave one (in
    full: the wait lives in the database), else the back-off; never past ``lookup_until``
    (a lookup after the provider's dedupe window could only send again)."""
    delay = retry_after_s if retry_after_s is not None else policy.backoff(attempts, rng)
    if lookup_until is not None:
        delay = min(delay, max(0.0, (lookup_until - now).total_seconds() - 1.0))
    return max(0.0, delay)


def after_attempt(statuses: Sequence[str]) -> str:
    """The batch state once every open touch has ``statuses`` (``absent`` = still to send)."""
    if "unknown" in statuses:
        return "unknown"
    if "absent" in statuses:
        return "frozen"
    return "sent" if {"sent", "delivered"} & set(statuses) else "failed"
