"""From claimed touches to provider calls, exactly once.

1. ``process_touches`` loads the touches still claimed under the task's token, runs the
   gates (pipeline), records every decision, and *freezes* what is ready into send batches:
   a ``send_batches`` row holding the whole request, its touches moved to ``sending`` —
   committed before the first provider call.
2. ``deliver_batch`` makes the provider call for a frozen batch. A retry (task retry or
   redelivery) repeats the same request with the same batch id (WeChat's ``clientmsgid``).
3. A provider timeout leaves the touches ``unknown``; ``reconcile_batch`` asks the provider
   what happened and never resends. Still unknown → ``failed`` / ``unknown_outcome``.
4. ``settle`` moves each enrollment past a touch that reached a terminal state: the next
   step's wait starts at that moment.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, insert, or_, select, update

from orchestrator.channels.base import Message, Recipient, SendRequest, TouchResult
from orchestrator.engine.cursors import user_timezone
from orchestrator.engine.pipeline import Work, run_gates
from orchestrator.engine.policy_gates import gates_for, release_caps
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.step_options import step_options
from orchestrator.errors import ChannelConfig, ChannelRetryable, ChannelUnknown, RetryLater
from orchestrator.journeys.model import SendStep
from orchestrator.policy.consent import record_opt_out
from orchestrator.store.db import begin_write
from orchestrator.store.tables import AUDIT_LOG as AUDIT
from orchestrator.store.tables import ENROLLMENTS, LINKS, TOUCHES, USERS
from orchestrator.store.tables import SEND_BATCHES as BATCHES

log = logging.getLogger(__name__)

TERMINAL = frozenset({"sent", "delivered", "failed", "suppressed", "cancelled"})
RECIPIENT_FIELDS = ("openid", "unionid", "external_userid", "phone", "wecom_sender")


# --- 1. claimed touches → decisions and frozen batches ----------------------------------

def process_touches(rt: Runtime, touch_ids: Sequence[int], token: str) -> list[str]:
    """Run the gates over the touches still claimed under ``token``; returns frozen batches."""
    now = rt.clock.now()
    with rt.db.connect() as conn:
        works = _load_works(rt, conn, touch_ids, token)
    if not works:
        return []
    ready = run_gates(gates_for(rt), works, now)
    with begin_write(rt.db) as conn:
        _record_decisions(rt, conn, [w for w in works if w.decision], token, now)
        batch_ids = _freeze(rt, conn, ready, token, now)
    return batch_ids


def _load_works(rt: Runtime, conn: Connection, ids: Sequence[int], token: str) -> list[Work]:
    touches = conn.execute(
        select(TOUCHES).where(TOUCHES.c.id.in_(list(ids)), TOUCHES.c.status == "claimed",
                              TOUCHES.c.claim_token == token)
        .order_by(TOUCHES.c.id)
    ).mappings().all()
    if not touches:
        return []
    enrollments = {
        r["id"]: dict(r)
        for r in conn.execute(select(ENROLLMENTS).where(
            ENROLLMENTS.c.id.in_([t["enrollment_id"] for t in touches]))).mappings()
    }
    users = {
        r["user_id"]: dict(r)
        for r in conn.execute(select(USERS).where(
            USERS.c.user_id.in_({t["user_id"] for t in touches}))).mappings()
    }
    works = []
    for t in touches:
        journey = rt.book.get(rt.db, t["journey_id"], t["journey_version"])
        step = journey.steps[journey.step_index(t["step_id"])]
        assert isinstance(step, SendStep)
        user = users.get(t["user_id"]) or {"user_id": t["user_id"], "attributes": {}}
        policy = rt.book.policy_for(journey)
        works.append(Work(
            touch=dict(t), enrollment=enrollments[t["enrollment_id"]], user=user,
            journey=journey, policy=policy, step=step,
            tz=user_timezone(user, policy.timezone), channel=t["channel"],
        ))
    return works


def _claimed(token: str) -> Any:
    return (TOUCHES.c.status == "claimed") & (TOUCHES.c.claim_token == token)


def _record_decisions(
    rt: Runtime, conn: Connection, works: Sequence[Work], token: str, now: datetime
) -> None:
    """Write every decision where the touch is still claimed under ``token``: one UPDATE per
    distinct outcome (touches decided alike share it), not one per touch."""
    alike: dict[tuple[Any, ...], list[Work]] = defaultdict(list)
    for w in works:
        status = "scheduled" if w.decision == "deferred" else w.decision
        alike[(status, w.reason, w.channel, w.due_at if w.decision == "deferred" else None)]\
            .append(w)
        if w.render_error:
            log.error("touch %s not sent: %s", w.id, w.render_error)
    terminal = []
    for (status, reason, channel, due_at), group in alike.items():
        values: dict[str, Any] = {"status": status, "reason": reason, "channel": channel,
                                  "claim_token": None, "lease_until": None}
        if due_at is not None:
            values["due_at"] = due_at
        done = set(conn.execute(
            update(TOUCHES).where(TOUCHES.c.id.in_([w.id for w in group]), _claimed(token))
            .values(**values).returning(TOUCHES.c.id)
        ).scalars())
        if status in ("suppressed", "failed"):
            terminal += [{**w.touch, "status": status} for w in group if w.id in done]
    settle(rt, conn, terminal, now)
    release_caps(rt, [w for w in works if w.reserved])


def _freeze(rt: Runtime, conn: Connection, works: Sequence[Work], token: str,
            now: datetime) -> list[str]:
    if not works:
        return []
    links = [{"code": w.link.rsplit("/", 1)[-1], "touch_id": w.id, "target_url": w.link_target,
              "clicks": 0, "created_at": now} for w in works if w.link and w.link_target]
    if links:
        conn.execute(insert(LINKS), links)
    groups: dict[tuple[str, str, str, str, str | None], list[Work]] = defaultdict(list)
    for w in works:
        t = w.touch
        groups[(w.channel, t["journey_id"], t["journey_version"], t["step_id"],
                t["variant"])].append(w)
    batch_ids = []
    for (channel, journey_id, version, step_id, variant), members in groups.items():
        size = rt.channel(channel).max_batch
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            batch_id = _freeze_batch(conn, rt, chunk, token, now, channel=channel,
                                     journey_id=journey_id, step_id=step_id,
                                     content_version=f"{version}:{step_id}:{variant or '-'}")
            if batch_id:
                batch_ids.append(batch_id)
    return batch_ids


def _freeze_batch(conn: Connection, rt: Runtime, works: Sequence[Work], token: str,
                  now: datetime, *, channel: str, journey_id: str, step_id: str,
                  content_version: str) -> str | None:
    batch_id = uuid.uuid4().hex  # 32 bytes: within clientmsgid's 64
    frozen = set(conn.execute(
        update(TOUCHES)
        .where(TOUCHES.c.id.in_([w.id for w in works]), _claimed(token))
        .values(status="sending", batch_id=batch_id, reserved_at=now, claim_token=None,
                lease_until=_lease(rt), channel=channel)
        .returning(TOUCHES.c.id)
    ).scalars())
    lost = [w for w in works if w.id not in frozen]  # cancelled by a goal meanwhile
    if lost:
        release_caps(rt, [w for w in lost if w.reserved])
    members = [w for w in works if w.id in frozen]
    if not members:
        return None
    conn.execute(
        update(TOUCHES).where(TOUCHES.c.id == bindparam("b_id"))
        .values(link_code=bindparam("code")),
        [{"b_id": w.id, "code": w.link.rsplit("/", 1)[-1] if w.link else None} for w in members],
    )
    payload = _payload(members, options=_options(rt, members[0]), content_version=content_version)
    conn.execute(insert(BATCHES).values(
        id=batch_id, channel=channel, journey_id=journey_id, step_id=step_id, state="frozen",
        attempts=0, created_at=now, payload=payload,
        sender=members[0].user.get("wecom_sender") if channel == "wecom_group_invite" else None,
    ))
    return batch_id


def _lease(rt: Runtime) -> datetime:
    from orchestrator.clock import utcnow

    return utcnow() + timedelta(seconds=rt.settings.claim_lease_s)


def _options(rt: Runtime, work: Work) -> dict[str, str]:
    sms = work.policy.sms
    options = {
        "signature": sms.signature,
        "opt_out_suffix": sms.opt_out_suffix,
        "price_per_segment": str(sms.price_per_segment),
        "default_sender": rt.settings.wecom_default_sender,
        "template_id": rt.settings.wechat_template_id,
    }
    if work.step.group:
        options["group"] = work.step.group
        options["chat_id"] = rt.settings.wecom_groups.get(work.step.group, work.step.group)
    options.update(step_options(work.step, rt.book.templates_dir_for(work.journey)))
    return options


def _payload(works: Sequence[Work], *, options: Mapping[str, str],
             content_version: str) -> dict[str, Any]:
    return {
        "options": dict(options),
        "content_version": content_version,
        "messages": [
            {"touch_id": w.id, "key": w.key, "text": w.text, "title": w.title, "link": w.link,
             "recipient": {"user_id": w.user["user_id"],
                           **{f: w.user.get(f) for f in RECIPIENT_FIELDS}}}
            for w in works
        ],
    }


def request_of(batch: RowMapping, only: set[int] | None = None) -> SendRequest:
    payload = batch["payload"]
    messages = tuple(
        Message(touch_id=m["touch_id"], key=m["key"], recipient=Recipient(**m["recipient"]),
                text=m["text"], title=m["title"], link=m["link"])
        for m in payload["messages"]
        if only is None or m["touch_id"] in only
    )
    return SendRequest(
        batch_id=batch["id"], channel=batch["channel"], journey_id=batch["journey_id"],
        step_id=batch["step_id"], content_version=payload["content_version"],
        messages=messages, options=payload["options"], created_at=batch["created_at"],
    )


# --- 2. the provider call ------------------------------------------------------------------

def deliver_batch(rt: Runtime, batch_id: str) -> None:
    """Call the provider for a frozen batch. Raises ``RetryLater`` on a retryable failure."""
    now = rt.clock.now()
    with begin_write(rt.db) as conn:
        batch = conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).mappings().first()
        if batch is None or batch["state"] != "frozen":
            return
        sending = set(conn.execute(select(TOUCHES.c.id).where(
            TOUCHES.c.batch_id == batch_id, TOUCHES.c.status == "sending")).scalars())
        conn.execute(update(TOUCHES).where(TOUCHES.c.id.in_(sending))
                     .values(lease_until=_lease(rt)))
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id)
                     .values(attempts=BATCHES.c.attempts + 1))
    if not sending:
        return
    request = request_of(batch, sending)
    try:
        results = rt.channel(batch["channel"]).send(request)
    except ChannelRetryable as exc:
        _retryable(rt, batch, request, exc, now)
        return
    except ChannelUnknown as exc:
        _mark(rt, batch_id, "unknown", f"unknown:{exc.code or 'timeout'}", request, now)
        return
    except ChannelConfig as exc:
        log.error("channel %s refused our configuration: %s", batch["channel"], exc)
        _mark(rt, batch_id, "failed", f"config:{exc.code}", request, now, audit=str(exc))
        return
    record_results(rt, batch_id, results, now)


def _retryable(rt: Runtime, batch: RowMapping, request: SendRequest,
               exc: ChannelRetryable, now: datetime) -> None:
    attempts = int(batch["attempts"]) + 1
    if attempts >= rt.settings.max_attempts:
        _mark(rt, batch["id"], "failed", f"retries_exhausted:{exc.code}", request, now)
        return
    delay = exc.retry_after_s or min(60.0, 2.0 ** attempts) * (0.5 + random.random())
    raise RetryLater(delay, f"{batch['channel']} {exc.code}: {exc}")


def _mark(rt: Runtime, batch_id: str, status: str, reason: str, request: SendRequest,
          now: datetime, audit: str | None = None) -> None:
    results = [TouchResult(m.touch_id, status, reason=reason)  # type: ignore[arg-type]
               for m in request.messages]
    record_results(rt, batch_id, results, now)
    if audit:
        with begin_write(rt.db) as conn:
            conn.execute(insert(AUDIT).values(at=now, actor="engine", action="channel_config",
                                              subject=request.channel,
                                              detail={"batch": batch_id, "error": audit}))


def record_results(rt: Runtime, batch_id: str, results: Sequence[TouchResult],
                   now: datetime) -> None:
    if not results:
        return
    rows = [{
        "b_id": r.touch_id, "status": r.status, "reason": r.reason,
        "pmid": r.provider_message_id, "segments": r.segments, "cost": r.cost,
        "sent_at": now if r.status in ("sent", "delivered") else None,
        "delivered_at": now if r.status == "delivered" else None,
    } for r in results]
    with begin_write(rt.db) as conn:
        conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.id == bindparam("b_id"),
                   or_(TOUCHES.c.status == "sending", TOUCHES.c.status == "unknown"))
            .values(status=bindparam("status"), reason=bindparam("reason"),
                    provider_message_id=bindparam("pmid"), segments=bindparam("segments"),
                    cost=bindparam("cost"), sent_at=bindparam("sent_at"),
                    delivered_at=bindparam("delivered_at"), lease_until=None),
            rows,
        )
        states = {r.status for r in results}
        state = "unknown" if "unknown" in states else ("sent" if states & {"sent", "delivered"}
                                                      else "failed")
        ref = next((r.provider_message_id for r in results if r.provider_message_id), None)
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id)
                     .values(state=state, provider_ref=ref, sent_at=now))
        touches = conn.execute(select(TOUCHES).where(
            TOUCHES.c.id.in_([r.touch_id for r in results]))).mappings().all()
        settle(rt, conn, [t for t in touches if t["status"] in TERMINAL], now)
    rejected = [r for r in results if r.status == "failed" and r.reason != "unknown_outcome"]
    release_caps(rt, rejected_touches(touches, rejected))
    _opted_out_at_provider(rt, touches, results, now)


def _opted_out_at_provider(rt: Runtime, touches: Sequence[RowMapping],
                           results: Sequence[TouchResult], now: datetime) -> None:
    """A provider that says the number opted out (Twilio 21610) feeds our own list, so no
    journey tries that person on SMS again."""
    users = {t["id"]: t["user_id"] for t in touches}
    for r in results:
        if r.status == "failed" and r.reason == "opted_out:sms" and r.touch_id in users:
            record_opt_out(rt.db, channel="sms", user_id=users[r.touch_id],
                           reason="provider:21610", at=now)


def rejected_touches(touches: Sequence[RowMapping],
                     rejected: Sequence[TouchResult]) -> list[RowMapping]:
    ids = {r.touch_id for r in rejected}
    return [t for t in touches if t["id"] in ids]


# --- 3. reconciliation ---------------------------------------------------------------------

def reconcile_batch(rt: Runtime, batch_id: str) -> None:
    """Ask the provider what became of ``unknown`` touches; never resend."""
    now = rt.clock.now()
    with rt.db.connect() as conn:
        batch = conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).mappings().first()
        unknown = set(conn.execute(select(TOUCHES.c.id).where(
            TOUCHES.c.batch_id == batch_id, TOUCHES.c.status == "unknown")).scalars())
    if batch is None or not unknown:
        return
    request = request_of(batch, unknown)
    try:
        results = rt.channel(batch["channel"]).reconcile(request)
    except (ChannelRetryable, ChannelUnknown) as exc:
        raise RetryLater(30.0, f"reconcile {batch_id}: {exc}") from exc
    settled = [r if r.status != "unknown" else TouchResult(r.touch_id, "failed",
                                                           reason="unknown_outcome")
               for r in results]
    answered = {r.touch_id for r in settled}
    settled += [TouchResult(t, "failed", reason="unknown_outcome") for t in unknown - answered]
    record_results(rt, batch_id, settled, now)


# --- 4. moving enrollments on ---------------------------------------------------------------

def settle(rt: Runtime, conn: Connection, touches: Sequence[Mapping[str, Any] | RowMapping],
           now: datetime) -> None:
    """Each enrollment waiting on a now-terminal touch moves to its next step at ``now``."""
    rows = [
        {"b_id": t["enrollment_id"],
         "b_cursor": rt.book.get(rt.db, t["journey_id"], t["journey_version"])
         .step_index(t["step_id"]),
         "due_at": now}
        for t in touches if t["status"] != "cancelled"
    ]
    if not rows:
        return
    conn.execute(
        update(ENROLLMENTS)
        .where(ENROLLMENTS.c.id == bindparam("b_id"),
               ENROLLMENTS.c.cursor == bindparam("b_cursor"),
               ENROLLMENTS.c.state == "active", ENROLLMENTS.c.due_at.is_(None))
        .values(cursor=ENROLLMENTS.c.cursor + 1, due_at=bindparam("due_at")),
        rows,
    )
