"""One provider call per message, each at most once: SMS and WeChat template messages.

``send_each`` runs the calls on a thread pool and keeps the ``SendLedger`` straight:
``pending`` goes in just before a call, the result once it is known, and the entry is
removed when the provider refused the call (so the engine's retry may make it). Messages
recorded by an earlier attempt of the same batch are not called again.

How the batch ends, in order:

1. any config error -> ``ChannelConfig`` (no new calls were started after the first one);
2. any retryable error (after the adapter's own cheap retries) -> ``ChannelRetryable``;
3. every touch unknown -> ``ChannelUnknown`` (reconcile the batch);
4. otherwise one ``TouchResult`` per message, ``unknown`` for calls that got no answer.

Raising after some messages went out is safe because they are recorded: the retried batch
returns their results instead of sending them again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from orchestrator.channels.base import Message, SendRequest, TouchResult
from orchestrator.channels.common import unknown
from orchestrator.channels.ledger import Entry, SendLedger
from orchestrator.errors import ChannelConfig, ChannelError, ChannelRetryable, ChannelUnknown


@dataclass(frozen=True)
class Outcome:
    """One message's fate: a result (definite or unknown), an error (the provider did not
    act), or neither (not attempted because the batch stopped)."""

    message: Message
    result: TouchResult | None = None
    error: ChannelError | None = None


def send_each(
    request: SendRequest,
    *,
    ledger: SendLedger,
    pool: Executor,
    provider: str,
    precheck: Callable[[Message], TouchResult | None],
    call: Callable[[Message], Outcome],
    pace: Callable[[], object] = lambda: None,
) -> list[TouchResult]:
    """Call ``call`` once for each message of ``request`` not already recorded.

    ``precheck`` fails a message locally (no phone, no openid) without a call; ``pace``
    blocks until the rate limit lets the next call go.
    """
    recorded = ledger.load(request.batch_id)
    stop = threading.Event()

    def one(message: Message) -> Outcome:
        local = precheck(message)
        if local is not None:
            return Outcome(message, result=local)
        if stop.is_set():
            return Outcome(message)
        pace()
        ledger.mark_pending(request.batch_id, [str(message.touch_id)])
        outcome = call(message)
        if isinstance(outcome.error, ChannelConfig):
            stop.set()
        return outcome

    todo = [m for m in request.messages if str(m.touch_id) not in recorded]
    outcomes = list(pool.map(one, todo))
    settle(ledger, request.batch_id, outcomes)
    earlier = [
        Outcome(m, result=from_entry(m, recorded))
        for m in request.messages
        if str(m.touch_id) in recorded
    ]
    return conclude(request, [*outcomes, *earlier], provider=provider)


def conclude(
    request: SendRequest, outcomes: Sequence[Outcome], *, provider: str
) -> list[TouchResult]:
    """The batch's answer from one outcome per message (see the module docstring)."""
    raise_for_errors(request, outcomes, provider=provider)
    by_touch = {o.message.touch_id: o.result for o in outcomes if o.result is not None}
    results = [by_touch[m.touch_id] for m in request.messages]
    if results and all(r.status == "unknown" for r in results):
        raise ChannelUnknown(
            f"{provider} batch {request.batch_id!r}: no answer for any of its "
            f"{len(results)} messages after they went out; reconcile, do not resend",
            provider=provider,
        )
    return results


def settle(ledger: SendLedger, batch_id: str, outcomes: Sequence[Outcome]) -> None:
    """Record definite results; forget refused calls; unknown ones stay ``pending``."""
    definite = {
        str(o.message.touch_id): as_record(o.result)
        for o in outcomes
        if o.result is not None and o.result.status != "unknown"
    }
    ledger.record(batch_id, definite)
    ledger.forget(batch_id, [str(o.message.touch_id) for o in outcomes if o.error is not None])


def raise_for_errors(request: SendRequest, outcomes: Sequence[Outcome], *, provider: str) -> None:
    """Config first (stop the step), then retryable."""
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return
    skipped = sum(1 for o in outcomes if o.error is None and o.result is None)
    note = (
        f" [{provider} batch {request.batch_id!r}: {len(errors)} of {len(request.messages)} "
        f"messages refused, {skipped} not attempted; those sent are recorded and are not sent "
        "again when the batch is retried]"
    )
    config = next((e for e in errors if isinstance(e, ChannelConfig)), None)
    if config is not None:
        raise ChannelConfig(str(config) + note, code=config.code, provider=provider)
    retryable = next((e for e in errors if isinstance(e, ChannelRetryable)), None)
    if retryable is not None:
        raise ChannelRetryable(
            str(retryable) + note,
            code=retryable.code,
            provider=provider,
            retry_after_s=retryable.retry_after_s,
        )
    raise errors[0]


def as_record(result: TouchResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "provider_message_id": result.provider_message_id,
        "reason": result.reason,
        "segments": result.segments,
        "cost": result.cost,
    }


def from_entry(message: Message, recorded: Mapping[str, Entry]) -> TouchResult:
    """A result from the ledger; a pending entry is an earlier call that got no answer."""
    entry = recorded[str(message.touch_id)]
    if entry.pending:
        return unknown(message)
    return TouchResult(touch_id=message.touch_id, **entry.data)
