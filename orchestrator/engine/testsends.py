"""Test sends: a journey's send steps to a seed list, uncapped and never counted.

Two ways in: ``recall send-test JOURNEY --to LIST`` (``send_test``), and a journey's
``test_recipients:`` (``seed_copies``, called by the cursor pass when a version's step
first creates touches). Either way a test send is an ordinary touch row with ``test`` set,
claimed, gated, frozen into a send batch and driven to a definite outcome by the same
delivery code as every other touch, so it is sent at most once and reconciled when in doubt.

What differs, and where:
- it has no enrollment: its ``enrollment_id`` is negative, a hash that names the run
  (``send-test``) or the version (seed list) and the person, so ``(enrollment, step)`` stays
  its idempotency key; the gates get a stand-in enrollment (``stand_in_enrollment``);
- caps and quiet hours skip it (``policy_gates``); consent does not: an opted-out person
  is not sent to;
- its batches hold test touches only (``delivery._freeze``), and every count leaves test
  touches and their batches out: reports, exports, the dashboard, metrics, features.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select

from orchestrator.clock import utcnow
from orchestrator.engine.book import upsert
from orchestrator.engine.runtime import Runtime
from orchestrator.errors import InputError, NotFoundError
from orchestrator.journeys.assign import variant_for
from orchestrator.journeys.model import Journey, SendStep
from orchestrator.journeys.preview import sample_pools
from orchestrator.logs import mask_id, mask_phone
from orchestrator.store.db import begin_write
from orchestrator.store.tables import AUDIT_LOG as AUDIT
from orchestrator.store.tables import SEND_BATCHES as BATCHES
from orchestrator.store.tables import TOUCHES, USERS
from orchestrator.store.types import among

MAX_RECIPIENTS = 100  # a seed list, not an audience
ADDRESS = {"sms": "phone", "wechat_article": "openid", "wecom_group_invite": "external_userid"}
log = logging.getLogger(__name__)
_SPLIT = re.compile(r"[,\s]+")


def test_enrollment_id(*parts: str) -> int:
    """A negative id no real enrollment has (real ids count up from 1): 62 bits of a hash of
    ``parts``, so the same run and person always get the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return -(int.from_bytes(digest[:8], "big") >> 2) - 1


def stand_in_enrollment(touch: Mapping[Any, Any], journey: Journey) -> dict[str, Any]:
    """What the gates read from an enrollment, for a test touch (which has none): active,
    treatment content, the entry event without props and each pool's first code, as
    ``recall preview`` shows them."""
    data: dict[str, Any] = dict(sample_pools(journey))
    if journey.entry.event:
        data["event"] = {"name": journey.entry.event, "props": {}, "value": None,
                         "ts": touch["due_at"].isoformat()}
    return {"id": touch["enrollment_id"], "journey_id": journey.id, "state": "active",
            "arm": "treatment", "exit_reason": None, "data": data}


def test_touch(journey: Journey, step: SendStep, user_id: str, *, enrollment_id: int,
               due_at: datetime) -> dict[str, Any]:
    """A test touch row: the person's own variant, the step's channel, due at once."""
    return {
        "enrollment_id": enrollment_id, "journey_id": journey.id,
        "journey_version": journey.version, "user_id": user_id, "arm": "treatment",
        "step_id": step.id, "channel": step.send, "planned_channel": step.send,
        "variant": variant_for(journey.id, step, user_id), "rung_arm": None,
        "priority": journey.priority, "status": "scheduled", "due_at": due_at,
        "first_due_at": due_at, "attempts": 0, "segments": 0, "cost": 0.0, "test": True,
    }


def audit_test(conn: Connection, *, at: datetime, actor: str, action: str, journey: Journey,
               recipients: Sequence[str], steps: Sequence[str], **extra: Any) -> None:
    conn.execute(insert(AUDIT).values(
        at=at, actor=actor, action=action, subject=f"journey:{journey.id}",
        detail={"version": journey.version, "recipients": list(recipients),
                "steps": list(steps), **extra}))


# --- recall send-test ----------------------------------------------------------------------

def parse_recipients(value: str) -> list[str]:
    """``--to``: user ids separated by commas (or spaces), or ``@FILE`` naming a file of user
    ids (one a line or comma-separated; ``#`` starts a comment). Duplicates are dropped."""
    text = value.strip()
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise InputError(f"--to {text}: cannot read {path} ({exc.strerror or exc})",
                             field="--to") from None
        text = "\n".join(line.split("#", 1)[0] for line in raw.splitlines())
    ids = list(dict.fromkeys(part for part in _SPLIT.split(text) if part))
    if not ids:
        raise InputError("--to names nobody: give user ids separated by commas "
                         "(--to u1,u2) or @FILE with one user id a line", field="--to")
    if len(ids) > MAX_RECIPIENTS:
        raise InputError(f"--to names {len(ids)} people; a test send goes to at most "
                         f"{MAX_RECIPIENTS} (it is a seed list, not an audience: launch the "
                         "journey with `recall enroll` to reach more)", field="--to")
    return ids


@dataclass(frozen=True)
class TestOutcome:
    step_id: str
    channel: str
    user_id: str
    address: str  # the identity the channel reached the person by, masked
    status: str  # as the touch's: sent, delivered, suppressed, failed, sending, unknown
    reason: str | None
    error: str | None  # the provider's words, when a batch was refused as a whole

    @property
    def outcome(self) -> str:
        if self.status in ("sent", "delivered"):
            return "sent"
        if self.status in ("suppressed", "failed", "cancelled"):
            return self.status
        return "pending"  # in flight or in doubt: the engine's worker settles it


