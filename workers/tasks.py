"""Thin Celery tasks: ids in, engine calls out.

No task retries itself with a countdown: a send batch's next attempt time lives in its row
and a tick hands it out when due, so no wait, however long, depends on a broker holding a
message (a visibility timeout, a restart that loses it).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from orchestrator.engine.delivery import drive_batch, process_touches
from orchestrator.engine.dispatch import BatchClaim, TouchClaim
from orchestrator.engine.runner import tick as engine_tick
from orchestrator.engine.runtime import Runtime
from workers.app import app

log = logging.getLogger(__name__)
_RUNTIME: Runtime | None = None

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class Task(Protocol[_P, _R_co]):
    """The part of a Celery task we use, typed by the function it wraps (Celery ships no
    type hints, so ``app.task`` alone would leave every task untyped for mypy)."""

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    def delay(self, *args: _P.args, **kwargs: _P.kwargs) -> Any: ...


def _task(name: str) -> Callable[[Callable[_P, _R]], Task[_P, _R]]:
    return cast(Callable[[Callable[_P, _R]], Task[_P, _R]], app.task(name=name))


def runtime() -> Runtime:
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = Runtime.from_settings()
        gc.freeze()  # the runtime lives as long as the process: no collection walks it
    return _RUNTIME


def reset_runtime() -> None:
    global _RUNTIME
    _RUNTIME = None


class CeleryDispatcher:
    def cursors(self, enrollment_ids: list[int]) -> None:
        advance.delay(enrollment_ids)

    def touches(self, claim: TouchClaim) -> None:
        send.delay(list(claim.touch_ids), claim.token)

    def deliver(self, claim: BatchClaim) -> None:
        deliver.delay(claim.batch_id, claim.token)

    def refresh(self, now: datetime, fire: datetime) -> None:
        refresh.delay(now.isoformat(), fire.isoformat())

    def poll_wecom(self, now: datetime) -> None:
        poll_wecom.delay(now.isoformat())

    def rebuild_caps(self) -> None:
        rebuild_caps.delay()


@_task("workers.tasks.tick")
def tick() -> dict[str, Any]:
    claimed = engine_tick(runtime(), CeleryDispatcher())
    return {"cursors": len(claimed.cursors), "touch_claims": len(claimed.touches),
            "batches": len(claimed.batches), "skipped": claimed.skipped}


@_task("workers.tasks.advance")
def advance(enrollment_ids: list[int]) -> None:
    from orchestrator.engine.cursors import run_cursors

    run_cursors(runtime(), enrollment_ids)


@_task("workers.tasks.send")
def send(touch_ids: list[int], token: str) -> None:
    """Gate and freeze the claimed touches, then drive each frozen batch. A batch that must
    wait (a retry, a lookup later) keeps its next attempt time in its row: a later tick
    hands it out again. One batch's error never stops the others."""
    rt = runtime()
    for batch_id in process_touches(rt, touch_ids, token):
        _drive(rt, batch_id, token)


@_task("workers.tasks.deliver")
def deliver(batch_id: str, token: str) -> None:
    """The next attempt of a frozen batch, as the holder of its lease ``token``."""
    _drive(runtime(), batch_id, token)


def _drive(rt: Runtime, batch_id: str, token: str) -> None:
    try:
        drive_batch(rt, batch_id, token)
    except Exception:  # noqa: BLE001 - the batch is in doubt in its row; a tick resumes it
        log.exception("batch %s: delivery stopped by an error; a later tick resumes it",
                      batch_id)


@_task("workers.tasks.refresh")
def refresh(now: str, fire: str) -> None:
    """The scheduled audience refresh the tick claimed for ``fire``."""
    from orchestrator.engine.refresh import run_refresh

    run_refresh(runtime(), datetime.fromisoformat(now), datetime.fromisoformat(fire))


@_task("workers.tasks.poll_wecom")
def poll_wecom(now: str) -> None:
    """One bounded poll of the WeCom tasks awaiting confirmation."""
    from orchestrator.engine.wecom import poll_wecom as poll

    poll(runtime(), datetime.fromisoformat(now))


@_task("workers.tasks.rebuild_caps")
def rebuild_caps() -> None:
    """Rebuild the caps in Redis from the database (Redis lost its data); a no-op while
    another rebuild runs."""
    from orchestrator.engine.policy_gates import rebuild_caps as rebuild

    rebuild(runtime())
