"""One provider call per message, each at most once: SMS and WeChat template messages.

``send_each`` runs the calls on a thread pool and keeps the ``SendLedger`` straight:
``pending`` goes in just before a call, the result once it is known, and the entry is
removed when the provider refused the call (so the engine's retry may make it). Messages
recorded by an earlier attempt of the same batch are not called again.

How the batch ends:

- nothing went out and some call was refused -> the refusal is raised for the whole batch
  (``ChannelConfig`` before ``ChannelRetryable``): nothing happened, the engine may retry or
  stop the step as it does for any batch;
- every touch unknown -> ``ChannelUnknown`` (reconcile the batch);
- otherwise one ``TouchResult`` per message. A call still refused with a retryable error
  after the adapter's own retries (a rate limit, a 5xx) is ``absent`` with the error code
  and the provider's Retry-After: the provider did not take it, so the engine sends it again
  later with the same batch, never fails it for that. A config error fails its touch
  (``config:<code>``), and so do the calls it stopped before they started (it is logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from orchestrator.channels.base import Message, SendRequest, TouchResult
from orchestrator.channels.common import failed, unknown
from orchestrator.channels.ledger import Entry, SendLedger
from orchestrator.errors import ChannelConfig, ChannelError, ChannelRetryable, ChannelUnknown

log = logging.getLogger(__name__)


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
    by_touch = {o.message.touch_id: o for o in outcomes}
    ordered = [by_touch[m.touch_id] for m in request.messages]
    errors = [o.error for o in ordered if o.error is not None]
    went_out = any(o.result is not None and o.result.status != "failed" for o in ordered)
    if errors and not went_out:
        raise _batch_error(errors)
    config = next((e for e in errors if isinstance(e, ChannelConfig)), None)
    if config is not None:
        log.error("%s batch %s: sending stopped part-way: %s", provider, request.batch_id, config)
    results = [o.result or _refused(o, config) for o in ordered]
    if results and all(r.status == "unknown" for r in results):
        raise ChannelUnknown(
            f"{provider} batch {request.batch_id!r}: no answer for any of its "
            f"{len(results)} messages after they went out; reconcile, do not resend",
            provider=provider,
        )
    return results


def _batch_error(errors: Sequence[ChannelError]) -> ChannelError:
    """The error to raise for a batch nothing of which went out: config before retryable."""
    config = next((e for e in errors if isinstance(e, ChannelConfig)), None)
    return config or next((e for e in errors if isinstance(e, ChannelRetryable)), errors[0])


def _refused(outcome: Outcome, config: ChannelConfig | None) -> TouchResult:
    """A touch of a partly sent batch whose call was refused or never started."""
    error = outcome.error or config
    code = error.code if error is not None else None
    if isinstance(error, ChannelRetryable):
        return TouchResult(touch_id=outcome.message.touch_id, status="absent",
                           reason=str(code or "retryable"), retry_after_s=error.retry_after_s)
    return failed(outcome.message, f"config:{code}")


def settle(ledger: SendLedger, batch_id: str, outcomes: Sequence[Outcome]) -> None:
    """Record definite results; forget refused calls; unknown ones stay ``pending``."""
    definite = {
        str(o.message.touch_id): as_record(o.result)
        for o in outcomes
        if o.result is not None and o.result.status != "unknown"
    }
    ledger.record(batch_id, definite)
    ledger.forget(batch_id, [str(o.message.touch_id) for o in outcomes if o.error is not None])


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
