"""Provider callbacks: Twilio status and inbound SMS, WeChat OA and WeCom pushes.

Public, authenticated by the providers' signatures (400 when wrong, nothing changed).
What a callback changes in the store is in ``orchestrator.tracking.callbacks``; opt-outs
go through ``orchestrator.policy.consent``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import ImmutableMultiDict
from wechatpy import parse_message as parse_wechat
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise import parse_message as parse_wecom
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto
from wechatpy.exceptions import WeChatException

from orchestrator.api.deps import Services, ServicesDep
from orchestrator.api.replay import NonceStore, fresh_callback
from orchestrator.api.signatures import TWILIO_HEADER, verify_twilio, verify_wechat
from orchestrator.errors import InputError, NotConfigured, SignatureError
from orchestrator.policy import consent
from orchestrator.store.db import begin_write
from orchestrator.store.tables import TOUCHES
from orchestrator.tracking import callbacks as track

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/callbacks", tags=["callbacks"])
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


# ---------------------------------------------------------------- Twilio


def _twilio_status(services: Services, params: Mapping[str, str], now: datetime) -> str:
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    with begin_write(services.engine) as conn:
        update = track.apply_sms_status(
            conn, message_id=sid, status=status, error_code=params.get("ErrorCode"), now=now
        )
    if update is None:
        log.warning("twilio status %r for unknown MessageSid %r: acknowledged, ignored",
                    status, sid)
        return "unknown_message"
    if update.applied and status in ("undelivered", "failed"):
        _free_cap_slot(services, update.touch.id)
    if update.opted_out:
        to = params.get("To")
        consent.record_opt_out(
            services.engine, channel="sms", identity=f"phone:{to}" if to else None,
            user_id=update.touch.user_id, reason=f"provider:{track.OPTED_OUT_CODE}", at=now,
        )
    return "status"


def _free_cap_slot(services: Services, touch_id: int) -> None:
    """A carrier's definite failure frees the person's cap slot: the message never arrived,
    and a rebuild from SQL (which counts no failed touch) would free it too."""
    from orchestrator.policy.caps import CapStore, touch_key
    from orchestrator.store.redis import get_redis

    with services.engine.connect() as conn:
        row = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.channel, TOUCHES.c.enrollment_id,
                                  TOUCHES.c.step_id).where(TOUCHES.c.id == touch_id)).first()
    if row is not None:
        CapStore(get_redis(services.settings)).release(
            person=row.user_id, channel=row.channel,
            key=touch_key(row.enrollment_id, row.step_id))


def _twilio_inbound(services: Services, params: Mapping[str, str], now: datetime) -> str:
    body, phone = params.get("Body", ""), params.get("From", "")
    keyword = consent.sms_opt_out_keyword(body)
    if not phone or keyword is None:
        return "inbound"
    # By identity: the number is suppressed whoever has it, now or after a later import.
    # The reason keeps the normalised keyword, never the reply's own text.
    consent.record_opt_out(services.engine, channel="sms", identity=f"phone:{phone}",
                           reason=f"sms_reply:{keyword}", at=now)
    return "opt_out"


def _twilio(services: Services, url: str, raw: bytes, signature: str | None) -> None:
    params = ImmutableMultiDict(parse_qsl(raw.decode("utf-8", errors="replace"),
                                          keep_blank_values=True))
    verify_twilio(url, params, signature, auth_token=services.inbound_secret("twilio_auth_token"))
    now = services.clock.now()
    handle = _twilio_inbound if "Body" in params else _twilio_status
    kind = handle(services, params, now)
    services.metrics.callbacks.labels(provider="twilio", kind=kind).inc()


def public_url(services: Services, request: Request) -> str:
    """The URL the provider called, as configured (``RECALL_PUBLIC_BASE_URL`` + path)."""
    url = services.settings.public_base_url.rstrip("/") + request.url.path
    return f"{url}?{request.url.query}" if request.url.query else url


@router.post(
    "/twilio", response_class=Response,
    openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {}}}},
)
async def twilio_callback(request: Request, services: ServicesDep) -> Response:
    """Status callbacks (``MessageSid``, ``MessageStatus``, ``ErrorCode``) and inbound SMS
    (``From``, ``Body``), signed with ``X-Twilio-Signature``. Answers empty TwiML."""
    raw = await request.body()
    url = public_url(services, request)
    await run_in_threadpool(_twilio, services, url, raw, request.headers.get(TWILIO_HEADER))
    return Response(EMPTY_TWIML, media_type="text/xml")


# ---------------------------------------------------------------- WeChat OA and WeCom


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


@contextmanager
def _fresh(services: Services, provider: str, query: Mapping[str, str]) -> Iterator[None]:
    """After the signature: refuse a stale timestamp or a nonce already used (a replay)."""
    from orchestrator.store.redis import get_redis

    store = NonceStore(get_redis(services.settings))
    with fresh_callback(store, provider, timestamp=query.get("timestamp", ""),
                        nonce=query.get("nonce", ""), now=services.wall_clock.now()):
        yield


def _decrypt(crypto: Any, raw: bytes, query: Mapping[str, str]) -> str:
    try:
        return str(crypto.decrypt_message(
            raw, query.get("msg_signature", ""), query.get("timestamp", ""),
            query.get("nonce", ""),
        ))
    except WeChatException as exc:
        raise SignatureError(f"encrypted push does not verify: {exc}",
                             field="msg_signature") from None
    except (ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise InputError(f"encrypted push is malformed: {exc}") from None
    except Exception as exc:  # expat errors while reading the envelope
        raise InputError(f"encrypted push is not an XML envelope: {exc}") from None


def _wechat_encrypted(services: Services, query: Mapping[str, str]) -> bool:
    """Safe mode or plain mode; with an AES key configured only safe mode is accepted, so
    that a forged ``encrypt_type=raw`` cannot turn the body's signature off."""
    mode = query.get("encrypt_type", "raw")
    if mode not in ("raw", "aes"):
        raise InputError(f"encrypt_type {mode!r} is unknown (raw or aes)", field="encrypt_type")
    has_key = bool(_secret(services.settings.wechat_aes_key))
    if mode == "raw" and has_key:
        raise SignatureError(
            "RECALL_WECHAT_AES_KEY is set, so only safe-mode (encrypt_type=aes) pushes are "
            "accepted; a plain push is refused",
            field="encrypt_type",
        )
    if mode == "aes" and not has_key:
        raise NotConfigured("WeChat sent a safe-mode push but RECALL_WECHAT_AES_KEY is not "
                            "set; set the account's EncodingAESKey")
    return mode == "aes"


