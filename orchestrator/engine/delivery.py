"""From claimed touches to provider calls, exactly once.

1. ``process_touches`` loads the touches still claimed under the task's token, runs the
   gates (pipeline), records every decision, and *freezes* what is ready into send batches:
   a ``send_batches`` row holding the whole request, its touches moved to ``sending`` —
   committed before the first provider call, the batch leased to the same task.
2. ``drive_batch`` drives a frozen batch to a definite outcome, as whoever holds its lease
   (the task that froze it, or a later tick once that lease ran out): look up first when a
   call may have reached the provider, record what the provider has, send (same batch id,
   WeChat's ``clientmsgid``) only what it definitely does not have. Attempts, the next
   attempt time and the lease live in the batch row (``attempts`` has the rules).
3. ``settle`` moves each enrollment past a touch that reached a terminal state: the next
   step's wait starts at that moment (written at once when nothing else decides it: the
   journey's end, an exit, a plain wait; else a cursor pass runs now).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, bindparam, func, insert, or_, select, update

from orchestrator.channels.base import (
    PER_RECIPIENT,
    Message,
    Recipient,
    SendRequest,
    TouchResult,
)
from orchestrator.clock import as_utc, utcnow
from orchestrator.engine.attempts import (
    OPEN_STATES,
    BatchClock,
    RetryPolicy,
    after_attempt,
    next_action,
    retry_delay,
)
from orchestrator.engine.cursors import user_timezone
from orchestrator.engine.pipeline import Work, run_gates
from orchestrator.engine.policy_gates import gates_for, release_caps
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.step_options import step_options
from orchestrator.engine.steps import Next, after_send
from orchestrator.engine.testsends import stand_in_enrollment
from orchestrator.errors import ChannelConfig, ChannelRetryable, ChannelUnknown
from orchestrator.journeys.model import SendStep
from orchestrator.policy.consent import record_opt_out
from orchestrator.store.db import begin_write
from orchestrator.store.tables import AUDIT_LOG as AUDIT
from orchestrator.store.tables import ENROLLMENTS, LINKS, TOUCHES, USERS
from orchestrator.store.tables import SEND_BATCHES as BATCHES
from orchestrator.store.types import among

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
        select(TOUCHES).where(among(TOUCHES.c.id, ids), TOUCHES.c.status == "claimed",
                              TOUCHES.c.claim_token == token)
        .order_by(TOUCHES.c.id)
    ).mappings().all()
    if not touches:
        return []
    enrollments = {
        r["id"]: dict(r)
        for r in conn.execute(select(ENROLLMENTS).where(
            among(ENROLLMENTS.c.id, {t["enrollment_id"] for t in touches}))).mappings()
    }
    users = {
        r["user_id"]: dict(r)
        for r in conn.execute(select(USERS).where(
            among(USERS.c.user_id, {t["user_id"] for t in touches}))).mappings()
    }
    works = []
    for t in touches:
        journey = rt.book.get(rt.db, t["journey_id"], t["journey_version"])
        step = journey.steps[journey.step_index(t["step_id"])]
        assert isinstance(step, SendStep)
        user = users.get(t["user_id"]) or {"user_id": t["user_id"], "attributes": {}}
        policy = rt.book.policy_for(journey)
        enrollment = enrollments.get(t["enrollment_id"])
        if enrollment is None and t["test"]:
            enrollment = stand_in_enrollment(t, journey)
        assert enrollment is not None, f"touch {t['id']} has no enrollment"
        works.append(Work(
            touch=dict(t), enrollment=enrollment, user=user,
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
                                  "claim_token": None, "lease_until": None,
                                  "reserved_at": None}  # not frozen: it holds no slot
        if due_at is not None:
            values["due_at"] = due_at
        done = set(conn.execute(
            update(TOUCHES).where(among(TOUCHES.c.id, [w.id for w in group]), _claimed(token))
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
    # Test touches go in batches of their own: a real batch's call and its aggregate
    # result (a mass send's counts) never include a seed.
    groups: dict[tuple[str, str, str, str, str | None, bool], list[Work]] = defaultdict(list)
    for w in works:
        t = w.touch
        groups[(w.channel, t["journey_id"], t["journey_version"], t["step_id"],
                t["variant"], bool(t.get("test")))].append(w)
    batch_ids = []
    for (channel, journey_id, version, step_id, variant, _test), members in groups.items():
        adapter = rt.channel(channel)
        for chunk, shared in content_batches(members, size=adapter.max_batch,
                                             one_text=adapter.one_text):
            batch_id = _freeze_batch(conn, rt, chunk, token, now, channel=channel,
                                     journey_id=journey_id, step_id=step_id, shared=shared,
                                     content_version=f"{version}:{step_id}:{variant or '-'}")
            if batch_id:
                batch_ids.append(batch_id)
    return batch_ids


def content_batches(works: Sequence[Work], *, size: int,
                    one_text: bool) -> Iterator[tuple[list[Work], bool | None]]:
    """The batches of one step's touches, at most ``size`` each, and whether each is shared.

    A channel that sends one text per call (``one_text``) never gets a batch whose
    recipients' content differs: touches whose rendered content (title, text, link) is
    identical go together (``shared``: the batch holds that content once); a touch whose
    content is its own goes into a per-recipient batch (``False``), which the channel sends
    by one call per recipient. Other channels send each message its own text (``None``).
    """
    if not one_text:
        yield from ((chunk, None) for chunk in _chunks(list(works), size))
        return
    alike: dict[tuple[str | None, str, str | None], list[Work]] = defaultdict(list)
    for w in works:
        alike[(w.title, w.text, w.link)].append(w)
    for group in alike.values():
        if len(group) > 1:
            yield from ((chunk, True) for chunk in _chunks(group, size))
    own = [group[0] for group in alike.values() if len(group) == 1]
    yield from ((chunk, False) for chunk in _chunks(own, size))


def _chunks(works: list[Work], size: int) -> Iterator[list[Work]]:
    for start in range(0, len(works), size):
        yield works[start : start + size]


def _freeze_batch(conn: Connection, rt: Runtime, works: Sequence[Work], token: str,
                  now: datetime, *, channel: str, journey_id: str, step_id: str,
                  shared: bool | None, content_version: str) -> str | None:
    batch_id = uuid.uuid4().hex  # 32 bytes: within clientmsgid's 64
    frozen = set(conn.execute(
        update(TOUCHES)
        .where(among(TOUCHES.c.id, [w.id for w in works]), _claimed(token))
        .values(status="sending", batch_id=batch_id, reserved_at=now, claim_token=None,
                lease_until=None, channel=channel)
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
    options = _options(rt, members[0])
    if shared is False:
        options["mode"] = PER_RECIPIENT
    payload = _payload(members, options=options, content_version=content_version,
                       shared=bool(shared))
    conn.execute(insert(BATCHES).values(
        id=batch_id, channel=channel, journey_id=journey_id, step_id=step_id, state="frozen",
        attempts=0, unanswered=0, created_at=now, payload=payload,
        # Leased to the task that froze it, which delivers it next; should that task die,
        # the lease runs out and a tick hands the batch to another worker.
        lease_token=token, lease_until=utcnow() + timedelta(seconds=rt.settings.delivery_lease_s),
        sender=members[0].user.get("wecom_sender") if channel == "wecom_group_invite" else None,
    ))
    return batch_id


def _options(rt: Runtime, work: Work) -> dict[str, str]:
    sms = work.policy.sms
    options = {
        "signature": sms.signature,
        "opt_out_suffix": sms.opt_out_suffix,
        "price_per_segment": str(sms.price_per_segment),
        "default_sender": rt.settings.wecom_default_sender,
        "template_id": rt.settings.wechat_template_id,
    }
    if work.touch.get("test"):
        options["preview"] = "1"  # an article test goes by WeChat's preview, not a mass send
    if work.step.group:
        options["group"] = work.step.group
        options["chat_id"] = rt.settings.wecom_groups.get(work.step.group, work.step.group)
    options.update(step_options(work.step, rt.book.templates_dir_for(work.journey)))
    return options


CONTENT_FIELDS = ("text", "title", "link")


def _payload(works: Sequence[Work], *, options: Mapping[str, str], content_version: str,
             shared: bool) -> dict[str, Any]:
    """The frozen request. A shared batch holds its one content once (``content``), not per
    recipient; otherwise each message carries its own."""
    payload: dict[str, Any] = {"options": dict(options), "content_version": content_version}
    if shared:
        payload["content"] = _content(works[0])
    payload["messages"] = [
        {"touch_id": w.id, "key": w.key, **({} if shared else _content(w)),
         "recipient": {"user_id": w.user["user_id"],
                       **{f: w.user.get(f) for f in RECIPIENT_FIELDS}}}
        for w in works
    ]
    return payload


def _content(w: Work) -> dict[str, Any]:
    return {"text": w.text, "title": w.title, "link": w.link}


def request_of(batch: RowMapping, only: set[int] | None = None) -> SendRequest:
    payload = batch["payload"]
    shared = payload.get("content") or {}
    messages = tuple(
        Message(touch_id=m["touch_id"], key=m["key"], recipient=Recipient(**m["recipient"]),
                **{f: m[f] if f in m else shared[f] for f in CONTENT_FIELDS})
        for m in payload["messages"]
        if only is None or m["touch_id"] in only
    )
    return SendRequest(
        batch_id=batch["id"], channel=batch["channel"], journey_id=batch["journey_id"],
        step_id=batch["step_id"], content_version=payload["content_version"],
        messages=messages, options=payload["options"], created_at=batch["created_at"],
    )


# --- 2. driving a frozen batch to a definite outcome ---------------------------------------

@dataclass(frozen=True)
class _Attempt:
    batch: RowMapping
    open: frozenset[int]
    lookup: bool  # look up what the provider has (else: send what is open)
    lookup_until: datetime | None


def drive_batch(rt: Runtime, batch_id: str, token: str) -> None:
    """Drive a frozen batch toward a definite outcome, as the holder of its lease ``token``.

    Each attempt is marked in the row (``state = unknown``, counters) and committed before
    the provider call, so a worker that dies anywhere leaves a batch that the next holder
    looks up rather than sends blindly. An attempt whose lookup finds messages absent goes
    straight on to send them. A batch not due, not ours, or done is left alone. Raises only
    for errors outside the provider call (the database, Redis): the lease then runs out and
    the next tick resumes the batch.
    """
    for _ in range(MAX_STEPS_PER_DRIVE):
        attempt = _begin_attempt(rt, batch_id, token)
        if attempt is None:
            return
        now = rt.clock.now()
        try:
            with LeaseKeeper(rt, batch_id, token):
                results = _call(rt, attempt, now)
            go_on = _finish_attempt(rt, attempt, results, token, now)
        except Exception:
            _hold_off(rt, attempt, token)
            raise
        if not go_on:
            return


MAX_STEPS_PER_DRIVE = 3  # a lookup, a send of what it found absent, and one spare


def _retry_policy(rt: Runtime) -> RetryPolicy:
    s = rt.settings
    return RetryPolicy(max_attempts=s.max_attempts, base_s=s.retry_base_s, cap_s=s.retry_cap_s,
                       deadline=timedelta(seconds=s.delivery_deadline_s))


def _open_touches(conn: Connection, batch_id: str) -> list[RowMapping]:
    return list(conn.execute(select(TOUCHES).where(
        TOUCHES.c.batch_id == batch_id, TOUCHES.c.status.in_(("sending", "unknown")))
    ).mappings())


def _ours(batch_id: str, token: str) -> Any:
    return (BATCHES.c.id == batch_id) & (BATCHES.c.lease_token == token)


def _begin_attempt(rt: Runtime, batch_id: str, token: str) -> _Attempt | None:
    """Decide the next step under the lease and, for a provider call, mark it in doubt."""
    now, real_now = rt.clock.now(), utcnow()
    with begin_write(rt.db) as conn:
        batch = conn.execute(select(BATCHES).where(_ours(batch_id, token))).mappings().first()
        if batch is None:
            return None  # another holder took it over, or it is gone
        if batch["state"] not in OPEN_STATES:
            _release(conn, batch_id, token)
            return None
        touches = _open_touches(conn, batch_id)
        if not touches:
            _close(conn, batch_id, token)
            return None
        lookup_until = _lookup_until(rt, batch, {t["id"] for t in touches})
        action = next_action(_clock_of(batch, lookup_until), now=now, real_now=real_now,
                             policy=_retry_policy(rt))
        if action == "wait":
            _release(conn, batch_id, token)
            return None
        if action in ("give_up_unknown", "give_up_expired"):
            released = _give_up(rt, conn, batch, touches, action, token, now)
        else:
            conn.execute(update(BATCHES).where(_ours(batch_id, token)).values(
                state="unknown", attempts=BATCHES.c.attempts + 1,
                unanswered=BATCHES.c.unanswered + 1, next_attempt_at=None,
                first_attempt_at=func.coalesce(BATCHES.c.first_attempt_at, now),
                lease_until=real_now + timedelta(seconds=rt.settings.delivery_lease_s)))
            return _Attempt(batch, frozenset(t["id"] for t in touches),
                            lookup=action == "lookup", lookup_until=lookup_until)
    release_caps(rt, released)
    return None


def _clock_of(batch: RowMapping, lookup_until: datetime | None) -> BatchClock:
    return BatchClock(
        state=batch["state"], unanswered=int(batch["unanswered"]),
        next_attempt_at=as_utc(batch["next_attempt_at"]) if batch["next_attempt_at"] else None,
        created_at=as_utc(batch["created_at"]), lookup_until=lookup_until)


def _lookup_until(rt: Runtime, batch: RowMapping, open_ids: set[int]) -> datetime | None:
    """The last business moment a lookup may repeat the call: inside the provider's dedupe
    window (WeChat's clientmsgid: 24 h from the first call), with a margin."""
    window = getattr(rt.channel(batch["channel"]), "dedupe_window", None)
    first = batch["first_attempt_at"]
    if window is None or first is None:
        return None
    span: timedelta | None = window(request_of(batch, open_ids))
    return None if span is None else as_utc(first) + span - DEDUPE_MARGIN


DEDUPE_MARGIN = timedelta(minutes=15)  # clocks drift; a repeat must land well inside


def _give_up(rt: Runtime, conn: Connection, batch: RowMapping, touches: Sequence[RowMapping],
             action: str, token: str, now: datetime) -> list[RowMapping]:
    """The last resort. In doubt: ``unknown_outcome``, the cap slot kept (the person may have
    it). Never sent and refused until the deadline: ``expired``, the slot freed."""
    in_doubt = action == "give_up_unknown"
    last = next((t["reason"] for t in touches if t["reason"]), None)
    reason = "unknown_outcome" if in_doubt else f"expired:{(last or 'refused').split(':')[-1]}"
    log.error("batch %s (%s, %d touches) given up as %s after %d attempts", batch["id"],
              batch["channel"], len(touches), reason, batch["attempts"])
    results = [TouchResult(t["id"], "failed", reason=reason) for t in touches]
    _write_results(rt, conn, results, now)
    _close(conn, batch["id"], token)
    return [] if in_doubt else list(touches)


def _call(rt: Runtime, attempt: _Attempt, now: datetime) -> list[TouchResult]:
    """One provider call (lookup or send): what it established of each open touch."""
    batch = attempt.batch
    request = request_of(batch, set(attempt.open))
    channel = rt.channel(batch["channel"])
    try:
        results = channel.reconcile(request) if attempt.lookup else channel.send(request)
    except (ChannelRetryable, ChannelUnknown) as exc:
        if attempt.lookup:  # the provider could not tell: still in doubt
            log.warning("batch %s: lookup failed: %s", batch["id"], exc)
            wait = exc.retry_after_s if isinstance(exc, ChannelRetryable) else None
            results = [TouchResult(m.touch_id, "unknown", reason=_code(exc), retry_after_s=wait)
                       for m in request.messages]
        elif isinstance(exc, ChannelRetryable):  # refused: nothing went out
            results = [TouchResult(m.touch_id, "absent", reason=_code(exc),
                                   retry_after_s=exc.retry_after_s) for m in request.messages]
        else:
            results = [TouchResult(m.touch_id, "unknown", reason=_code(exc))
                       for m in request.messages]
    except ChannelConfig as exc:
        if attempt.lookup:
            log.error("batch %s: the provider refused the lookup: %s", batch["id"], exc)
            results = [TouchResult(m.touch_id, "unknown", reason=f"config:{exc.code}")
                       for m in request.messages]
        else:
            log.error("channel %s refused our configuration: %s", batch["channel"], exc)
            _audit_config(rt, batch["id"], request.channel, str(exc), now)
            results = [TouchResult(m.touch_id, "failed", reason=f"config:{exc.code}")
                       for m in request.messages]
    return results


def _code(exc: ChannelRetryable | ChannelUnknown) -> str:
    return str(exc.code or ("timeout" if isinstance(exc, ChannelUnknown) else "retryable"))


def _finish_attempt(rt: Runtime, attempt: _Attempt, results: Sequence[TouchResult],
                    token: str, now: datetime) -> bool:
    """Record what the call established and schedule what remains. Facts are written even if
    the lease was lost meanwhile; the batch's own fields only by its holder."""
    batch = attempt.batch
    answered = {r.touch_id: r for r in results if r.touch_id in attempt.open}
    statuses = [answered[t].status if t in answered else "unknown" for t in attempt.open]
    state = after_attempt(statuses)
    go_on = state == "frozen" and attempt.lookup and not any(
        r.retry_after_s for r in answered.values())
    values: dict[str, Any] = {"state": state, "lease_until": None, "lease_token": None}
    if state == "unknown" or state == "frozen":
        values["next_attempt_at"] = None if go_on else utcnow() + timedelta(
            seconds=_delay(rt, batch, answered.values(), attempt.lookup_until, now))
        if state == "frozen":
            values["unanswered"] = 0
        if go_on:
            values.update(lease_until=BATCHES.c.lease_until, lease_token=token)
    else:
        values.update(unanswered=0, sent_at=now, next_attempt_at=None)
    ref = next((r.provider_message_id for r in results if r.provider_message_id), None)
    if ref:
        values["provider_ref"] = ref
    with begin_write(rt.db) as conn:
        touches = _write_results(rt, conn, list(answered.values()), now)
        conn.execute(update(BATCHES).where(_ours(batch["id"], token)).values(**values))
    _after_results(rt, touches, list(answered.values()), now)
    return go_on


def _delay(rt: Runtime, batch: RowMapping, results: Iterable[TouchResult],
           lookup_until: datetime | None, now: datetime) -> float:
    waits = [r.retry_after_s for r in results if r.retry_after_s is not None]
    return retry_delay(_retry_policy(rt), attempts=int(batch["attempts"]) + 1,
                       retry_after_s=max(waits) if waits else None,
                       lookup_until=lookup_until, now=now)


def _hold_off(rt: Runtime, attempt: _Attempt, token: str) -> None:
    """After an error outside the provider call: leave the batch in doubt (it is already
    marked so), due again after a back-off, lease released. Best effort: if the database is
    what failed, the lease simply runs out."""
    delay = retry_delay(_retry_policy(rt), attempts=int(attempt.batch["attempts"]) + 1,
                        retry_after_s=None, lookup_until=attempt.lookup_until,
                        now=rt.clock.now())
    try:
        with begin_write(rt.db) as conn:
            conn.execute(update(BATCHES).where(_ours(attempt.batch["id"], token)).values(
                next_attempt_at=utcnow() + timedelta(seconds=delay), lease_until=None,
                lease_token=None))
    except Exception:  # noqa: BLE001 - the original error is the one to report
        log.exception("batch %s: could not release its lease", attempt.batch["id"])


def _release(conn: Connection, batch_id: str, token: str) -> None:
    conn.execute(update(BATCHES).where(_ours(batch_id, token))
                 .values(lease_until=None, lease_token=None))


def _close(conn: Connection, batch_id: str, token: str) -> None:
    """Every touch is definite: the batch is done (sent if any touch went out)."""
    sent = conn.execute(select(func.count()).select_from(TOUCHES).where(
        TOUCHES.c.batch_id == batch_id,
        TOUCHES.c.status.in_(("sent", "delivered")))).scalar_one()
    conn.execute(update(BATCHES).where(_ours(batch_id, token)).values(
        state="sent" if sent else "failed", lease_until=None, lease_token=None,
        next_attempt_at=None))


def _audit_config(rt: Runtime, batch_id: str, channel: str, error: str, now: datetime) -> None:
    with begin_write(rt.db) as conn:
        conn.execute(insert(AUDIT).values(at=now, actor="engine", action="channel_config",
                                          subject=channel,
                                          detail={"batch": batch_id, "error": error}))
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(error=error))


