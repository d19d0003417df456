"""Small pieces every adapter shares: provider base URLs, timeouts, batch checks."""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from orchestrator.channels.base import (
    PER_RECIPIENT,
    Message,
    SendRequest,
    TouchResult,
    per_recipient,
)
from orchestrator.errors import ChannelConfig, ConfigError

T = TypeVar("T")

# (connect, read) seconds for every provider call. A connect failure is cheap to retry; the
# read timeout bounds how long a worker waits before declaring the outcome unknown.
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 15.0)


def provider_base(value: str | None, default: str, setting: str) -> str:
    """Validate a ``*_API_BASE`` setting (scheme://host[:port]); unset -> ``default``."""
    if not value:
        return default
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(
            f"{setting}={value!r} must be scheme://host[:port] only, e.g. "
            "http://127.0.0.1:8081; the adapters append the provider's own paths"
        )
    return f"{parts.scheme}://{parts.netloc}"


_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_CALLBACK_URL_CHARS = 4000  # Twilio's StatusCallback limit (21609)


def callback_url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why Twilio would refuse ``url`` as a ``StatusCallback`` (21609), or None.

    A fully qualified http(s) URL with a valid host name (letters, digits, hyphens: no
    underscores) and at most 4,000 characters, that Twilio can reach over the public internet:
    a loopback or private address only when ``allow_private`` (a provider on this machine).
    """
    if len(url) > MAX_CALLBACK_URL_CHARS:
        return f"it is {len(url):,} characters; Twilio takes at most {MAX_CALLBACK_URL_CHARS:,}"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return "it is not a fully qualified http(s) URL with a host name"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None and not all(_LABEL.match(label) for label in host.split(".")):
        return f"host {host!r} is not a valid host name (letters, digits and hyphens only)"
    if allow_private:
        return None
    if address is not None and not address.is_global:
        return f"host {host} is a private or loopback address Twilio cannot reach"
    if address is None and (host == "localhost" or host.endswith(".localhost") or "." not in host):
        return f"host {host!r} is not a public host name Twilio can reach"
    return None


def is_loopback_host(url: str) -> bool:
    """Is ``url``'s host this machine (a sandbox standing in for the provider)?"""
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_batch(request: SendRequest, *, channel: str, max_batch: int) -> None:
    """Refuse a batch larger than the channel takes: splitting is the engine's job, because
    each provider call needs its own frozen batch id (WeChat's clientmsgid)."""
    if len(request.messages) > max_batch:
        raise ChannelConfig(
            f"{channel}: batch {request.batch_id!r} has {len(request.messages)} messages, more "
            f"than max_batch={max_batch}; split due touches into batches of at most "
            f"{channel}.max_batch before sending",
            provider=channel,
        )


def check_one_text(request: SendRequest, *, channel: str) -> None:
    """A shared batch (not ``per_recipient``) is sent as one text to all its recipients: refuse
    it, before any call, if its messages do not all say the same thing, so that nobody ever
    gets somebody else's text or link."""
    if per_recipient(request):
        return
    contents = {(m.title, m.text, m.link) for m in request.messages}
    if len(contents) > 1:
        raise ChannelConfig(
            f"{channel}: batch {request.batch_id!r} holds {len(contents)} different texts, but "
            "one call sends one text to all its recipients; freeze recipients with their own "
            f"text in a batch with options mode={PER_RECIPIENT!r}",
            provider=channel,
        )


def failed(message: Message, reason: str) -> TouchResult:
    return TouchResult(touch_id=message.touch_id, status="failed", reason=reason)


def unknown(message: Message) -> TouchResult:
    return TouchResult(touch_id=message.touch_id, status="unknown")


class PerThread(Generic[T]):
    """One ``make()`` per thread: SDK clients hold a ``requests.Session``, which is not meant
    to be shared between threads, and keeping one per thread keeps its connection alive."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()

    def get(self) -> T:
        value: T | None = getattr(self._local, "value", None)
        if value is None:
            value = self._local.value = self._make()
        return value
