"""``recall forget USER``: erase one person's personal data everywhere (PIPL / GDPR).

What goes: identities (OpenID, UnionID, external_userid, phone, WeCom sender), time zone,
free attributes, event and trigger payloads, drawn coupon codes, the recipient and text of
every frozen provider request, the query of every short-link target, derived features.
What stays, under a pseudonym (``erased-<hash>``) instead of the user id: the rows that
reports count (events by name and time, enrollments, touches, conversions), so journey
numbers do not change. Opt-outs keep working for the pseudonym; their identities are
replaced by one-way hashes. The erasure itself is written to the audit log under the
pseudonym, never the erased id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, delete, insert, select, update

from orchestrator.errors import NotFoundError
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


@dataclass(frozen=True)
class Erasure:
    pseudonym: str
    rows: dict[str, int]


def pseudonym(user_id: str) -> str:
    return "erased-" + hashlib.sha256(f"recall-forget\n{user_id}".encode()).hexdigest()[:20]


def _hashed(identity: str) -> str:
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


def forget(engine: Engine, user_id: str, *, now: datetime, actor: str = "cli") -> Erasure:
    """Erase ``user_id``'s personal data in one transaction; ``NotFoundError`` if unknown."""
    alias = pseudonym(user_id)
    with begin_write(engine) as conn:
        user = conn.execute(select(USERS).where(USERS.c.user_id == user_id)).mappings().first()
        if user is None:
            raise NotFoundError(f"no user {user_id!r} to forget (already forgotten, or never "
                                "imported); nothing was changed")
        rows = {
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
        rows["opt_outs"] = _opt_outs(conn, user, alias)
        rows["links"] = _links(conn, alias)
        rows["send_batches"] = _batches(conn, alias)
        conn.execute(insert(AUDIT).values(at=now, actor=actor, action="forget",
                                          subject=f"user:{alias}", detail=rows))
    return Erasure(alias, rows)


def _identities(user: Any) -> list[str]:
    kinds = ("phone", "openid", "unionid", "external_userid")
    return [f"{kind}:{user[kind]}" for kind in kinds if user[kind]] + [f"user:{user['user_id']}"]


def _opt_outs(conn: Connection, user: Any, alias: str) -> int:
    mine = conn.execute(select(OPT_OUTS.c.id, OPT_OUTS.c.identity).where(
        (OPT_OUTS.c.user_id == user["user_id"]) | OPT_OUTS.c.identity.in_(_identities(user))
    )).all()
    for row in mine:
        conn.execute(update(OPT_OUTS).where(OPT_OUTS.c.id == row.id)
                     .values(user_id=alias, identity=_hashed(row.identity)))
    return len(mine)


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
    recipient: dict[str, str | None] = {key: None for key in message.get("recipient", {})}
    recipient["user_id"] = alias
    return {**message, "recipient": recipient, "text": ERASED, "title": None, "link": None}
