"""Signing in to the dashboard: who may see it, and the session cookie that remembers it.

The dashboard shows business figures and (masked) identities, so it is closed by default:
a visitor signs in once with one of ``RECALL_API_KEYS`` (or sends ``Authorization: Bearer
<key>`` like any API client). Only the embedded stack on loopback — the API that accepts
the sandbox placeholders (``orchestrator.api.exposure``), where nobody else can reach it —
opens the dashboard without a key.

The cookie never holds the key. It holds an expiry and an HMAC of it under the key used to
sign in (``<expires>.<hex>``), so it cannot be forged without a key, it ends by itself, and
removing a key from ``RECALL_API_KEYS`` ends every session it opened. It is ``HttpOnly``
(no script can read it), ``SameSite=Strict`` (no other site can make the browser send it)
and ``Secure`` whenever the dashboard is reached over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

COOKIE = "recall_dashboard"
SESSION_S = 8 * 3600  # a working day; then the key is asked for again
_PURPOSE = b"recall-dashboard-session:"


def _mac(key: str, expires: int) -> str:
    message = _PURPOSE + str(expires).encode("ascii")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def matching_key(presented: str, keys: Sequence[str]) -> bool:
    """Is ``presented`` one of ``keys``? Every key is compared in constant time, so the
    answer's timing tells nothing about which key is close."""
    given = presented.encode("utf-8")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key.encode("utf-8"), given)
    return matched and bool(presented)


def issue(key: str, *, now: float, lifetime_s: int = SESSION_S) -> str:
    """A session token for a visitor who presented ``key``, valid ``lifetime_s`` from ``now``
    (real time, seconds since the epoch)."""
    expires = int(now) + lifetime_s
    return f"{expires}.{_mac(key, expires)}"


def is_valid(token: str, keys: Sequence[str], *, now: float) -> bool:
    """Was ``token`` issued under one of ``keys`` and is it still within its lifetime?"""
    expires_text, _, mac = token.partition(".")
    well_formed = expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12
    if not well_formed or not mac:
        return False
    expires = int(expires_text)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_mac(key, expires).encode(), mac.encode("utf-8"))
    return matched and now < expires


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never ``//host`` or a URL),
    so the login form cannot be used to send people elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