@dataclass(frozen=True)
class SendTestResult:
    journey_id: str
    version: str
    run: str
    outcomes: list[TestOutcome]


def send_test(rt: Runtime, journey_id: str, user_ids: Sequence[str], *,
              actor: str | None = None) -> SendTestResult:
    """Every send step of the journey's current version to ``user_ids`` (imported users), now,
    through the engine's delivery; returns each touch's outcome. Checks everything (journey,
    steps, people, Redis, the channels' settings) before it writes anything."""
    journey = rt.book.latest(journey_id)
    steps = journey.send_steps()
    if not steps:
        raise InputError(f"journey {journey.id!r} has no send step: nothing to test")
    if not user_ids:
        raise InputError("no recipient: give --to with at least one user id", field="--to")
    _check_users(rt, user_ids)
    rt.redis.ping()
    for step in steps:  # settings a channel needs are checked before anything is written
        for name in filter(None, (step.send, step.fallback)):
            rt.channel(name)
    now, run, token = rt.clock.now(), secrets.token_hex(8), secrets.token_hex(8)
    rt.book.record_version(rt.db, journey, now=now)
    rows = [
        {**test_touch(journey, step, user_id, due_at=now,
                      enrollment_id=test_enrollment_id("send-test", run, user_id)),
         "status": "claimed", "claim_token": token,
         "lease_until": utcnow() + timedelta(seconds=rt.settings.claim_lease_s)}
        for step in steps for user_id in user_ids  # ids in step order, then recipient order
    ]
    with begin_write(rt.db) as conn:
        ids = list(conn.execute(insert(TOUCHES).values(rows).returning(TOUCHES.c.id)).scalars())
        audit_test(conn, at=now, actor=actor or _who(), action="send_test", journey=journey,
                   recipients=user_ids, steps=[s.id for s in steps], run=run)
    _deliver(rt, ids, token)
    return SendTestResult(journey.id, journey.version, run, outcomes(rt, ids))


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _check_users(rt: Runtime, user_ids: Sequence[str]) -> None:
    with rt.db.connect() as conn:
        known = set(conn.execute(select(USERS.c.user_id).where(
            among(USERS.c.user_id, user_ids))).scalars())
    unknown = [u for u in user_ids if u not in known]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise NotFoundError(
            f"--to names {len(unknown)} user{'s' if len(unknown) > 1 else ''} not imported: "
            f"{shown}{more}; a test send goes to imported users (`recall import users FILE`)")


def _deliver(rt: Runtime, touch_ids: Sequence[int], token: str) -> None:
    """As a worker does with a claim: gate and freeze, then drive each batch. A batch left in
    doubt stays with the engine: a running worker's tick drives it to its outcome."""
    from orchestrator.engine.delivery import drive_batch, process_touches

    for batch_id in process_touches(rt, touch_ids, token):
        try:
            drive_batch(rt, batch_id, token)
        except Exception:  # one batch's error must not stop the others
            log.exception("test batch %s: delivery stopped; a later tick resumes it", batch_id)


def outcomes(rt: Runtime, touch_ids: Sequence[int]) -> list[TestOutcome]:
    """Each test touch as it stands, in the order the touches were made."""
    with rt.db.connect() as conn:
        touches = conn.execute(select(TOUCHES).where(among(TOUCHES.c.id, touch_ids))
                               .order_by(TOUCHES.c.id)).mappings().all()
        users = {r["user_id"]: r for r in conn.execute(select(USERS).where(
            among(USERS.c.user_id, {t["user_id"] for t in touches}))).mappings()}
        errors = dict(conn.execute(select(BATCHES.c.id, BATCHES.c.error).where(
            among(BATCHES.c.id, {t["batch_id"] for t in touches if t["batch_id"]}),
            BATCHES.c.error.is_not(None))).all())
    return [
        TestOutcome(t["step_id"], t["channel"], t["user_id"],
                    masked_address(users.get(t["user_id"]), t["channel"]), t["status"],
                    t["reason"], errors.get(t["batch_id"]))
        for t in touches
    ]


def masked_address(user: Mapping[Any, Any] | None, channel: str) -> str:
    """The identity ``channel`` reaches the person by, masked as in logs; ``-`` if none."""
    value = (user or {}).get(ADDRESS.get(channel, ""))
    if not value:
        return "-"
    return mask_phone(value) if channel == "sms" else mask_id(value)


# --- test_recipients: a seed list's copy of each step ----------------------------------------

def seed_copies(conn: Connection, journey: Journey, step_ids: Iterable[str],
                due_at: datetime, *, now: datetime) -> int:
    """The journey's ``test_recipients`` get one copy of each step in ``step_ids`` for this
    version, due with the step's first real touches; a later call for the same version and
    step adds nothing (the seed's enrollment id names the version). Returns copies created."""
    seeds = list(dict.fromkeys(journey.test_recipients))
    steps = [s for s in journey.send_steps() if s.id in set(step_ids)]
    if not seeds or not steps:
        return 0
    rows = [test_touch(journey, step, user_id, due_at=due_at, enrollment_id=test_enrollment_id(
                "seed", journey.id, journey.version, user_id))
            for step in steps for user_id in seeds]
    made = list(conn.execute(upsert(conn.engine)(TOUCHES).values(rows)
                             .on_conflict_do_nothing().returning(TOUCHES.c.step_id)).scalars())
    for step_id in dict.fromkeys(made):
        audit_test(conn, at=now, actor="engine", action="test_recipients", journey=journey,
                   recipients=seeds, steps=[step_id])
    return len(made)
