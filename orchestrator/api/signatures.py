"""Signature checks for everything that reaches the API without an API key.

Each check raises ``SignatureError`` (HTTP 400) with a message that says what was wrong;
none of them touches the store. Payment webhooks:

- ``generic``: ``X-Recall-Signature: t=<unix>,v1=<hex>``, ``v1 = HMAC-SHA256(secret,
  f"{t}.{raw body}")``, 300 s tolerance either side of now.
- ``stripe``: ``Stripe-Signature``, the same construction; several ``v1`` may be present
  (secret rotation) and one matching is enough.
- ``wechatpay``: v2 ``sign`` inside the XML: MD5 (default) or HMAC-SHA256 over the sorted
  non-empty ``key=value`` pairs joined by ``&`` plus ``&key=<API key>``, upper-case hex.

Provider callbacks: Twilio's ``X-Twilio-Signature`` (``twilio.request_validator``);
WeChat/WeCom ``sha1(sorted([token, timestamp, nonce]))`` in plain mode.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twilio.request_validator import RequestValidator
from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac
from wechatpy.utils import WeChatSigner

from orchestrator.errors import SignatureError

TOLERANCE_S = 300
GENERIC_HEADER = "X-Recall-Signature"
STRIPE_HEADER = "Stripe-Signature"
TWILIO_HEADER = "X-Twilio-Signature"


def same(expected: str, presented: str) -> bool:
    """Constant-time comparison of a signature we computed with one we were sent; compared
    as bytes, since a hostile header may hold any character."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))


@dataclass(frozen=True)
class TimestampedSignature:
    timestamp: int
    v1: tuple[str, ...]


def parse_signature_header(value: str | None, *, header: str) -> TimestampedSignature:
    """Parse ``t=<unix>,v1=<hex>[,v1=<hex>…]`` (other schemes, e.g. Stripe's v0, ignored)."""
    if not value:
        raise SignatureError(f"missing {header} header", field=header)
    timestamp: int | None = None
    v1: list[str] = []
    for item in value.split(","):
        key, _, val = item.strip().partition("=")
        if key == "t" and val.isdigit():
            timestamp = int(val)
        elif key == "v1" and val:
            v1.append(val.strip().lower())
    if timestamp is None or not v1:
        raise SignatureError(
            f"{header} header must look like t=<unix seconds>,v1=<hex HMAC-SHA256>", field=header
        )
    return TimestampedSignature(timestamp, tuple(v1))


def timestamped_hmac(secret: str, timestamp: int, raw: bytes) -> str:
    """``hex(HMAC-SHA256(secret, f"{timestamp}.{raw}"))``: what a sender puts in ``v1``."""
    message = str(timestamp).encode("ascii") + b"." + raw
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, raw: bytes, *, timestamp: int) -> str:
    """A complete ``t=…,v1=…`` header value, for senders (and the simulate driver)."""
    return f"t={timestamp},v1={timestamped_hmac(secret, timestamp, raw)}"


def verify_timestamped(
    raw: bytes,
    header_value: str | None,
    *,
    secret: str,
    now: datetime,
    header: str,
    tolerance_s: int = TOLERANCE_S,
) -> int:
    """Check a ``t=…,v1=…`` signature over the raw body; returns the signed timestamp."""
    parsed = parse_signature_header(header_value, header=header)
    expected = timestamped_hmac(secret, parsed.timestamp, raw)
    # Compare against every v1 without stopping early: timing reveals nothing.
    matches = [same(expected, candidate) for candidate in parsed.v1]
    if not any(matches):
        raise SignatureError(
            f"{header} does not match the body; sign the exact raw body with the shared "
            "secret",
            field=header,
        )
    age = now.timestamp() - parsed.timestamp
    if abs(age) > tolerance_s:
        raise SignatureError(
            f"{header} timestamp is {age:+.0f} s from now, outside the {tolerance_s} s "
            "tolerance; re-sign with the current time (and check the sender's clock)",
            field=header,
        )
    return parsed.timestamp


def wechatpay_sign(params: Mapping[str, Any], api_key: str, sign_type: str = "MD5") -> str:
    """WeChat Pay v2 ``sign`` of ``params`` (``sign`` itself excluded)."""
    data = {k: v for k, v in params.items() if k != "sign"}
    if sign_type == "HMAC-SHA256":
        return str(calculate_signature_hmac(data, api_key))
    if sign_type == "MD5":
        return str(calculate_signature(data, api_key))
    raise SignatureError(
        f"unsupported sign_type {sign_type!r}; WeChat Pay v2 uses MD5 or HMAC-SHA256",
        field="sign_type",
    )


def verify_wechatpay(params: Mapping[str, Any], *, api_key: str) -> None:
    """Check the ``sign`` of a parsed WeChat Pay v2 notify."""
    sign = params.get("sign")
    if not isinstance(sign, str) or not sign:
        raise SignatureError("WeChat Pay notify has no sign", field="sign")
    expected = wechatpay_sign(params, api_key, str(params.get("sign_type") or "MD5"))
    if not same(expected, sign.upper()):
        raise SignatureError(
            "WeChat Pay sign does not match; check RECALL_WECHATPAY_API_KEY (the merchant "
            "API key, not the APIv3 key)",
            field="sign",
        )


def verify_twilio(url: str, params: Any, signature: str | None, *, auth_token: str) -> None:
    """Check ``X-Twilio-Signature`` for a request Twilio made to ``url`` with ``params``."""
    if not signature:
        raise SignatureError(f"missing {TWILIO_HEADER} header", field=TWILIO_HEADER)
    if not RequestValidator(auth_token).validate(url, params, signature):
        raise SignatureError(
            f"{TWILIO_HEADER} does not match {url}; RECALL_PUBLIC_BASE_URL must be the URL "
            "Twilio calls and RECALL_TWILIO_AUTH_TOKEN the account's auth token",
            field=TWILIO_HEADER,
        )


def wechat_signature(token: str, *values: str) -> str:
    """``sha1`` of the sorted, concatenated values: WeChat's and WeCom's callback signature."""
    signer = WeChatSigner()
    signer.add_data(token, *values)
    return str(signer.signature)


def verify_wechat(token: str, signature: str | None, timestamp: str, nonce: str) -> None:
    """Plain-mode WeChat/WeCom callback signature over token, timestamp and nonce."""
    expected = wechat_signature(token, timestamp, nonce)
    if not signature or not same(expected, signature.lower()):
        raise SignatureError(
            "callback signature does not match; the token configured at the provider must "
            "equal RECALL_WECHAT_TOKEN / RECALL_WECOM_TOKEN",
            field="signature",
        )
