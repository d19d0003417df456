"""WeCom tasks after they are accepted: the staff member's confirmation, in the loop.

``add_msg_template`` only creates a task; a person confirms it in the WeCom app. The engine
treats the accepted task as the step's terminal moment (the next wait starts), then polls
``get_groupmsg_send_result``: delivered customers become ``delivered``; not-a-friend and
already-got-one-today become ``failed`` (their cap slot is released); a task nobody
confirmed within ``confirm_timeout`` is cancelled and its touches fail as ``unconfirmed``.

Polling reads only the tasks still awaiting confirmation (``send_batches`` of this channel,
sent and not yet confirmed: an index serves it), a bounded number per poll, and runs in a
task of its own, never inside a tick.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update

from orchestrator.clock import as_utc
from orchestrator.engine.policy_gates import release_caps
from orchestrator.engine.runtime import Runtime
from orchestrator.store.db import begin_write
from orchestrator.store.tables import KV, TOUCHES, USERS
from orchestrator.store.tables import SEND_BATCHES as BATCHES

CHANNEL = "wecom_group_invite"
POLL_EVERY = timedelta(minutes=10)  # business time between polls


def due_for_poll(rt: Runtime, now: datetime) -> bool:
    """Is a poll due? Claims it (one poller per interval) only when it is."""
    with rt.db.connect() as conn:  # a plain read first: most ticks stop here
        last = conn.execute(select(KV.c.value).where(KV.c.key == "wecom:last_poll")).scalar()
    if last and as_utc(datetime.fromisoformat(last["at"])) + POLL_EVERY > now:
        return False
    with begin_write(rt.db) as conn:
        last = conn.execute(select(KV.c.value).where(KV.c.key == "wecom:last_poll")
                            .with_for_update()).scalar()
        if last and as_utc(datetime.fromisoformat(last["at"])) + POLL_EVERY > now:
            return False
        value = {"at": now.isoformat()}
        if last is None:
            conn.execute(KV.insert().values(key="wecom:last_poll", value=value, updated_at=now))
        else:
            conn.execute(update(KV).where(KV.c.key == "wecom:last_poll").values(value=value))
    return True


def poll_wecom(rt: Runtime, now: datetime) -> dict[str, int]:
    """Poll the tasks still awaiting their staff member's confirmation, oldest first and at
    most ``POLL_BATCHES`` of them per call; returns counts by outcome."""
    from orchestrator.channels.wecom_invite import WecomTask

    with rt.db.connect() as conn:
        awaiting = conn.execute(
            select(BATCHES.c.id).where(BATCHES.c.channel == CHANNEL, BATCHES.c.state == "sent",
                                       BATCHES.c.confirmed_at.is_(None))
            .order_by(BATCHES.c.created_at).limit(POLL_BATCHES)).scalars().all()
        rows = conn.execute(
            select(TOUCHES.c.id, TOUCHES.c.enrollment_id, TOUCHES.c.step_id,
                   TOUCHES.c.journey_id, TOUCHES.c.journey_version, TOUCHES.c.status,
                   TOUCHES.c.provider_message_id, TOUCHES.c.batch_id, USERS.c.external_userid,
                   USERS.c.wecom_sender, BATCHES.c.created_at)
            .join(USERS, USERS.c.user_id == TOUCHES.c.user_id)
            .join(BATCHES, BATCHES.c.id == TOUCHES.c.batch_id)
            .where(TOUCHES.c.batch_id.in_(awaiting), TOUCHES.c.status == "sent")
        ).mappings().all() if awaiting else []
    if not awaiting:
        return {}
    sender_of = {r["provider_message_id"]: r["wecom_sender"] or rt.settings.wecom_default_sender
                 for r in rows}
    channel: Any = rt.channel(CHANNEL)
    deliveries = channel.poll([WecomTask(m, s) for m, s in sender_of.items() if m])
    status = {(d.msgid, d.external_userid): d for d in deliveries}
    counts: dict[str, int] = defaultdict(int)
    delivered, failed, expired = [], [], []
    timeout = timedelta(seconds=rt.settings.confirm_timeout_s)
    for r in rows:
        d = status.get((r["provider_message_id"], r["external_userid"]))
        if d is not None and d.status == "delivered":
            delivered.append({"b_id": r["id"], "at": d.send_time or now})
        elif d is not None and d.status == "failed":
            failed.append({"b_id": r["id"], "reason": d.reason or "wecom_failed"})
        elif as_utc(r["created_at"]) + timeout <= now:
            expired.append(r)
    _record(rt, awaiting, delivered, failed, expired, now)
    counts.update(delivered=len(delivered), failed=len(failed), unconfirmed=len(expired))
    for msgid in {r["provider_message_id"] for r in expired}:
        channel.cancel(WecomTask(msgid, sender_of[msgid]))
    return dict(counts)


POLL_BATCHES = 500  # tasks polled per call (a task may have up to 10,000 customers)


def _record(rt: Runtime, polled: Sequence[str], delivered: list[dict[str, Any]],
            failed: list[dict[str, Any]], expired: list[Any], now: datetime) -> None:
    with begin_write(rt.db) as conn:
        if delivered:
            conn.execute(update(TOUCHES).where(TOUCHES.c.id == bindparam("b_id"),
                                               TOUCHES.c.status == "sent")
                         .values(status="delivered", delivered_at=bindparam("at")), delivered)
        failures = failed + [{"b_id": r["id"], "reason": "unconfirmed"} for r in expired]
        if failures:
            conn.execute(update(TOUCHES).where(TOUCHES.c.id == bindparam("b_id"),
                                               TOUCHES.c.status == "sent")
                         .values(status="failed", reason=bindparam("reason")), failures)
        # A polled task is confirmed (done) once none of its customers is still waiting.
        waiting = set(conn.execute(
            select(TOUCHES.c.batch_id).where(TOUCHES.c.batch_id.in_(polled),
                                             TOUCHES.c.status == "sent").distinct()
        ).scalars())
        finished = set(polled) - waiting
        if finished:
            conn.execute(update(BATCHES).where(BATCHES.c.id.in_(finished))
                         .values(confirmed_at=now))
        released = conn.execute(select(TOUCHES).where(
            TOUCHES.c.id.in_([f["b_id"] for f in failures]))).mappings().all() \
            if failures else []
    release_caps(rt, released)
