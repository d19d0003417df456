"""What provider callbacks change in the store: delivery status, joins, batch results,
follow state. Plain values in (already verified and parsed by ``orchestrator.api``);
each function runs inside the caller's transaction and is idempotent, because providers
retry their pushes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from orchestrator.store.tables import SEND_BATCHES as BATCHES
from orchestrator.store.tables import TOUCHES, USERS
from orchestrator.tracking.links import keep_first

IN_FLIGHT = ("sending", "unknown", "sent")  # a callback may move these forward
REACHED = ("sent", "delivered")
OPTED_OUT_CODE = "21610"  # Twilio: the recipient replied STOP; never text them again
_INVITE_STATE = re.compile(r"^(?:recall[:_-]?)?t?(\d{1,18})$")


@dataclass(frozen=True)
class TouchRef:
    id: int
    user_id: str
    journey_id: str
    channel: str
    status: str


@dataclass(frozen=True)
class StatusUpdate:
    touch: TouchRef
    applied: bool  # False: the callback was older news than what the touch already says
    opted_out: bool  # the provider says the recipient has opted out (Twilio 21610)


def find_touch_by_message_id(conn: Connection, message_id: str) -> TouchRef | None:
    row = conn.execute(
        select(TOUCHES.c.id, TOUCHES.c.user_id, TOUCHES.c.journey_id, TOUCHES.c.channel,
               TOUCHES.c.status)
        .where(TOUCHES.c.provider_message_id == message_id)
        .limit(1)
    ).first()
    return TouchRef(*row) if row else None


Change = tuple[tuple[str, ...], dict[str, Any]]  # (statuses the touch may be in, new values)


def _sms_change(status: str, error_code: str | None, now: datetime) -> Change | None:
    """What one Twilio ``MessageStatus`` changes on a touch."""
    if status == "sent":
        return ("sending", "unknown"), {
            "status": "sent",
            "sent_at": keep_first(TOUCHES.c.sent_at, now),
        }
    if status == "delivered":
        return IN_FLIGHT, {
            "status": "delivered",
            "sent_at": keep_first(TOUCHES.c.sent_at, now),
            "delivered_at": keep_first(TOUCHES.c.delivered_at, now),
        }
    if status in ("undelivered", "failed"):
        return IN_FLIGHT, {"status": "failed", "reason": f"provider:{error_code or status}"}
    return None  # queued, sending, accepted, scheduled, read…: nothing the touch records


def apply_sms_status(
    conn: Connection, *, message_id: str, status: str, error_code: str | None, now: datetime
) -> StatusUpdate | None:
    """Apply a Twilio status callback to the touch whose ``provider_message_id`` it names.

    ``None`` when no touch has that id. Callbacks can arrive out of order, so a status only
    moves a touch forward (``delivered`` is never turned back into ``sent`` or ``failed``).
    """
    touch = find_touch_by_message_id(conn, message_id)
    if touch is None:
        return None
    change = _sms_change(status, error_code or None, now)
    applied = False
    if change is not None:
        allowed, values = change
        applied = bool(conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.id == touch.id, TOUCHES.c.status.in_(allowed))
            .values(**values)
        ).rowcount)
    return StatusUpdate(touch, applied, opted_out=(error_code or "") == OPTED_OUT_CODE)


def apply_mass_send_result(
    conn: Connection, *, msg_id: str, counts: Mapping[str, Any]
) -> str | None:
    """Store a ``MASSSENDJOBFINISH`` on the batch sent as ``msg_id``; returns the batch id.

    The counts are merged into ``send_batches.result`` (what the adapter stored there, e.g.
    ``msg_data_id``, is kept). Per-touch delivery of a mass send is aggregate-only.
    """
    row = conn.execute(
        select(BATCHES.c.id, BATCHES.c.result).where(BATCHES.c.provider_ref == msg_id)
    ).first()
    if row is None:
        return None
    merged = {**(row.result or {}), **counts}
    conn.execute(update(BATCHES).where(BATCHES.c.id == row.id).values(result=merged))
    return str(row.id)


def invite_state(touch_id: int) -> str:
    """The ``state`` a WeCom join way carries for one invite touch (≤ 30 characters)."""
    return f"t{touch_id}"


def touch_id_from_state(state: str | None) -> int | None:
    """The touch id in a join way's ``state`` (``t123``, ``recall:t123`` or ``123``)."""
    match = _INVITE_STATE.match((state or "").strip())
    return int(match.group(1)) if match else None


def _invite_touches_by_state(conn: Connection, state: str) -> list[int]:
    touch_id = touch_id_from_state(state)
    clause = (TOUCHES.c.id == touch_id) if touch_id is not None else (TOUCHES.c.link_code == state)
    rows = conn.execute(
        select(TOUCHES.c.id).where(clause, TOUCHES.c.channel == "wecom_group_invite")
    ).scalars()
    return list(rows)


def _invite_touches_by_member(conn: Connection, external_userids: Sequence[str]) -> list[int]:
    """Each joining member's latest sent, not yet joined, invite touch."""
    found: list[int] = []
    for external_userid in external_userids:
        touch_id = conn.execute(
            select(TOUCHES.c.id)
            .join(USERS, USERS.c.user_id == TOUCHES.c.user_id)
            .where(
                USERS.c.external_userid == external_userid,
                TOUCHES.c.channel == "wecom_group_invite",
                TOUCHES.c.status.in_(REACHED),
                TOUCHES.c.joined_at.is_(None),
            )
            # A journey's own invite before a test send's copy of it (a seed list's member
            # may be in the audience too).
            .order_by(TOUCHES.c.test, TOUCHES.c.sent_at.desc(), TOUCHES.c.id.desc())
            .limit(1)
        ).scalar()
        if touch_id is not None:
            found.append(touch_id)
    return found


def apply_group_join(
    conn: Connection, *, state: str | None, external_userids: Sequence[str], now: datetime
) -> list[int]:
    """Record a WeCom group join as the invite's ``joined_at`` and ``clicked_at``.

    The join way's ``state`` names the touch; a join without one (WeCom's own change
    callback does not carry it) is matched to each joining member's latest open invite.
    Returns the ids of the touches stamped.
    """
    if state:
        touch_ids = _invite_touches_by_state(conn, state)
    else:
        touch_ids = _invite_touches_by_member(conn, external_userids)
    if touch_ids:
        conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.id.in_(touch_ids))
            .values(
                joined_at=keep_first(TOUCHES.c.joined_at, now),
                clicked_at=keep_first(TOUCHES.c.clicked_at, now),
            )
        )
    return touch_ids


def set_wechat_followed(
    conn: Connection, *, openid: str, followed: bool, now: datetime
) -> list[str]:
    """Set ``users.wechat_followed`` for everyone with ``openid``; returns their user ids."""
    rows = conn.execute(
        update(USERS)
        .where(USERS.c.openid == openid)
        .values(wechat_followed=followed, updated_at=now)
        .returning(USERS.c.user_id)
    ).scalars()
    return list(rows)
