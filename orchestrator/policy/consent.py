"""Consent: who must not be sent to on a channel, checked in bulk before every send.

Sources, per user (``users``) and per identity (``opt_outs``):

- ``users.sms_opt_out`` (imported) and ``opt_outs`` rows for ``sms`` (an inbound ``R``/``TD``/
  ``STOP`` reply, a provider's 21610, an operator) → ``opted_out:sms``;
- ``users.wechat_followed == False`` or an ``unfollow`` row → ``not_following``;
- any other row for the channel → ``opted_out:<channel>``; a row for channel ``all`` (the user
  unsubscribed from everything) → ``unsubscribed``.

``opt_outs`` rows match a user by ``user_id`` or by identity: ``user:<id>``,
``phone:<E.164>``, ``openid:<id>``, ``unionid:<id>``, ``external_userid:<id>`` (an inbound
SMS knows only the phone, a WeChat event only the OpenID). Beyond consent, a user who
cannot be addressed on the channel is reported too (``no_phone``, ``no_openid``,
``no_external_userid``), as are ``erased`` (``recall forget``) and ``unknown_user``.

``recall forget`` leaves a ``forgotten`` row on channel ``all`` per hashed identity
(``sha256:<hex of "phone:+86…">``); each user's identities are looked up hashed too, so a
person whose data comes back with another import is suppressed as ``erased``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.errors import InputError
from orchestrator.store.db import begin_write
from orchestrator.store.tables import OPT_OUTS as _OPT_OUTS
from orchestrator.store.tables import USERS as _USERS
from orchestrator.store.types import among

CHANNELS = ("wechat_article", "wecom_group_invite", "sms")
ALL_CHANNELS = "all"
FORGOTTEN = "forgotten"  # the reason of the rows ``recall forget`` leaves
IDENTITY_KINDS = ("user", "phone", "openid", "unionid", "external_userid")
# Every reason ``suppressions`` may give, most decisive first.
REASONS = (
    "unknown_user",
    "erased",
    "unsubscribed",
    "opted_out:sms",
    "opted_out:wechat_article",
    "opted_out:wecom_group_invite",
    "not_following",
    "no_phone",
    "no_openid",
    "no_external_userid",
)
# Replies that opt out of SMS: China's conventions (the suffix says 拒收请回复R) and the
# keywords carriers and Twilio treat as opt-out everywhere.
SMS_OPT_OUT_KEYWORDS = frozenset(
    {"r", "td", "t", "n", "stop", "退订", "拒收", "stopall", "unsubscribe", "cancel", "end", "quit"}
)
_ADDRESS = {"sms": "phone", "wechat_article": "openid", "wecom_group_invite": "external_userid"}


# ---------------------------------------------------------------- identities


def normalize_phone(raw: str) -> str:
    """E.164 where it can be told: ``+86 138-0013-8000``, ``0086…`` and a bare Chinese mobile
    ``13800138000`` all become ``+8613800138000``; anything else keeps its digits."""
    digits = re.sub(r"[^\d+]", "", raw.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if re.fullmatch(r"1\d{10}", digits):
        digits = "+86" + digits
    return digits


def make_identity(kind: str, value: str) -> str:
    """The ``opt_outs.identity`` spelling, e.g. ``phone:+8613800138000``."""
    if kind not in IDENTITY_KINDS:
        raise InputError(f"unknown identity kind {kind!r}; use one of {', '.join(IDENTITY_KINDS)}")
    return f"{kind}:{normalize_phone(value) if kind == 'phone' else value}"


def identities_of(user: Any) -> list[str]:
    """Every identity of a user row (attribute or mapping access), ``user:<id>`` first."""
    def field(name: str) -> Any:
        return user[name] if isinstance(user, Mapping) else getattr(user, name)

    found = [make_identity("user", field("user_id"))]
    for kind in ("phone", "openid", "unionid", "external_userid"):
        value = field(kind)
        if value:
            found.append(make_identity(kind, value))
    return found


def hashed_identity(identity: str) -> str:
    """The one-way form an identity keeps after ``recall forget``."""
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


# ---------------------------------------------------------------- suppressions


def suppressions(engine: Engine, user_ids: Sequence[str], channel: str) -> dict[str, str]:
    """The users of ``user_ids`` who must not get a ``channel`` touch now, with the reason.

    Two queries (users, then their opt-outs), no per-user round trip. Users absent from the
    result may be sent to.
    """
    _check_channel(channel, allow_all=False)
    ids = list(dict.fromkeys(user_ids))
    with engine.connect() as conn:
        users = conn.execute(sa.select(_USERS).where(among(_USERS.c.user_id, ids))
                             ).mappings().all()
    return suppressions_of(engine, ids, users, channel)


def suppressions_of(engine: Engine, user_ids: Sequence[str],
                    users: Sequence[Mapping[Any, Any]], channel: str) -> dict[str, str]:
    """``suppressions`` for users whose rows the caller has already loaded (``users``, the
    ``users`` table's rows of those of ``user_ids`` that exist): one query, the opt-outs."""
    _check_channel(channel, allow_all=False)
    with engine.connect() as conn:
        opt_outs = _opt_outs_of(conn, users, channel)
    found = {user_id: "unknown_user" for user_id in user_ids}
    for user in users:
        reason = _reason(user, channel, opt_outs.get(user["user_id"], []))
        if reason is None:
            found.pop(user["user_id"], None)
        else:
            found[user["user_id"]] = reason
    return found


def _opt_outs_of(conn: sa.Connection, users: Sequence[Mapping[Any, Any]],
                 channel: str) -> dict[str, list[Any]]:
    """The opt-out rows for ``channel`` or ``all`` of each user, by user_id or identity."""
    owner = {
        form: user["user_id"]
        for user in users for ident in identities_of(user)
        for form in (ident, hashed_identity(ident))
    }
    if not owner:
        return {}
    o = _OPT_OUTS.c
    known = {user["user_id"] for user in users}
    query = sa.select(o.channel, o.identity, o.user_id, o.reason).where(
        o.channel.in_([channel, ALL_CHANNELS]),
        sa.or_(among(o.user_id, known), among(o.identity, owner)),
    )
    by_user: dict[str, list[Any]] = {}
    for row in conn.execute(query):
        for user_id in {row.user_id, owner.get(row.identity)} & known:
            by_user.setdefault(user_id, []).append(row)
    return by_user


def _reason(user: Mapping[Any, Any], channel: str, opt_outs: list[Any]) -> str | None:
    if user["erased"] or any(row.reason == FORGOTTEN for row in opt_outs):
        return "erased"
    if any(row.channel == ALL_CHANNELS for row in opt_outs):
        return "unsubscribed"
    if opt_outs:
        unfollowed = channel == "wechat_article" and all(r.reason == "unfollow" for r in opt_outs)
        return "not_following" if unfollowed else f"opted_out:{channel}"
    if channel == "sms" and user["sms_opt_out"]:
        return "opted_out:sms"
    if channel == "wechat_article" and user["wechat_followed"] is False:
        return "not_following"
    address = _ADDRESS[channel]
    return None if user[address] else f"no_{address}"


# ---------------------------------------------------------------- recording


def record_opt_out(
    engine: Engine,
    *,
    channel: str,
    identity: str | None = None,
    user_id: str | None = None,
    reason: str,
    at: datetime,
) -> None:
    """Record that consent for ``channel`` (or ``all``) was withdrawn; idempotent.

    Give the ``identity`` the signal came with (``phone:+86…`` from an inbound SMS,
    ``openid:…`` from a WeChat unfollow) and/or the ``user_id``. The identity is resolved to
    a user when exactly one matches; the row counts by identity either way, so a number that
    no user has yet is suppressed from the moment one does. ``reason`` says where it came
    from: ``sms_reply:td``, ``unfollow``, ``unsubscribe``, ``provider:21610``…
    """
    _check_channel(channel, allow_all=True)
    if identity is None and user_id is None:
        raise InputError("record_opt_out needs an identity (e.g. phone:+86…) or a user_id")
    ident = _normalized_identity(identity) if identity else f"user:{user_id}"
    with begin_write(engine) as conn:
        owner = user_id or _resolve(conn, ident)
        insert_opt_outs(conn, [{"channel": channel, "identity": ident, "user_id": owner,
                                "reason": reason, "created_at": at}])


def insert_opt_outs(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert opt-out rows (``channel``, ``identity``, ``user_id``, ``reason``,
    ``created_at``) in the caller's transaction; rows already there are kept as they are."""
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(_OPT_OUTS).on_conflict_do_nothing(index_elements=["channel", "identity"])
    conn.execute(stmt, list(rows))


def clear_opt_out(
    engine: Engine, *, channel: str, identity: str | None = None, user_id: str | None = None
) -> int:
    """Remove opt-outs for ``channel`` by identity and/or user (a user who follows the
    account again); returns how many rows went."""
    _check_channel(channel, allow_all=True)
    o = _OPT_OUTS.c
    matches = []
    if identity:
        matches.append(o.identity == _normalized_identity(identity))
    if user_id:
        matches += [o.user_id == user_id, o.identity == f"user:{user_id}"]
    if not matches:
        raise InputError("clear_opt_out needs an identity or a user_id")
    with begin_write(engine) as conn:
        return conn.execute(
            sa.delete(_OPT_OUTS).where(o.channel == channel, sa.or_(*matches))
        ).rowcount


def _normalized_identity(text: str) -> str:
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise InputError(
            f"bad identity {text!r}: write KIND:VALUE with KIND one of {', '.join(IDENTITY_KINDS)}"
        )
    return make_identity(kind, value)


def _resolve(conn: sa.Connection, ident: str) -> str | None:
    """The one user an identity names, else ``None`` (unknown or shared)."""
    kind, _, value = ident.partition(":")
    u = _USERS.c
    if kind == "phone":
        national = value.removeprefix("+86")
        where = u.phone.in_({value, national, value.lstrip("+")})
    else:
        where = getattr(u, "user_id" if kind == "user" else kind) == value
    found = conn.execute(sa.select(u.user_id).where(where).limit(2)).scalars().all()
    return found[0] if len(found) == 1 else None


def _check_channel(channel: str, *, allow_all: bool) -> None:
    allowed = (*CHANNELS, ALL_CHANNELS) if allow_all else CHANNELS
    if channel not in allowed:
        raise InputError(f"unknown channel {channel!r}; use one of {', '.join(allowed)}")


# ---------------------------------------------------------------- inbound SMS


def sms_opt_out_keyword(body: str) -> str | None:
    """The opt-out keyword an inbound SMS consists of (normalized), or ``None``.

    The whole message must be the keyword: case, spaces and full-width forms do not matter
    (``ｔｄ``, ``T D``), nor does punctuation around it (``退订。``); "Thanks" is not ``T``.
    """
    text = "".join(unicodedata.normalize("NFKC", body).casefold().split())
    text = _strip_punctuation(text)
    return text if text in SMS_OPT_OUT_KEYWORDS else None


def parse_sms_opt_out(body: str) -> bool:
    """Is this inbound SMS an opt-out reply (``R``, ``TD``, ``T``, ``N``, ``STOP``, ``退订``…)?"""
    return sms_opt_out_keyword(body) is not None


def _strip_punctuation(text: str) -> str:
    def is_punct(c: str) -> bool:
        return unicodedata.category(c)[0] in "PS"

    start, end = 0, len(text)
    while start < end and is_punct(text[start]):
        start += 1
    while end > start and is_punct(text[end - 1]):
        end -= 1
    return text[start:end]


__all__ = [
    "ALL_CHANNELS",
    "CHANNELS",
    "FORGOTTEN",
    "REASONS",
    "SMS_OPT_OUT_KEYWORDS",
    "clear_opt_out",
    "hashed_identity",
    "identities_of",
    "insert_opt_outs",
    "make_identity",
    "normalize_phone",
    "parse_sms_opt_out",
    "record_opt_out",
    "sms_opt_out_keyword",
    "suppressions",
]