def _wechat_xml(services: Services, raw: bytes, query: Mapping[str, str]) -> str:
    s = services.settings
    aes_key = _secret(s.wechat_aes_key)
    if not _wechat_encrypted(services, query) or not aes_key:
        return raw.decode("utf-8", errors="replace")
    token = services.inbound_secret("wechat_token")
    return _decrypt(WeChatCrypto(token, aes_key, s.wechat_appid), raw, query)


def _wecom_xml(services: Services, raw: bytes, query: Mapping[str, str]) -> str:
    s = services.settings
    token, aes_key = services.inbound_secret("wecom_token"), _secret(s.wecom_aes_key)
    if aes_key:
        return _decrypt(WeComCrypto(token, aes_key, s.wecom_corp_id), raw, query)
    # No AES key: plain mode (the sandbox), signed like a WeChat plain-mode push.
    return raw.decode("utf-8", errors="replace")


def _verify_plain(services: Services, setting: str, query: Mapping[str, str]) -> None:
    verify_wechat(services.inbound_secret(setting),
                  query.get("signature") or query.get("msg_signature"),
                  query.get("timestamp", ""), query.get("nonce", ""))


def _parse(parse: Any, xml: str) -> Any:
    try:
        return parse(xml)
    except Exception as exc:  # expat and KeyError alike: not a push we can read
        raise InputError(f"push is not a WeChat XML message: {exc}") from None


def _on_wechat_event(services: Services, message: Any, now: datetime) -> str:
    event = getattr(message, "event", "")
    if event == "unsubscribe":
        return _unfollowed(services, message.source, now)
    if event in ("subscribe", "subscribe_scan"):
        return _followed(services, message.source, now)
    if event == "masssendjobfinish":
        counts = {
            "status": message.status, "total_count": message.total_count,
            "filter_count": message.filter_count, "sent_count": message.sent_count,
            "error_count": message.error_count, "finished_at": now.isoformat(),
        }
        with begin_write(services.engine) as conn:
            batch = track.apply_mass_send_result(conn, msg_id=str(message.id), counts=counts)
        if batch is None:
            log.warning("MASSSENDJOBFINISH for unknown MsgID %s: acknowledged", message.id)
        return "masssendjobfinish"
    return "ignored"


def _unfollowed(services: Services, openid: str, now: datetime) -> str:
    with begin_write(services.engine) as conn:
        track.set_wechat_followed(conn, openid=openid, followed=False, now=now)
    # Reason "unfollow": consent reports such a user as not_following.
    consent.record_opt_out(services.engine, channel="wechat_article",
                              identity=f"openid:{openid}", reason="unfollow", at=now)
    return "unsubscribe"


