"""The channel port: send one batch of touches, or look it up; get a result per touch.

The engine freezes a ``SendRequest`` (its ``batch_id`` is the provider idempotency key,
WeChat's ``clientmsgid``) before the first provider call, so a retry repeats the same
call. Adapters translate SDK exceptions at this boundary:

- a whole-call failure raises ``ChannelRetryable`` / ``ChannelConfig`` / ``ChannelUnknown``;
- a per-recipient failure is a ``TouchResult`` with ``status="failed"`` and a ``reason``;
- a message the provider definitely did not take (refused with a retryable error after part
  of the batch went out, or not found by a lookup) is ``status="absent"``: sending it, with
  the same idempotency key, is safe; ``retry_after_s`` carries the provider's wish;
- ``status="unknown"``: the call may have reached the provider and nobody can tell yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    from datetime import datetime

    from redis import Redis

    from orchestrator.config import Settings

TouchStatus = Literal["sent", "delivered", "failed", "unknown", "absent"]


@dataclass(frozen=True)
class Recipient:
    user_id: str
    openid: str | None = None
    unionid: str | None = None
    external_userid: str | None = None
    phone: str | None = None
    wecom_sender: str | None = None


@dataclass(frozen=True)
class Message:
    touch_id: int
    key: str  # idempotency key of the touch: "{enrollment_id}:{step_id}"
    recipient: Recipient
    text: str  # rendered body: SMS text without signature/suffix, article HTML, invite text
    title: str | None = None  # article title
    link: str | None = None  # this touch's tracked short URL


@dataclass(frozen=True)
class SendRequest:
    batch_id: str  # <= 64 bytes, stable across retries of the same batch
    channel: str
    journey_id: str
    step_id: str
    content_version: str  # cache key for uploaded media (journey version + template + variant)
    messages: tuple[Message, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    # Business time the batch was frozen (SendBatch.created_at). Bounds reconciliation
    # queries (Twilio ``DateSent>=``, WeCom ``get_groupmsg_list_v2`` window); None = now.
    created_at: datetime | None = None


@dataclass(frozen=True)
class TouchResult:
    touch_id: int
    status: TouchStatus
    provider_message_id: str | None = None
    reason: str | None = None
    segments: int = 0
    cost: float = 0.0
    retry_after_s: float | None = None  # "absent" after a refusal: the provider's Retry-After


PER_RECIPIENT = "per_recipient"  # SendRequest.options["mode"]: every message its own text


def per_recipient(request: SendRequest) -> bool:
    """Does this batch of a one-text channel carry a different text for each recipient?"""
    return request.options.get("mode") == PER_RECIPIENT


class Channel(Protocol):
    """A provider adapter. ``name`` is the journey's ``send:`` value.

    ``one_text``: one provider call carries one text for all its recipients (a mass send, a
    WeCom task). The engine then freezes recipients whose rendered content is identical
    together, the batch holding that content once, and puts recipients with content of
    their own into batches with ``options["mode"] = PER_RECIPIENT``, which the adapter
    sends by one call per recipient. Never the first recipient's text to everyone.
    """

    name: ClassVar[str]
    max_batch: ClassVar[int]
    one_text: ClassVar[bool]

    def send(self, request: SendRequest) -> list[TouchResult]:
        """Send every message of the batch once; one result per message."""
        ...

    def reconcile(self, request: SendRequest) -> list[TouchResult]:
        """Look the batch up: what the provider has of each message (``absent``: definitely
        nothing, ``unknown``: it cannot tell). Sends nothing new."""
        ...


ChannelFactory = Callable[["Settings", "Redis"], Channel]

REGISTRY: dict[str, ChannelFactory] = {}


def register(name: str, factory: ChannelFactory) -> None:
    REGISTRY[name] = factory


def build_channel(name: str, settings: Settings, redis: Redis) -> Channel:
    from orchestrator.errors import ConfigError

    try:
        factory = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise ConfigError(f"unknown channel {name!r}; known channels: {known}") from None
    return factory(settings, redis)
