"""Fixed-link mode: the message carries the same link for everyone, and the user
is identified when they land.

Some carriers reject per-recipient links, and a mass-sent article is identical for every
follower. The landing page (the merchant's site or mini-program page, which knows who the
visitor is, e.g. from WeChat OAuth) sends the browser to ``GET /l/{journey_id}?t=<token>``
where ``token = landing_token(secret, journey_id=…, user_id=…, to=…)``. Recall checks the
token, records the click on that user's latest sent touch of the journey and redirects to
``to`` (else that touch's short-link target), with the UTM parameters of a short link.

Token: ``<payload>.<mac>``, both unpadded base64url; ``payload`` is compact JSON
``{"u": user_id, "iat": unix seconds, "to": url?}`` and ``mac = HMAC-SHA256(secret,
"recall-landing\\n" + journey_id + "\\n" + payload)``, so a token is bound to one journey
and cannot be altered. The secret is the ``landing_token_secret`` setting
(``RECALL_LANDING_TOKEN_SECRET``).

Tokens expire: ``iat`` (when the landing page made it, real time) must be at most
``landing_token_ttl_s`` (default one hour) in the past and at most ``MAX_SKEW_S`` in the
future. The landing page mints a token at the moment it redirects, so an hour is ample; a
token copied from a browser history or a log stops working soon after.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, select, update

from orchestrator.errors import SignatureError
from orchestrator.store.tables import LINKS, TOUCHES
from orchestrator.tracking.links import keep_first, tracked_target

SECRET_SETTING = "landing_token_secret"
DEFAULT_TTL_S = 3600
MAX_SKEW_S = 300  # the landing page's clock may run this far ahead of ours
_DOMAIN = b"recall-landing\n"


def landing_secret(settings: Any) -> str:
    """The landing-token secret (``RECALL_LANDING_TOKEN_SECRET``)."""
    value = getattr(settings, SECRET_SETTING)
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, journey_id: str, payload: str) -> str:
    message = _DOMAIN + journey_id.encode("utf-8") + b"\n" + payload.encode("ascii")
    return _b64(hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest())


def _check_target(to: str | None) -> None:
    if to is not None and not to.startswith(("https://", "http://")):
        raise SignatureError("landing target must be an http(s) URL", field="to")


@dataclass(frozen=True)
class LandingClaim:
    user_id: str
    to: str | None = None


def landing_token(
    secret: str, *, journey_id: str, user_id: str, issued_at: datetime, to: str | None = None
) -> str:
    """A token that identifies ``user_id`` on ``/l/{journey_id}``; ``to`` is the redirect.
    ``issued_at`` is now (real time): the token expires ``landing_token_ttl_s`` later."""
    _check_target(to)
    claim: dict[str, str | int] = {"u": user_id, "iat": int(issued_at.timestamp())}
    if to:
        claim["to"] = to
    payload = _b64(json.dumps(claim, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_mac(secret, journey_id, payload)}"


def read_landing_token(
    secret: str, token: str, *, journey_id: str, now: datetime, ttl_s: int = DEFAULT_TTL_S
) -> LandingClaim:
    """The claim inside ``token``; ``SignatureError`` when it is malformed, not ours, or
    expired (``now`` is real time)."""
    payload, _, mac = token.partition(".")
    if (not payload or not mac or not payload.isascii()
            or not hmac.compare_digest(mac.encode("utf-8"),
                                       _mac(secret, journey_id, payload).encode("ascii"))):
        raise SignatureError(
            f"landing token is not valid for journey {journey_id!r}", field="t"
        )
    try:
        claim = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise SignatureError("landing token payload is not valid JSON", field="t") from None
    if not isinstance(claim, dict) or not isinstance(claim.get("u"), str):
        raise SignatureError("landing token names no user", field="t")
    _check_age(claim.get("iat"), now, ttl_s)
    to = claim.get("to")
    if to is not None and not isinstance(to, str):
        raise SignatureError("landing target must be an http(s) URL", field="to")
    _check_target(to)
    return LandingClaim(user_id=claim["u"], to=to)


def _check_age(issued: Any, now: datetime, ttl_s: int) -> None:
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise SignatureError("landing token has no issue time (iat); mint a new one", field="t")
    age = now.timestamp() - issued
    if age > ttl_s:
        raise SignatureError(f"landing token expired {age - ttl_s:.0f} s ago (tokens last "
                             f"{ttl_s} s); open the link again", field="t")
    if age < -MAX_SKEW_S:
        raise SignatureError("landing token is issued in the future; check the landing "
                             "page's clock", field="t")


@dataclass(frozen=True)
class LandingHit:
    touch_id: int
    channel: str
    link_code: str | None
    link_target: str | None

    def redirect_url(self, journey_id: str, to: str | None) -> str | None:
        target = to or self.link_target
        if target is None:
            return None
        return tracked_target(
            target, channel=self.channel, journey_id=journey_id, code=self.link_code
        )


def record_landing_click(
    conn: Connection, *, journey_id: str, user_id: str, now: datetime
) -> LandingHit | None:
    """Stamp the first click on the user's latest sent touch of the journey (and its link)."""
    touch = conn.execute(
        select(TOUCHES.c.id, TOUCHES.c.channel, TOUCHES.c.link_code, TOUCHES.c.clicked_at)
        .where(
            TOUCHES.c.journey_id == journey_id,
            TOUCHES.c.user_id == user_id,
            TOUCHES.c.sent_at.is_not(None),
            TOUCHES.c.test.is_(False),
        )
        .order_by(TOUCHES.c.sent_at.desc(), TOUCHES.c.id.desc())
        .limit(1)
    ).first()
    if touch is None:
        return None
    if touch.clicked_at is None:  # later clicks only count on the link
        conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.id == touch.id)
            .values(clicked_at=keep_first(TOUCHES.c.clicked_at, now))
        )
    target = None
    if touch.link_code:
        target = conn.execute(
            update(LINKS)
            .where(LINKS.c.code == touch.link_code)
            .values(clicks=LINKS.c.clicks + 1,
                    first_clicked_at=keep_first(LINKS.c.first_clicked_at, now))
            .returning(LINKS.c.target_url)
        ).scalar()
    return LandingHit(touch.id, touch.channel, touch.link_code, target)
