"""Thin Celery tasks: ids in, engine calls, ``RetryLater`` → ``self.retry(countdown=…)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from orchestrator.engine.delivery import deliver_batch, process_touches, reconcile_batch
from orchestrator.engine.dispatch import TouchClaim
from orchestrator.engine.runner import tick as engine_tick
from orchestrator.engine.runtime import Runtime
from orchestrator.errors import RetryLater
from workers.app import app

MAX_RETRIES = 8
_RUNTIME: Runtime | None = None

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class Task(Protocol[_P, _R_co]):
    """The part of a Celery task we use, typed by the function it wraps (Celery ships no
    type hints, so ``app.task`` alone would leave every task untyped for mypy)."""

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    def delay(self, *args: _P.args, **kwargs: _P.kwargs) -> Any: ...

    def apply_async(self, args: tuple[Any, ...], *, countdown: float) -> Any: ...


class Retrying(Protocol):
    """A bound task (``bind=True``) as its function sees it."""

    def retry(self, *, countdown: float) -> Exception: ...


def _task(name: str) -> Callable[[Callable[_P, _R]], Task[_P, _R]]:
    return cast(Callable[[Callable[_P, _R]], Task[_P, _R]], app.task(name=name))


def _retrying_task(
    name: str, max_retries: int
) -> Callable[[Callable[Concatenate[Retrying, _P], _R]], Task[_P, _R]]:
    decorate = app.task(name=name, bind=True, max_retries=max_retries)
    return cast(Callable[[Callable[Concatenate[Retrying, _P], _R]], Task[_P, _R]], decorate)


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


@_task("workers.tasks.tick")
def tick() -> dict[str, Any]:
    claimed = engine_tick(runtime(), CeleryDispatcher())
    return {"cursors": len(claimed.cursors), "touch_claims": len(claimed.touches)}


@_task("workers.tasks.advance")
def advance(enrollment_ids: list[int]) -> None:
    from orchestrator.engine.cursors import run_cursors

    run_cursors(runtime(), enrollment_ids)


@_task("workers.tasks.send")
def send(touch_ids: list[int], token: str) -> None:
    """Gate and freeze the claimed touches, then deliver each batch; a batch that meets a
    retryable failure continues in its own retrying ``deliver`` task."""
    for batch_id in process_touches(runtime(), touch_ids, token):
        try:
            deliver_batch(runtime(), batch_id)
        except RetryLater as retry:
            deliver.apply_async((batch_id,), countdown=retry.delay_s)


@_retrying_task("workers.tasks.deliver", max_retries=MAX_RETRIES)
def deliver(self: Retrying, batch_id: str) -> None:
    try:
        deliver_batch(runtime(), batch_id)
    except RetryLater as retry:
        raise self.retry(countdown=retry.delay_s) from None


@_retrying_task("workers.tasks.reconcile", max_retries=MAX_RETRIES)
def reconcile(self: Retrying, batch_id: str) -> None:
    try:
        reconcile_batch(runtime(), batch_id)
    except RetryLater as retry:
        raise self.retry(countdown=retry.delay_s) from None
