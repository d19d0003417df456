"""Thin Celery tasks: ids in, engine calls, ``RetryLater`` → ``self.retry(countdown=…)``."""

from __future__ import annotations

from typing import Any

from orchestrator.engine.delivery import deliver_batch, process_touches, reconcile_batch
from orchestrator.engine.dispatch import TouchClaim
from orchestrator.engine.runner import tick as engine_tick
from orchestrator.engine.runtime import Runtime
from orchestrator.errors import RetryLater
from workers.app import app

MAX_RETRIES = 8
_RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime.from_settings()
    return _RUNTIME


def reset_runtime() -> None:
    global _RUNTIME
    _RUNTIME = None


class CeleryDispatcher:
    def cursors(self, enrollment_ids: list[int]) -> None:
        advance.delay(enrollment_ids)

    def touches(self, claim: TouchClaim) -> None:
        send.delay(list(claim.touch_ids), claim.token)

    def reconcile(self, batch_id: str) -> None:
        reconcile.delay(batch_id)


@app.task(name="workers.tasks.tick")
def tick() -> dict[str, Any]:
    claimed = engine_tick(runtime(), CeleryDispatcher())
    return {"cursors": len(claimed.cursors), "touch_claims": len(claimed.touches)}


@app.task(name="workers.tasks.advance")
def advance(enrollment_ids: list[int]) -> None:
    from orchestrator.engine.cursors import run_cursors

    run_cursors(runtime(), enrollment_ids)


@app.task(name="workers.tasks.send")
def send(touch_ids: list[int], token: str) -> None:
    """Gate and freeze the claimed touches, then deliver each batch; a batch that meets a
    retryable failure continues in its own retrying ``deliver`` task."""
    for batch_id in process_touches(runtime(), touch_ids, token):
        try:
            deliver_batch(runtime(), batch_id)
        except RetryLater as retry:
            deliver.apply_async((batch_id,), countdown=retry.delay_s)


@app.task(name="workers.tasks.deliver", bind=True, max_retries=MAX_RETRIES)
def deliver(self: Any, batch_id: str) -> None:
    try:
        deliver_batch(runtime(), batch_id)
    except RetryLater as retry:
        raise self.retry(countdown=retry.delay_s) from None


@app.task(name="workers.tasks.reconcile", bind=True, max_retries=MAX_RETRIES)
def reconcile(self: Any, batch_id: str) -> None:
    try:
        reconcile_batch(runtime(), batch_id)
    except RetryLater as retry:
        raise self.retry(countdown=retry.delay_s) from None
