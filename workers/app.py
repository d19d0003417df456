"""The Celery app. Tasks are thin: they take ids and call the engine.

Reliability settings (and why):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is redelivered.
  Redelivery is harmless: a touch task carries its claim token and finds nothing once the
  work is done; a frozen batch is re-sent with the same provider idempotency key.
- ``worker_prefetch_multiplier = 1``: a worker holds one unacked task at a time.
- Redis visibility timeout: an unacked task is redelivered after it, so it must be longer
  than any task runs and than any countdown we use. We never use long ETAs (due times live
  in the database), and back-off countdowns are at most a minute.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from orchestrator.config import get_settings
from orchestrator.logs import configure_logging
from orchestrator.store.redis import broker_url, celery_url

VISIBILITY_TIMEOUT_S = 3600

app = Celery("recall", include=["workers.tasks"])
configure_logging()  # worker and beat logs mask phone numbers, OpenIDs and texts too


def configure(url: str | None = None, queue: str | None = None) -> Celery:
    settings = get_settings()
    app.conf.update(
        broker_url=celery_url(url) if url else broker_url(settings),
        task_default_queue=queue or settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={"tick": {"task": "workers.tasks.tick", "schedule": 1.0}},
        timezone="UTC",
    )
    return app


def _after_fork(**_: Any) -> None:
    """Engines and Redis clients are per process: drop what the parent made."""
    from orchestrator.store.db import dispose_engines

    dispose_engines()
    from workers import tasks

    tasks.reset_runtime()


# Connected by a call rather than as a decorator: Celery ships no type hints, and an untyped
# decorator would leave the receiver untyped for mypy. The effect is the same.
worker_process_init.connect(_after_fork)
