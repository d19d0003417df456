"""The Celery app. Tasks are thin: they take ids and call the engine.

Reliability settings (and why):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is redelivered.
  Redelivery is harmless: a touch task carries its claim token and finds nothing once the
  work is done; a frozen batch is re-sent with the same provider idempotency key.
- ``worker_prefetch_multiplier = 1``: a worker holds one unacked task at a time.
- Redis visibility timeout: an unacked task is redelivered after it, so it must be longer
  than any task runs. No task uses an ETA or countdown: due times and a send batch's next
  attempt time live in the database, and a tick hands work out when it is due.
- Ticks go to a queue of their own (``<queue>.tick``) and expire after one beat interval: a
  tick that could not start in time is dropped, not run late (the next one is a second
  away). A worker consumes both queues unless told otherwise; a deployment gives ticks a
  small worker of their own (``recall worker --queues tick``) so that they never wait for
  a process busy with sends.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init

from orchestrator.config import get_settings
from orchestrator.logs import configure_logging
from orchestrator.store.redis import broker_url, celery_url

VISIBILITY_TIMEOUT_S = 3600
TICK_EVERY_S = 1.0

app = Celery("recall", include=["workers.tasks"])
configure_logging()  # worker and beat logs mask phone numbers, OpenIDs and texts too


def tick_queue(queue: str) -> str:
    """The queue ticks go to, beside the deployment's work queue."""
    return f"{queue}.tick"


def configure(url: str | None = None, queue: str | None = None) -> Celery:
    settings = get_settings()
    queue = queue or settings.celery_queue
    app.conf.update(
        broker_url=celery_url(url) if url else broker_url(settings),
        task_default_queue=queue,
        task_routes={"workers.tasks.tick": {"queue": tick_queue(queue)}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={"tick": {"task": "workers.tasks.tick", "schedule": TICK_EVERY_S,
                                "options": {"expires": TICK_EVERY_S,
                                            "queue": tick_queue(queue)}}},
        timezone="UTC",
    )
    return app


def _after_fork(**_: Any) -> None:
    """Engines and Redis clients are per process: drop what the parent made. Then everything
    the child inherited (modules, the app, the engine's code) leaves the cyclic garbage
    collector's view: a full collection walked all of it, ~140 ms of CPU each time, 3-4 % of
    a worker child's CPU while it sends SMS (9 ms each once frozen)."""
    import gc

    from orchestrator.store.db import dispose_engines

    dispose_engines()
    from workers import tasks

    tasks.reset_runtime()
    gc.freeze()


# Connected by a call rather than as a decorator: Celery ships no type hints, and an untyped
# decorator would leave the receiver untyped for mypy. The effect is the same.
worker_process_init.connect(_after_fork)


def _watch_owner(**_: Any) -> None:
    """A worker or beat started by ``recall run|simulate`` stops when that process is gone."""
    from orchestrator.engine.lifecycle import watch_owner

    watch_owner()


worker_init.connect(_watch_owner)
beat_init.connect(_watch_owner)
