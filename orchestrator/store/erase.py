"""``recall forget USER``: erase one person's personal data everywhere (PIPL / GDPR).

What goes: identities (OpenID, UnionID, external_userid, phone, WeCom sender), time zone,
free attributes, event and trigger payloads, drawn coupon codes, the recipient and own text
of every frozen provider request (a batch's shared text, sent alike to several people,
stays), the query of every short-link target, derived features, the free text of opt-out
reasons (an SMS reply keeps only its kind, ``sms_reply``), and
what Redis holds about the person (their cap reservations, the OpenID in a mass send's
list of excluded recipients). Their active enrollments are ended (``exit_reason``
``erased``) and their unsent touches cancelled.

What stays, under a pseudonym (``erased-<hash>``) instead of the user id: the rows that
reports count (events by name and time, enrollments, touches, conversions), so journey
numbers do not change. Opt-outs keep working for the pseudonym; their identities are
replaced by one-way hashes.

The erasure is sticky: a ``forgotten`` opt-out on every channel is kept under the hash of
each of the person's identities (user id, phone, OpenID, UnionID, external_userid). A later
import of the same user id is refused, and another user id that arrives with one of those
phone numbers or OpenIDs is suppressed as ``erased`` (``orchestrator.policy.consent``).
The erasure itself is written to the audit log under the pseudonym, never the erased id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from sqlalchemy import Connection, Engine, delete, insert, select, update

from orchestrator.errors import NotFoundError
from orchestrator.policy.consent import (
    ALL_CHANNELS,
    FORGOTTEN,
    hashed_identity,
    identities_of,
    insert_opt_outs,
)
from orchestrator.store.db import begin_write
from orchestrator.store.tables import AUDIT_LOG as AUDIT
from orchestrator.store.tables import (
    CONVERSIONS,
    ENROLLMENTS,
    EVENTS,
    LINKS,
    OPT_OUTS,
    TOUCHES,
    USERS,
)
from orchestrator.store.tables import SEND_BATCHES as BATCHES
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.tables import WEBHOOK_RECEIPTS as RECEIPTS

ERASED = "[erased]"
ERASED_REASON = "erased"


@dataclass(frozen=True)
class Erasure:
    pseudonym: str
    rows: dict[str, int]


def pseudonym(user_id: str) -> str:
    return "erased-" + hashlib.sha256(f"recall-forget\n{user_id}".encode()).hexdigest()[:20]


def forget(engine: Engine, user_id: str, *, now: datetime, redis: Redis | None = None,
           actor: str = "cli") -> Erasure:
    """Erase ``user_id``'s personal data in one transaction; ``NotFoundError`` if unknown.

    ``redis``: the deployment's Redis, cleared first (``None`` when no Redis runs: the
    embedded one keeps nothing once stopped). Should the database transaction then fail,
    running ``forget`` again finishes the job.
    """
    alias = pseudonym(user_id)
    with engine.connect() as conn:
        user = conn.execute(select(USERS).where(USERS.c.user_id == user_id)).mappings().first()
        batches = _batch_ids(conn, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id!r} to forget (already forgotten, or never "
                            "imported); nothing was changed")
    if redis is not None:
        forget_in_redis(redis, user_id, openid=user["openid"], batch_ids=batches)
    with begin_write(engine) as conn:
        rows = _erase_rows(conn, user_id, alias, now)
        rows["opt_outs"] = _opt_outs(conn, user, alias)
        _remember_forgotten(conn, user, alias, now)
        rows["links"] = _links(conn, alias)
        rows["send_batches"] = _batches(conn, alias)
        conn.execute(insert(AUDIT).values(at=now, actor=actor, action="forget",
                                          subject=f"user:{alias}", detail=rows))
    return Erasure(alias, rows)


def _erase_rows(conn: Connection, user_id: str, alias: str, now: datetime) -> dict[str, int]:
    rows = {
        "enrollments_ended": conn.execute(update(ENROLLMENTS).where(
            ENROLLMENTS.c.user_id == user_id, ENROLLMENTS.c.state == "active").values(
            state="exited", exit_reason=ERASED_REASON, exited_at=now, due_at=None,
            lease_until=None)).rowcount,
        "touches_cancelled": conn.execute(update(TOUCHES).where(
            TOUCHES.c.user_id == user_id, TOUCHES.c.status.in_(("scheduled", "claimed"))).values(
            status="cancelled", reason=ERASED_REASON, claim_token=None)).rowcount,
    }
    return rows | {
        "users": conn.execute(update(USERS).where(USERS.c.user_id == user_id).values(
            user_id=alias, openid=None, unionid=None, external_userid=None,
            wecom_sender=None, phone=None, timezone=None, attributes={},
            erased=True, updated_at=now)).rowcount,
        "events": conn.execute(update(EVENTS).where(EVENTS.c.user_id == user_id)
                               .values(user_id=alias, props={})).rowcount,
        "enrollments": conn.execute(update(ENROLLMENTS).where(
            ENROLLMENTS.c.user_id == user_id).values(user_id=alias, data={})).rowcount,
        "touches": conn.execute(update(TOUCHES).where(TOUCHES.c.user_id == user_id)
                                .values(user_id=alias)).rowcount,
        "conversions": conn.execute(update(CONVERSIONS).where(
            CONVERSIONS.c.user_id == user_id).values(user_id=alias)).rowcount,
        "webhook_receipts": conn.execute(update(RECEIPTS).where(
            RECEIPTS.c.user_id == user_id).values(user_id=alias)).rowcount,
        "user_features": conn.execute(delete(FEATURES).where(
            FEATURES.c.user_id == user_id)).rowcount,
    }


def _batch_ids(conn: Connection, user_id: str) -> list[str]:
    return sorted(conn.execute(select(TOUCHES.c.batch_id).distinct().where(
        TOUCHES.c.user_id == user_id, TOUCHES.c.batch_id.is_not(None))).scalars())


def forget_in_redis(redis: Redis, user_id: str, *, openid: str | None,
                    batch_ids: list[str]) -> None:
    """Drop the person's cap reservations and their OpenID from mass-send ledgers."""
    from orchestrator.channels.ledger import drop_excluded
    from orchestrator.policy.caps import CapStore

    CapStore(redis).forget(user_id)
    if openid:
        drop_excluded(redis, batch_ids, [openid])


