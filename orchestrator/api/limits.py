"""Request body size limit, enforced before a route reads the body.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted
as it streams and refused as soon as it passes the limit. Either way the answer is 413 in
the API's error shape.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.api.errors import error_body

MAX_BODY_BYTES = 10 * 1024 * 1024  # 10 MB: 10,000 events of about 1 KB each


class BodyTooLarge(HTTPException):
    """Raised from inside ``receive``: FastAPI passes HTTP exceptions through body parsing,
    so the route's error handler answers 413 whether FastAPI or the route reads the body."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large_message(max_bytes))


def _too_large_message(max_bytes: int) -> str:
    return f"request body is larger than {max_bytes:,} bytes; split it into smaller requests"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        message = _too_large_message(self.max_bytes)
        body = json.dumps(error_body("payload_too_large", message)).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
