"""Errors as HTTP: one table from the error tree to a status and a stable ``code``.

Every error answer has the same JSON shape, ``{"error": {"code", "message", "field"}}``;
FastAPI's own errors (unknown route, bad JSON, validation) are reshaped to match. A route
whose caller only reads XML (WeChat Pay) sets ``request.state.error_format = "wechatpay"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import (
    ChannelError,
    ConfigError,
    InputError,
    JourneyError,
    NotConfigured,
    NotFoundError,
    RecallError,
    SignatureError,
    StoreError,
)

log = logging.getLogger(__name__)

# Most specific first: the first row whose class matches decides.
ERROR_TABLE: list[tuple[type[RecallError], int, str]] = [
    (SignatureError, 400, "invalid_signature"),
    (InputError, 400, "invalid_input"),
    (NotFoundError, 404, "not_found"),
    (NotConfigured, 503, "not_configured"),
    (JourneyError, 500, "invalid_journey"),  # the API takes no journeys: it is the server's
    (ConfigError, 500, "config_error"),
    (StoreError, 503, "store_unavailable"),
    (ChannelError, 502, "provider_error"),
    (RecallError, 500, "internal_error"),
]
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_request", 429: "rate_limited",
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(
    status: int, code: str, message: str, field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, field), status_code=status, headers=headers)


def classify(exc: RecallError) -> tuple[int, str]:
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def wechatpay_failure(message: str, status: int) -> Response:
    body = (
        "<xml><return_code><![CDATA[FAIL]]></return_code>"
        f"<return_msg><![CDATA[{message.replace(']]>', '')}]]></return_msg></xml>"
    )
    return Response(body, status_code=status, media_type="application/xml")


async def recall_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RecallError)
    status, code = classify(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    if isinstance(exc, SignatureError):
        services = getattr(request.app.state, "services", None)
        if services is not None:
            source = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            services.metrics.webhook_rejections.labels(source=source).inc()
    if getattr(request.state, "error_format", None) == "wechatpay":
        return wechatpay_failure(str(exc), status)
    return error_response(status, code, str(exc), getattr(exc, "field", None))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    return error_response(422, "invalid_request", message, field)


async def database_error_handler(request: Request, exc: Exception) -> Response:
    log.error("%s %s: database error: %s", request.method, request.url.path, exc)
    return error_response(503, "store_unavailable",
                          "the database did not answer; retry later (details in the server log)")


async def redis_error_handler(request: Request, exc: Exception) -> Response:
    log.error("%s %s: Redis error: %s", request.method, request.url.path, exc)
    return error_response(503, "store_unavailable",
                          "Redis did not answer; retry later (details in the server log)")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    # Uvicorn logs the traceback too; the client learns nothing internal.
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error (details in the server log)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RecallError, recall_error_handler)
    app.add_exception_handler(DBAPIError, database_error_handler)
    app.add_exception_handler(RedisError, redis_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
