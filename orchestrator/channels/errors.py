"""Provider error tables: every code an adapter may meet, and what Recall does about it.

The tables are data (``code -> Verdict``), so a reader sees the whole policy at once and
the tests walk them row by row. Three translators turn an SDK/transport exception into the
one error tree (``orchestrator.errors``):

- ``wechat_error`` for WeChat OA and WeCom ``errcode``s (and HTTP statuses),
- ``twilio_error`` for Twilio REST errors,
- ``transport_error`` for ``requests`` and ``httpx`` failures, where *when* it failed decides:
  the connection was never made (refused, DNS, connect timeout) -> retryable; the request
  went out and the answer never came (read timeout, dropped connection) -> unknown, because
  the provider may have acted and a blind resend could send twice.

Verdict kinds:
    retryable  back off and try again (the engine's bounded retry, or the adapter's own)
    recipient  this recipient cannot be reached; the touch fails with ``reason``
    config     credentials/permissions/content are wrong; stop the step, say it loudly
    token      the access token was rejected; refresh it once and repeat the call once
    duplicate  WeChat 45065: this clientmsgid was already sent; the send happened (success)
    stale_media WeChat 40007: the uploaded article expired; upload again, then send
An unknown code is ``config``: we would rather stop a step and show the code than guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from orchestrator.errors import (
    ChannelConfig,
    ChannelError,
    ChannelRecipient,
    ChannelRetryable,
    ChannelUnknown,
)

Kind = Literal["retryable", "recipient", "config", "token", "duplicate", "stale_media"]


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str  # a touch's failure reason for recipient errors; a short label otherwise


def _v(kind: Kind, reason: str) -> Verdict:
    return Verdict(kind, reason)


# Codes both WeChat OA and WeCom use with the same meaning.
_WEIXIN_COMMON: dict[int, Verdict] = {
    -1: _v("retryable", "system_busy"),
    40001: _v("token", "invalid_credential"),
    40014: _v("token", "invalid_access_token"),
    42001: _v("token", "access_token_expired"),
    45009: _v("retryable", "api_freq_limit"),
    45011: _v("retryable", "api_minute_quota"),
    40013: _v("config", "invalid_appid"),
    40125: _v("config", "invalid_appsecret"),
    48001: _v("config", "api_unauthorized"),
    40164: _v("config", "ip_not_whitelisted"),
}

WECHAT_CODES: dict[int, Verdict] = {
    **_WEIXIN_COMMON,
    40003: _v("recipient", "invalid_openid"),
    43004: _v("recipient", "not_following"),
    45028: _v("recipient", "out_of_quota"),
    # Below two OpenIDs (or above 10,000): the adapter routes lone recipients to template
    # messages and refuses oversize batches, so seeing it means the design was bypassed.
    40130: _v("config", "mass_send_size"),
    40007: _v("stale_media", "invalid_media_id"),
    45065: _v("duplicate", "clientmsgid_exists"),
    # The same clientmsgid again within a minute: WeChat has it; ask again after a pause.
    45066: _v("retryable", "clientmsgid_retry_too_fast"),
    40037: _v("config", "invalid_template_id"),
}

WECOM_CODES: dict[int, Verdict] = {
    **_WEIXIN_COMMON,
    60020: _v("config", "ip_not_whitelisted"),
    48002: _v("config", "api_forbidden"),
    # add_msg_template names the staff member who sends: a wrong one fails that sender's
    # recipients, not the whole step.
    40003: _v("recipient", "invalid_sender"),
    40096: _v("recipient", "invalid_external_userid"),
    84061: _v("recipient", "not_friend"),
    41063: _v("retryable", "task_being_processed"),
}

TWILIO_CODES: dict[int, Verdict] = {
    20429: _v("retryable", "too_many_requests"),
    20503: _v("retryable", "service_unavailable"),
    30001: _v("retryable", "queue_overflow"),
    21211: _v("recipient", "invalid_number"),
    21610: _v("recipient", "opted_out:sms"),
    21614: _v("recipient", "not_mobile"),
    21612: _v("recipient", "unroutable_number"),
    20003: _v("config", "authentication_failed"),
    20404: _v("config", "resource_not_found"),
    21606: _v("config", "from_not_sms_capable"),
    21212: _v("config", "invalid_from_number"),
    21408: _v("config", "region_not_enabled"),
    21617: _v("config", "body_too_long"),
}

UNKNOWN_CODE = _v("config", "unrecognised_error")
HTTP_5XX = _v("retryable", "http_5xx")
HTTP_429 = _v("retryable", "http_429")


def classify_wechat(code: int | None, *, status: int | None = None, wecom: bool = False) -> Verdict:
    """The verdict for a WeChat OA (or, with ``wecom=True``, WeCom) errcode / HTTP status."""
    if code is None:
        return _classify_status(status)
    table = WECOM_CODES if wecom else WECHAT_CODES
    return table.get(code, UNKNOWN_CODE)


def classify_twilio(code: int | None, *, status: int | None = None) -> Verdict:
    """The verdict for a Twilio error ``code`` (falls back on the HTTP status)."""
    if code is not None and code in TWILIO_CODES:
        return TWILIO_CODES[code]
    return _classify_status(status)


def _classify_status(status: int | None) -> Verdict:
    if status == 429:
        return HTTP_429
    if status is not None and status >= 500:
        return HTTP_5XX
    return UNKNOWN_CODE


def to_channel_error(
    verdict: Verdict,
    *,
    provider: str,
    action: str,
    code: int | None,
    detail: str,
    retry_after_s: float | None = None,
) -> ChannelError:
    """The ``orchestrator.errors`` exception for a verdict, with a message that says what to do."""
    where = f"{provider} {action}"
    label = f"{code} {verdict.reason}" if code is not None else verdict.reason
    if verdict.kind in ("retryable", "token"):
        # A token rejected even after one refresh is a provider hiccup: back off.
        return ChannelRetryable(
            f"{where} failed ({label}: {detail}); retry later with back-off",
            code=code,
            provider=provider,
            retry_after_s=retry_after_s,
        )
    if verdict.kind == "recipient":
        return ChannelRecipient(
            f"{where} cannot reach the recipient ({label}: {detail}); fail the touch, no retry",
            code=code,
            provider=provider,
        )
    return ChannelConfig(
        f"{where} was refused ({label}: {detail}); fix the {provider} settings or step options "
        "(credentials, IP whitelist, API permissions, template/content) and resume the step",
        code=code,
        provider=provider,
    )


def wechat_error(
    code: int | None, detail: str, *, status: int | None, provider: str, action: str
) -> ChannelError:
    """Translate a WeChat/WeCom API error (``provider`` is ``"wechat"`` or ``"wecom"``)."""
    verdict = classify_wechat(code, status=status, wecom=provider == "wecom")
    return to_channel_error(verdict, provider=provider, action=action, code=code, detail=detail)


def wechat_reason(exc: ChannelError) -> str:
    """The touch failure reason for a WeChat/WeCom recipient error (``exc.provider`` picks
    the table)."""
    code = exc.code if isinstance(exc.code, int) else None
    return classify_wechat(code, wecom=exc.provider == "wecom").reason


TransportFailure = requests.RequestException | httpx.TransportError


def never_connected(exc: TransportFailure) -> bool:
    """True when the request provably never reached the server (safe to send again)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True  # no connection was made, or none was free: nothing was written
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        inner = exc.args[0]
        return isinstance(inner, MaxRetryError) and isinstance(inner.reason, NewConnectionError)
    return False


# Refused by requests itself before any connection: the configured URL is wrong.
_MALFORMED = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidHeader,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)


def transport_error(
    exc: TransportFailure, *, provider: str, action: str, sent: bool = True
) -> ChannelError:
    """Translate a transport failure. ``sent=False`` for calls without side effects (token
    fetch, reads), whose failures are always safe to retry."""
    where = f"{provider} {action}"
    if isinstance(exc, _MALFORMED):
        return ChannelConfig(
            f"{where}: bad provider URL ({exc}); set RECALL_{provider.upper()}_API_BASE to "
            "scheme://host[:port]",
            provider=provider,
        )
    if not sent or never_connected(exc):
        return ChannelRetryable(
            f"{where}: could not reach the provider ({type(exc).__name__}: {exc}); nothing was "
            "sent, retry later",
            provider=provider,
        )
    return ChannelUnknown(
        f"{where}: the request went out but no answer came back ({type(exc).__name__}: {exc}); "
        "the provider may have acted: reconcile, do not resend",
        provider=provider,
    )
