"""The vocabulary between the HTTP edge and the sandbox state: a received call, an operation's
outcome, the reply to send back, and a provider-shaped error."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Provider = Literal["wechat", "wecom", "twilio"]
PROVIDERS: tuple[Provider, ...] = ("wechat", "wecom", "twilio")
BodyKind = Literal["json", "form", "multipart", "query"]


@dataclass(slots=True)
class Call:
    """One provider request as received. ``raw`` is what the record keeps (compact bytes)."""

    provider: Provider
    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    raw: bytes = b""
    body_kind: BodyKind = "json"
    path_params: Mapping[str, str] = field(default_factory=dict)
    basic_auth: tuple[str, str] | None = None
    invalid_body: bool = False  # a JSON API got a body that is not a JSON object


@dataclass(slots=True)
class Outcome:
    """What an operation did: the provider payload and how the record should file it."""

    payload: dict[str, Any]
    status: int = 200
    outcome: str = "accepted"
    excluded: dict[str, str] | None = None  # recipient -> why it was not sent to
    ref: str | None = None  # msg_id / msgid / sid the call created or found


@dataclass(slots=True)
class Reply:
    """What the HTTP edge sends back. ``drop`` closes the connection instead of answering;
    ``seq`` is the record entry the call was filed under."""

    status: int
    payload: dict[str, Any] | None = None
    text: str | None = None
    delay_s: float = 0.0
    drop: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    seq: int | None = None


class ProviderError(Exception):
    """A provider-shaped refusal: WeChat/WeCom ``errcode``, Twilio ``code`` (+ HTTP status)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        http_status: int = 200,
        extra: dict[str, Any] | None = None,
        outcome: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.http_status = http_status
        self.extra = extra or {}
        self.outcome = outcome or f"error:{code}"  # how the record files it
        super().__init__(f"{code}: {message}")


# An unbound method of a provider class (WeChatOA.mass_send...), called with that provider.
Operation = Callable[[Any, Call], Outcome]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider API the sandbox speaks. ``recipients`` names the body field whose value
    (a list or a single id) the record reports as the call's recipients."""

    provider: Provider
    method: str
    path: str  # FastAPI template, e.g. /2010-04-01/Accounts/{AccountSid}/Messages.json
    operation: Operation
    body_kind: BodyKind = "json"
    recipients: str | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if method.upper() != self.method:
            return None
        found = self.pattern.match(path)
        return found.groupdict() if found else None


# WeChat OA and WeCom answer errors the same way: HTTP 200 and an errcode/errmsg object.
ERRCODE_FAULTS: dict[str, tuple[int, str]] = {
    "busy": (-1, "system error"),
    "rate_limit": (45009, "reach max api daily quota limit"),
}


def errcode_error_reply(err: ProviderError) -> Reply:
    return Reply(err.http_status, {"errcode": err.code, "errmsg": err.message, **err.extra})


def errcode_fault_reply(kind: str) -> Reply:
    if kind == "http_500":
        return Reply(500, text="Internal Server Error")
    code, message = ERRCODE_FAULTS[kind]
    return Reply(200, {"errcode": code, "errmsg": message})


T = TypeVar("T")


def typed(value: Any, kind: type[T], code: int, message: str) -> T:
    """``value`` if it is a ``kind``, else the provider error ``code``."""
    if not isinstance(value, kind):
        raise ProviderError(code, message)
    return value


def present(value: T | None, code: int, message: str) -> T:
    """``value`` unless it is None (an unknown id), else the provider error ``code``."""
    if value is None:
        raise ProviderError(code, message)
    return value


def require(condition: bool, code: int, message: str) -> None:
    """Raise the provider error ``code`` unless ``condition`` holds."""
    if not condition:
        raise ProviderError(code, message)
