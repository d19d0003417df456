"""Building requests and reading the sandbox's own record in channel tests."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from orchestrator.channels.base import PER_RECIPIENT, Message, Recipient, SendRequest
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.server import SandboxHandle
from tests.support import jpeg


def message(i: int, *, text: str = "<p>We miss you</p>", **recipient: Any) -> Message:
    fields = {
        "openid": f"o{i:027d}",
        "external_userid": f"wm{i:08d}",
        "phone": f"+86138{i:08d}",
        "wecom_sender": "staff-a",
    }
    fields.update(recipient)
    return Message(
        touch_id=i,
        key=f"{i}:step",
        recipient=Recipient(user_id=f"u{i}", **fields),
        text=text,
        title="We miss you",
        link=f"http://127.0.0.1:8000/s/c{i:09d}",
    )


def messages(n: int, *, start: int = 0, **recipient: Any) -> tuple[Message, ...]:
    return tuple(message(i, **recipient) for i in range(start, start + n))


ONE_TEXT = ("wechat_article", "wecom_group_invite")
COVER_JPEG = jpeg()
COVER = {"cover_jpeg_b64": base64.b64encode(COVER_JPEG).decode(), "cover_name": "w/cover.jpg"}


def request(
    batch_id: str,
    channel: str,
    msgs: Sequence[Message],
    *,
    options: Mapping[str, str] | None = None,
    content_version: str = "j1:v1:tpl:a",
    created_at: datetime | None = None,
    cover: bool = True,
) -> SendRequest:
    """A batch; an article batch carries a cover (as the engine adds it) unless ``cover`` is
    False. A shared batch of a one-text channel says one thing to all (no per-touch links),
    as the engine freezes it."""
    if channel == "wechat_article" and cover:
        options = {**COVER, **(options or {})}
    if channel in ONE_TEXT and (options or {}).get("mode") != PER_RECIPIENT:
        msgs = [replace(m, link=None) for m in msgs]
    return SendRequest(
        batch_id=batch_id,
        channel=channel,
        journey_id="winback",
        step_id="step",
        content_version=content_version,
        messages=tuple(msgs),
        options=dict(options or {}),
        created_at=created_at,
    )


def calls(
    sandbox: SandboxHandle, provider: str, path_part: str, outcome: str | None = None
) -> list[dict[str, Any]]:
    """The sandbox's record of calls to ``provider`` whose path contains ``path_part``."""
    return [
        e
        for e in sandbox.state.records(provider)
        if path_part in e["path"] and (outcome is None or e["outcome"] == outcome)
    ]


def fault(
    sandbox: SandboxHandle,
    kind: str,
    provider: str,
    path_contains: str = "",
    *,
    count: int = 1,
    seconds: float | None = None,
) -> None:
    sandbox.state.add_fault(
        FaultSpec(
            provider=provider,  # type: ignore[arg-type]
            path_contains=path_contains,
            kind=kind,  # type: ignore[arg-type]
            count=count,
            seconds=seconds,
        )
    )