def _followed(services: Services, openid: str, now: datetime) -> str:
    with begin_write(services.engine) as conn:
        track.set_wechat_followed(conn, openid=openid, followed=True, now=now)
    consent.clear_opt_out(services.engine, channel="wechat_article",
                             identity=f"openid:{openid}")
    return "subscribe"


def _members(fields: Mapping[str, Any]) -> list[str]:
    items = (fields.get("MemChangeList") or {}).get("Item") or []
    return [items] if isinstance(items, str) else [str(i) for i in items]


def _on_wecom_event(services: Services, message: Any, now: datetime) -> str:
    fields: Mapping[str, Any] = getattr(message, "_data", {}) or {}
    is_join = (
        str(fields.get("Event", "")).lower() == "change_external_chat"
        and fields.get("ChangeType") == "update"
        and fields.get("UpdateDetail") == "add_member"
    )
    if not is_join:
        return "ignored"
    with begin_write(services.engine) as conn:
        touched = track.apply_group_join(
            conn, state=fields.get("State"), external_userids=_members(fields), now=now
        )
    if not touched:
        log.info("group join in %s matched no invite touch", fields.get("ChatId"))
    return "group_join"


def _wechat_push(services: Services, raw: bytes, query: Mapping[str, str]) -> None:
    # The plain signature comes in both modes; safe mode adds msg_signature over the body.
    _verify_plain(services, "wechat_token", query)
    _wechat_encrypted(services, query)
    with _fresh(services, "wechat", query):
        message = _parse(parse_wechat, _wechat_xml(services, raw, query))
        kind = _on_wechat_event(services, message, services.clock.now())
    services.metrics.callbacks.labels(provider="wechat", kind=kind).inc()


def _wecom_push(services: Services, raw: bytes, query: Mapping[str, str]) -> None:
    if not _secret(services.settings.wecom_aes_key):
        _verify_plain(services, "wecom_token", query)
    xml = _wecom_xml(services, raw, query)  # with an AES key, decrypting checks msg_signature
    with _fresh(services, "wecom", query):
        message = _parse(parse_wecom, xml)
        kind = _on_wecom_event(services, message, services.clock.now())
    services.metrics.callbacks.labels(provider="wecom", kind=kind).inc()


def _wechat_echo(services: Services, query: Mapping[str, str]) -> str:
    _verify_plain(services, "wechat_token", query)
    with _fresh(services, "wechat", query):
        return query.get("echostr", "")


def _wecom_echo(services: Services, query: Mapping[str, str]) -> str:
    s = services.settings
    aes_key = _secret(s.wecom_aes_key)
    if not aes_key:
        _verify_plain(services, "wecom_token", query)
        with _fresh(services, "wecom", query):
            return query.get("echostr", "")
    token = services.inbound_secret("wecom_token")
    crypto = WeComCrypto(token, aes_key, s.wecom_corp_id)
    echostr, timestamp, nonce = (query.get(k, "") for k in ("echostr", "timestamp", "nonce"))
    try:
        plain = str(crypto.check_signature(query.get("msg_signature", ""), timestamp, nonce,
                                           echostr))
    except WeChatException as exc:
        raise SignatureError(f"WeCom URL verification failed: {exc}",
                             field="msg_signature") from None
    except (ValueError, TypeError, UnicodeError) as exc:
        raise InputError(f"echostr is malformed: {exc}", field="echostr") from None
    with _fresh(services, "wecom", query):
        return plain


@router.get("/wechat", response_class=PlainTextResponse)
def wechat_verify(request: Request, services: ServicesDep) -> str:
    """URL verification: echoes ``echostr`` when ``signature`` matches the token."""
    return _wechat_echo(services, request.query_params)


@router.post("/wechat", response_class=PlainTextResponse)
async def wechat_push(request: Request, services: ServicesDep) -> str:
    """Event pushes: ``unsubscribe`` (opt-out), ``subscribe``, ``MASSSENDJOBFINISH``."""
    raw = await request.body()
    await run_in_threadpool(_wechat_push, services, raw, request.query_params)
    return "success"


@router.get("/wecom", response_class=PlainTextResponse)
def wecom_verify(request: Request, services: ServicesDep) -> str:
    """URL verification: the decrypted ``echostr`` (plain echo without an AES key)."""
    return _wecom_echo(services, request.query_params)


@router.post("/wecom", response_class=PlainTextResponse)
async def wecom_push(request: Request, services: ServicesDep) -> str:
    """Event pushes: ``change_external_chat`` joins mark the invite touch joined/clicked."""
    raw = await request.body()
    await run_in_threadpool(_wecom_push, services, raw, request.query_params)
    return "success"