class LeaseKeeper:
    """Renews a batch's lease every third of its length while a provider call runs: a slow
    call keeps its batch, and a dead worker's batch is free again one lease later."""

    def __init__(self, rt: Runtime, batch_id: str, token: str) -> None:
        self._rt, self._batch_id, self._token = rt, batch_id, token
        self._lease_s = rt.settings.delivery_lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"lease-{batch_id[:8]}")

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                with begin_write(self._rt.db) as conn:
                    kept = conn.execute(update(BATCHES).where(_ours(self._batch_id, self._token))
                                        .values(lease_until=utcnow() + timedelta(
                                            seconds=self._lease_s))).rowcount
            except Exception:  # noqa: BLE001 - the next renewal may succeed
                log.exception("batch %s: lease renewal failed", self._batch_id)
                continue
            if not kept:
                log.error("batch %s: lease lost during a provider call (another worker took "
                          "over); its results are still recorded", self._batch_id)
                return


# --- 3. recording what the provider said ---------------------------------------------------

def _write_results(rt: Runtime, conn: Connection, results: Sequence[TouchResult],
                   now: datetime) -> list[RowMapping]:
    """Write each touch's result (only over ``sending``/``unknown``); returns the rows."""
    if not results:
        return []
    rows = [_result_row(r, now) for r in results]
    conn.execute(
        update(TOUCHES)
        .where(TOUCHES.c.id == bindparam("b_id"),
               or_(TOUCHES.c.status == "sending", TOUCHES.c.status == "unknown"))
        .values(status=bindparam("status"), reason=bindparam("reason"),
                provider_message_id=bindparam("pmid"), segments=bindparam("segments"),
                cost=bindparam("cost"), sent_at=bindparam("sent_at"),
                delivered_at=bindparam("delivered_at")),
        rows,
    )
    touches = list(conn.execute(select(TOUCHES).where(
        among(TOUCHES.c.id, [r.touch_id for r in results]))).mappings())
    settle(rt, conn, [t for t in touches if t["status"] in TERMINAL], now)
    return touches


