"""``POST /v1/webhooks/payments/{generic|stripe|wechatpay}``.

Public, authenticated by signature. Each route reads the raw body, checks the signature
before anything else (nothing is stored on a wrong or stale one: 400), then lets
``orchestrator.api.payments`` turn a failed payment into a ``payment_failed`` event.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from orchestrator.api.deps import Services, ServicesDep
from orchestrator.api.payments import (
    FailedPayment,
    Outcome,
    accept_failed_payment,
    parse_generic,
    parse_stripe,
    parse_wechatpay,
    parse_wechatpay_xml,
)
from orchestrator.api.signatures import (
    GENERIC_HEADER,
    STRIPE_HEADER,
    verify_timestamped,
    verify_wechatpay,
)

router = APIRouter(prefix="/v1/webhooks/payments", tags=["webhooks"])
WECHATPAY_ACK = (
    "<xml><return_code><![CDATA[SUCCESS]]></return_code>"
    "<return_msg><![CDATA[OK]]></return_msg></xml>"
)
SIGNED_BODY = {
    "description": "Signed webhook body (see docs/api.md for each scheme)",
    "content": {"application/json": {}},
}


def _accept(services: Services, source: str, payment: FailedPayment | None) -> Outcome:
    outcome = Outcome.IGNORED
    if payment is not None:
        outcome = accept_failed_payment(
            services.engine, payment, now=services.clock.now(), ingest=services.ingest
        )
    services.metrics.webhooks.labels(source=source, outcome=outcome.value).inc()
    return outcome


def _generic(services: Services, raw: bytes, signature: str | None) -> Outcome:
    secret = services.inbound_secret("generic_webhook_secret")
    now = services.clock.now()
    verify_timestamped(raw, signature, secret=secret, now=now, header=GENERIC_HEADER)
    return _accept(services, "generic", parse_generic(raw, now=now))


def _stripe(services: Services, raw: bytes, signature: str | None) -> Outcome:
    secret = services.inbound_secret("stripe_webhook_secret")
    now = services.clock.now()
    verify_timestamped(raw, signature, secret=secret, now=now, header=STRIPE_HEADER)
    return _accept(services, "stripe", parse_stripe(raw, now=now))


def _wechatpay(services: Services, raw: bytes) -> Outcome:
    # The v2 sign lives inside the XML, so the XML is parsed (entities refused) to check it.
    fields = parse_wechatpay_xml(raw)
    verify_wechatpay(fields, api_key=services.inbound_secret("wechatpay_api_key"))
    return _accept(services, "wechatpay", parse_wechatpay(fields, now=services.clock.now()))


@router.post("/generic", openapi_extra={"requestBody": SIGNED_BODY})
async def generic_webhook(request: Request, services: ServicesDep) -> dict[str, Any]:
    """``X-Recall-Signature: t=<unix>,v1=hex(HMAC-SHA256(secret, f"{t}.{raw body}"))``."""
    raw = await request.body()
    outcome = await run_in_threadpool(
        _generic, services, raw, request.headers.get(GENERIC_HEADER)
    )
    return {"status": outcome.value}


@router.post("/stripe", openapi_extra={"requestBody": SIGNED_BODY})
async def stripe_webhook(request: Request, services: ServicesDep) -> dict[str, Any]:
    """Stripe events ``invoice.payment_failed`` / ``payment_intent.payment_failed``."""
    raw = await request.body()
    outcome = await run_in_threadpool(_stripe, services, raw, request.headers.get(STRIPE_HEADER))
    return {"status": outcome.value}


@router.post(
    "/wechatpay",
    response_class=Response,
    openapi_extra={"requestBody": {"content": {"application/xml": {}}}},
)
async def wechatpay_webhook(request: Request, services: ServicesDep) -> Response:
    """WeChat Pay v2 notify (``result_code=FAIL``), answered with the XML acknowledgement."""
    request.state.error_format = "wechatpay"
    raw = await request.body()
    await run_in_threadpool(_wechatpay, services, raw)
    return Response(WECHATPAY_ACK, media_type="application/xml")
