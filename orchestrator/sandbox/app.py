"""The sandbox's HTTP edge: provider routes generated from the providers' endpoint tables,
the ``/_sandbox`` control API, and the two things only an HTTP server can do for a fault:
wait (latency/timeout) and hang up (drop)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive, Scope, Send

from orchestrator.journeys.covers import image_format
from orchestrator.sandbox.calls import Call, Endpoint, Reply
from orchestrator.sandbox.control import control_router
from orchestrator.sandbox.faults import Fault
from orchestrator.sandbox.state import ENDPOINTS, SandboxState, parse_form
from orchestrator.sandbox.waker import Held, Waker

DROP_HEADER = b"x-sandbox-drop"


def create_app(state: SandboxState | None = None) -> FastAPI:
    """The sandbox as an ASGI app; ``state`` defaults to one configured from Recall's settings."""
    if state is None:
        from orchestrator.config import get_settings
        from orchestrator.sandbox.config import SandboxConfig

        state = SandboxState(SandboxConfig.from_settings(get_settings()))
    app = SandboxApp(
        title="Recall provider sandbox",
        description="WeChat OA, WeCom and Twilio subsets at the providers' own paths; "
        "control API under /_sandbox. See docs/sandbox.md.",
    )
    app.state.sandbox = state
    app.state.waker = Waker()
    for endpoint in ENDPOINTS:
        app.add_api_route(
            endpoint.path,
            _provider_route(state, app.state.waker, endpoint),
            methods=[endpoint.method],
            name=f"{endpoint.provider}:{endpoint.method} {endpoint.path}",
            tags=[endpoint.provider],
        )
    app.include_router(control_router(state, app.state.waker))
    return app


def _provider_route(
    state: SandboxState, waker: Waker, endpoint: Endpoint
) -> Callable[[Request], Awaitable[Response]]:
    async def provider_call(request: Request) -> Response:
        call = await read_call(request, endpoint)
        fault = state.take_fault(endpoint.provider, call.path, call.method)
        if fault is not None and fault.kind == "latency":
            await waker.sleep(fault.seconds, _held(request, call, fault))
        reply = state.run(endpoint, call, fault)
        if reply.delay_s and fault is not None:
            await waker.sleep(reply.delay_s, _held(request, call, fault, reply.seq))
        return render(reply)

    provider_call.__doc__ = f"{endpoint.provider} API (see docs/sandbox.md)."
    return provider_call


def _held(request: Request, call: Call, fault: Fault, seq: int | None = None) -> Held:
    client = f"{request.client.host}:{request.client.port}" if request.client else None
    return Held(kind=fault.kind, provider=call.provider, method=call.method, path=call.path,
                client=client, seq=seq, fault=fault.id)


async def read_call(request: Request, endpoint: Endpoint) -> Call:
    """Parse a request into a ``Call`` the way the provider would read it."""
    query = dict(request.query_params)
    call = Call(
        provider=endpoint.provider,
        method=request.method,
        path=request.url.path,
        query=query,
        body_kind=endpoint.body_kind,
        path_params=dict(request.path_params),
        basic_auth=_basic_auth(request.headers.get("authorization")),
    )
    if endpoint.body_kind == "json":
        # wechatpy posts JSON bytes without a Content-Type, so never trust the header.
        call.raw = await request.body()
        parsed = _json_object(call.raw)
        call.body, call.invalid_body = (parsed, False) if parsed is not None else ({}, True)
    elif endpoint.body_kind == "form":
        call.raw = await request.body()
        call.body = parse_form(call.raw)
    elif endpoint.body_kind == "multipart":
        call.body = await _upload_summary(request, query)
    return call


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def _upload_summary(request: Request, query: dict[str, str]) -> dict[str, Any]:
    """What the record keeps of a media upload: its type, file name, size and picture format
    (read from the bytes, as the provider does), not the bytes themselves."""
    async with request.form() as form:
        media = form.get("media")
        if not isinstance(media, UploadFile):
            return {"type": query.get("type", ""), "filename": None, "size": 0, "format": None}
        data = await media.read()
        return {
            "type": query.get("type", ""),
            "filename": media.filename,
            "size": len(data),
            "format": image_format(data),
        }


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user, password


def render(reply: Reply) -> Response:
    if reply.drop:
        return Response(status_code=204, headers={DROP_HEADER.decode(): "1"})
    if reply.text is not None:
        return PlainTextResponse(reply.text, status_code=reply.status, headers=reply.headers)
    return JSONResponse(reply.payload, status_code=reply.status, headers=reply.headers)


class SandboxApp(FastAPI):
    """FastAPI that can hang up: a response marked with ``x-sandbox-drop`` becomes a closed
    connection, so the call was processed and recorded but the client never hears back (the
    ``drop`` fault). This sits outside Starlette's own middleware because only the server's
    raw ``send`` leads to the connection: under uvicorn it is bound to the request cycle that
    owns the transport. Elsewhere (no transport) the request fails with an exception instead.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        dropped = False

        async def send_or_drop(message: Message) -> None:
            nonlocal dropped
            if message["type"] == "http.response.start" and any(
                name == DROP_HEADER for name, _ in message.get("headers", [])
            ):
                dropped = True
                _hang_up(send)
                return
            if not dropped:
                await send(message)

        await super().__call__(scope, receive, send_or_drop)


def _hang_up(send: Send) -> None:
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionAbortedError("sandbox drop fault: connection closed without an answer")
    transport.close()
    cycle.disconnected = True  # type: ignore[union-attr]  # uvicorn: do not answer for us