def _opt_outs(conn: Connection, user: Any, alias: str) -> int:
    """The person's opt-outs stay, by pseudonym and hashed identity; a reason keeps only its
    kind (an SMS reply's text goes)."""
    mine = conn.execute(select(OPT_OUTS.c.id, OPT_OUTS.c.identity, OPT_OUTS.c.reason).where(
        (OPT_OUTS.c.user_id == user["user_id"]) | OPT_OUTS.c.identity.in_(identities_of(user))
    )).all()
    for row in mine:
        identity = row.identity
        if not identity.startswith("sha256:"):
            identity = hashed_identity(identity)
        conn.execute(update(OPT_OUTS).where(OPT_OUTS.c.id == row.id).values(
            user_id=alias, identity=identity, reason=row.reason.split(":", 1)[0]))
    return len(mine)


def _remember_forgotten(conn: Connection, user: Any, alias: str, now: datetime) -> None:
    """A ``forgotten`` opt-out on every channel per hashed identity: the person stays
    suppressed if their data comes back with another import."""
    insert_opt_outs(conn, [
        {"channel": ALL_CHANNELS, "identity": hashed_identity(identity), "user_id": alias,
         "reason": FORGOTTEN, "created_at": now}
        for identity in identities_of(user)
    ])


def _links(conn: Connection, alias: str) -> int:
    """Short-link targets lose their query and fragment (they may carry the user id)."""
    links = conn.execute(
        select(LINKS.c.code, LINKS.c.target_url).join(TOUCHES, TOUCHES.c.id == LINKS.c.touch_id)
        .where(TOUCHES.c.user_id == alias)
    ).all()
    for link in links:
        parts = urlsplit(link.target_url)
        bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        conn.execute(update(LINKS).where(LINKS.c.code == link.code).values(target_url=bare))
    return len(links)


def _batches(conn: Connection, alias: str) -> int:
    """Frozen provider requests keep their shape; this person's messages lose their data."""
    touch_ids = set(conn.execute(select(TOUCHES.c.id).where(TOUCHES.c.user_id == alias))
                    .scalars())
    batch_ids = set(conn.execute(select(TOUCHES.c.batch_id).where(
        TOUCHES.c.user_id == alias, TOUCHES.c.batch_id.is_not(None))).scalars())
    for batch in conn.execute(select(BATCHES.c.id, BATCHES.c.payload)
                              .where(BATCHES.c.id.in_(batch_ids))).all():
        payload = dict(batch.payload or {})
        payload["messages"] = [
            _erased_message(m, alias) if m.get("touch_id") in touch_ids else m
            for m in payload.get("messages", [])
        ]
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch.id).values(payload=payload))
    return len(batch_ids)


def _erased_message(message: dict[str, Any], alias: str) -> dict[str, Any]:
    """The person's message without their identities or their own text. A batch's shared
    content (``payload["content"]``, identical for all its recipients) is everyone's
    message, not theirs alone, and stays."""
    recipient: dict[str, str | None] = {key: None for key in message.get("recipient", {})}
    recipient["user_id"] = alias
    own = {"text": ERASED, "title": None, "link": None} if "text" in message else {}
    return {**message, "recipient": recipient, **own}
