"""Provider callbacks (SPEC §8): Twilio status and inbound SMS, WeChat OA and WeCom pushes.

Public, authenticated by the providers' signatures (400 when wrong, nothing changed).
What a callback changes in the store is in ``orchestrator.tracking.callbacks``; opt-outs
go through ``orchestrator.policy.consent``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from orchestrator.api.signatures import TWILIO_HEADER, verify_twilio, verify_wechat
from orchestrator.errors import ConfigError, InputError, SignatureError
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
    if not phone or not consent.parse_sms_opt_out(body):
        return "inbound"
    # By identity: the number is suppressed whoever has it, now or after a later import.
    consent.record_opt_out(services.engine, channel="sms", identity=f"phone:{phone}",
                           reason=f"sms_reply:{body.strip()[:32]}", at=now)
    return "opt_out"


def _twilio(services: Services, url: str, raw: bytes, signature: str | None) -> None:
    params = ImmutableMultiDict(parse_qsl(raw.decode("utf-8", errors="replace"),
                                          keep_blank_values=True))
    verify_twilio(url, params, signature,
                  auth_token=services.settings.twilio_auth_token.get_secret_value())
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


def _decrypt(crypto: Any, raw: bytes, query: Mapping[str, str]) -> str:
    try:
        return str(crypto.decrypt_message(
            raw, query.get("msg_signature", ""), query.get("timestamp", ""),
            query.get("nonce", ""),
        ))
    except WeChatException as exc:
        raise SignatureError(f"encrypted push does not verify: {exc}",
                             field="msg_signature") from None
    except (ValueError, KeyError) as exc:
        raise InputError(f"encrypted push is malformed: {exc}") from None


def _wechat_xml(services: Services, raw: bytes, query: Mapping[str, str]) -> str:
    s = services.settings
    token = s.wechat_token.get_secret_value()
    verify_wechat(token, query.get("signature"), query.get("timestamp", ""),
                  query.get("nonce", ""))
    if query.get("encrypt_type", "raw") == "raw":
        return raw.decode("utf-8", errors="replace")
    aes_key = _secret(s.wechat_aes_key)
    if not aes_key:
        raise ConfigError("WeChat sent an encrypted push but RECALL_WECHAT_AES_KEY is not set")
    return _decrypt(WeChatCrypto(token, aes_key, s.wechat_appid), raw, query)


def _wecom_xml(services: Services, raw: bytes, query: Mapping[str, str]) -> str:
    s = services.settings
    token, aes_key = s.wecom_token.get_secret_value(), _secret(s.wecom_aes_key)
    if aes_key:
        return _decrypt(WeComCrypto(token, aes_key, s.wecom_corp_id), raw, query)
    # No AES key: plain mode (the sandbox), signed like a WeChat plain-mode push.
    verify_wechat(token, query.get("signature") or query.get("msg_signature"),
                  query.get("timestamp", ""), query.get("nonce", ""))
    return raw.decode("utf-8", errors="replace")


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
    message = _parse(parse_wechat, _wechat_xml(services, raw, query))
    kind = _on_wechat_event(services, message, services.clock.now())
    services.metrics.callbacks.labels(provider="wechat", kind=kind).inc()


def _wecom_push(services: Services, raw: bytes, query: Mapping[str, str]) -> None:
    message = _parse(parse_wecom, _wecom_xml(services, raw, query))
    kind = _on_wecom_event(services, message, services.clock.now())
    services.metrics.callbacks.labels(provider="wecom", kind=kind).inc()


def _wechat_echo(services: Services, query: Mapping[str, str]) -> str:
    verify_wechat(services.settings.wechat_token.get_secret_value(), query.get("signature"),
                  query.get("timestamp", ""), query.get("nonce", ""))
    return query.get("echostr", "")


def _wecom_echo(services: Services, query: Mapping[str, str]) -> str:
    s = services.settings
    token, aes_key = s.wecom_token.get_secret_value(), _secret(s.wecom_aes_key)
    echostr, timestamp, nonce = (query.get(k, "") for k in ("echostr", "timestamp", "nonce"))
    if not aes_key:
        verify_wechat(token, query.get("signature") or query.get("msg_signature"), timestamp,
                      nonce)
        return echostr
    crypto = WeComCrypto(token, aes_key, s.wecom_corp_id)
    try:
        return str(crypto.check_signature(query.get("msg_signature", ""), timestamp, nonce,
                                          echostr))
    except WeChatException as exc:
        raise SignatureError(f"WeCom URL verification failed: {exc}",
                             field="msg_signature") from None


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