def _result_row(r: TouchResult, now: datetime) -> dict[str, Any]:
    # "absent": still to send, so the touch stays ``sending`` (the reason says why it waits).
    status = "sending" if r.status == "absent" else r.status
    return {
        "b_id": r.touch_id, "status": status, "reason": r.reason,
        "pmid": r.provider_message_id, "segments": r.segments, "cost": r.cost,
        "sent_at": now if r.status in ("sent", "delivered") else None,
        "delivered_at": now if r.status == "delivered" else None,
    }


def _after_results(rt: Runtime, touches: Sequence[RowMapping],
                   results: Sequence[TouchResult], now: datetime) -> None:
    """Once committed: definite rejections free their cap slots; a provider opt-out is
    recorded as ours."""
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


# --- 4. moving enrollments on ---------------------------------------------------------------

def settle(rt: Runtime, conn: Connection, touches: Sequence[Mapping[str, Any] | RowMapping],
           now: datetime) -> None:
    """Each enrollment waiting on a now-terminal touch moves past its step at ``now``: where
    that alone decides what follows (the journey ends, an exit, a plain wait), it is written
    here; otherwise the cursor is due at once and a cursor pass decides."""
    rows = []
    for t in touches:
        if t["status"] == "cancelled" or t.get("test"):  # a test touch has no enrollment
            continue
        journey = rt.book.get(rt.db, t["journey_id"], t["journey_version"])
        index = journey.step_index(t["step_id"])
        rows.append({"b_id": t["enrollment_id"], "b_cursor": index,
                     **_moved(after_send(journey, index + 1, now), index + 1, now)})
    if not rows:
        return
    conn.execute(
        update(ENROLLMENTS)
        .where(ENROLLMENTS.c.id == bindparam("b_id"),
               ENROLLMENTS.c.cursor == bindparam("b_cursor"),
               ENROLLMENTS.c.state == "active", ENROLLMENTS.c.due_at.is_(None))
        .values(cursor=bindparam("cursor"), due_at=bindparam("due_at"),
                state=bindparam("state"), exit_reason=bindparam("exit_reason"),
                exited_at=bindparam("exited_at")),
        rows,
    )


def _moved(nxt: Next | None, cursor: int, now: datetime) -> dict[str, Any]:
    if nxt is None:  # a cursor pass decides, now
        return {"cursor": cursor, "due_at": now, "state": "active", "exit_reason": None,
                "exited_at": None}
    if nxt.kind == "wait":
        return {"cursor": nxt.cursor, "due_at": nxt.due_at, "state": "active",
                "exit_reason": None, "exited_at": None}
    return {"cursor": nxt.cursor, "due_at": None, "state": "completed",
            "exit_reason": nxt.exit_reason, "exited_at": now}
