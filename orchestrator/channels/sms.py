"""SMS through Twilio: one ``messages.create`` per touch, many in flight, paced.

Throughput comes from a thread pool (a Twilio client per thread, each over its own ``httpx``
client and keep-alive connection: ``twilio_http``) behind a process-wide token bucket
(``rate_per_s``, real time). Retries:

- *inside* the adapter, for cheap transient refusals where Twilio provably did not act
  (20429/429, 5xx, connection refused): at most ``Backoff.attempts`` calls per message,
  exponential back-off with full jitter, honouring Retry-After up to ``Backoff.cap_s``;
- *by the engine*: when nothing of the batch went out, the refusal is raised
  (``ChannelRetryable`` with ``retry_after_s``) and the engine retries the batch later; when
  part of it went out, a message still refused is ``absent`` (with the Retry-After) and the
  engine sends it again later: a rate limit never fails a touch.

Twilio has no idempotency key, so each message's call is written to the ``SendLedger``
(pending -> result) and a batch sent again returns what is recorded instead of sending twice.
A read timeout or dropped connection after the request went out is ``unknown`` for that
touch. ``reconcile`` looks the message up in Twilio's own list (``GET Messages.json?To=``,
newest first, back to the day before the batch was frozen) by the touch's short link (or
exact body) in the text. It filters by creation date itself: ``DateSent`` matches only
messages already sent, and a message still queued has no send date, so a ``DateSent``
filter would call it absent and have it sent twice. The ledger is a cache: when Redis lost
it, the lookup still answers.

Twilio's limits are kept before any call: a body over 1,600 characters as Twilio counts them
(``smstext.body_too_long``: UCS-2 units for Chinese, two for an emoji) fails its touch as
``body_too_long`` without a call, and the ``StatusCallback`` (``{PUBLIC_BASE_URL}/v1/callbacks/
twilio``) must be a URL Twilio accepts: talking to Twilio itself, it must also be public (a
loopback or private address is refused at start-up); a stand-in (the sandbox, a staging mock)
reaches what its own network reaches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import count
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from twilio.base.exceptions import TwilioException
from twilio.rest import Client

from orchestrator.channels.base import Message, SendRequest, TouchResult, TouchStatus
from orchestrator.channels.common import (
    DEFAULT_TIMEOUT,
    PerThread,
    callback_url_problem,
    check_batch,
    failed,
    provider_base,
    unknown,
)
from orchestrator.channels.errors import (
    Verdict,
    classify_twilio,
    to_channel_error,
    transport_error,
)
from orchestrator.channels.fanout import Outcome, from_entry, send_each, settle
from orchestrator.channels.ledger import SendLedger
from orchestrator.channels.pacing import Backoff, TokenBucket, shared_bucket
from orchestrator.channels.smstext import body_too_long, count_segments, sms_with_link
from orchestrator.channels.twilio_http import TwilioHttp
from orchestrator.errors import ChannelError, ChannelRetryable, ChannelUnknown, ConfigError

if TYPE_CHECKING:
    from redis import Redis

    from orchestrator.config import Settings

TWILIO_HOST = "https://api.twilio.com"
DEFAULT_RATE_PER_S = 1000.0
DEFAULT_WORKERS = 32
DEFAULT_VALIDITY_S = 3600  # a marketing text not out within an hour is better dropped
LOOKUP_PAGE = 50  # messages per page of a lookup
LOOKUP_MAX = 500  # messages read per lookup: caps keep a person to a few texts a week
PROVIDER = "twilio"
ACTION = "POST Messages.json"
DELIVERY_STATUS: dict[str, TouchStatus] = {
    "delivered": "delivered",
    "failed": "failed",
    "undelivered": "failed",
}


def sms_body(message: Message, options: Mapping[str, str]) -> str:
    """The text sent: rendered text + the touch's short link + signature + opt-out suffix."""
    return sms_with_link(message.text, message.link, signature=options.get("signature", ""),
                         opt_out_suffix=options.get("opt_out_suffix", ""))


class SmsChannel:
    """``send: sms``. Options: ``signature``, ``opt_out_suffix``, ``price_per_segment``,
    ``validity_period_s``, ``rate_per_s``. Build once per process and reuse (pool, clients)."""

    name: ClassVar[str] = "sms"
    max_batch: ClassVar[int] = 100
    one_text: ClassVar[bool] = False  # one message per call: each its own text

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        key_prefix: str = "recall",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        workers: int = DEFAULT_WORKERS,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_opt_out: Callable[[Message], None] | None = None,
    ) -> None:
        self._account_sid = settings.twilio_account_sid
        self._auth_token = settings.twilio_auth_token.get_secret_value()
        self._sender = _sender(settings)
        self._base = provider_base(settings.twilio_api_base, TWILIO_HOST, "RECALL_TWILIO_API_BASE")
        self._status_callback = _status_callback(settings.public_base_url, self._base)
        self._timeout = timeout
        self._rate_per_s = rate_per_s
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._on_opt_out = on_opt_out
        self._ledger = SendLedger(redis, prefix=key_prefix, channel=self.name)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recall-sms")
        self._clients = PerThread(self._new_client)
        self._transports: list[TwilioHttp] = []

    def __repr__(self) -> str:
        return f"SmsChannel(account_sid={self._account_sid!r}, base={self._base!r}, token=***)"

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for transport in self._transports:
            transport.close()

    # -- send ---------------------------------------------------------------------------

    def send(self, request: SendRequest) -> list[TouchResult]:
        """Send each message once (concurrently); recorded ones are not sent again."""
        check_batch(request, channel=self.name, max_batch=self.max_batch)
        bucket = self._bucket(request.options)
        return send_each(
            request,
            ledger=self._ledger,
            pool=self._pool,
            provider=PROVIDER,
            precheck=partial(_local_refusal, request),
            call=partial(self._send_with_retries, request),
            pace=bucket.acquire,
        )

    def _send_with_retries(self, request: SendRequest, message: Message) -> Outcome:
        body = sms_body(message, request.options)
        for retry in count(1):
            outcome = self._attempt(request, message, body)
            if not isinstance(outcome.error, ChannelRetryable):
                return outcome
            delay = self._backoff.delay(retry, outcome.error.retry_after_s)
            if delay is None:
                return outcome
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, request: SendRequest, message: Message, body: str) -> Outcome:
        client = self._client()
        try:
            created = client.messages.create(
                to=message.recipient.phone,
                body=body,
                status_callback=self._status_callback,
                validity_period=int(request.options.get("validity_period_s", DEFAULT_VALIDITY_S)),
                **self._sender,
            )
        except TwilioException as exc:
            return self._refused(message, exc, client.http_client.retry_after_s)
        except httpx.TransportError as exc:
            error = transport_error(exc, provider=PROVIDER, action=ACTION)
            if isinstance(error, ChannelUnknown):
                return Outcome(message, result=unknown(message))
            return Outcome(message, error=error)
        return Outcome(message, result=_charged(message, body, request.options, sid=created.sid))

    def _refused(
        self, message: Message, exc: TwilioException, retry_after_s: float | None
    ) -> Outcome:
        verdict, error = _rest_error(exc, ACTION, retry_after_s)
        if verdict.kind != "recipient":
            return Outcome(message, error=error)
        if verdict.reason == "opted_out:sms" and self._on_opt_out is not None:
            self._on_opt_out(message)
        return Outcome(message, result=failed(message, verdict.reason))

    # -- reconcile ----------------------------------------------------------------------

    def reconcile(self, request: SendRequest) -> list[TouchResult]:
        """What Twilio has of each message. Never sends.

        A result recorded in the ledger is taken as it is; any other message is looked up in
        Twilio's list (see the module docstring): found -> its status; not found -> ``absent``
        (Twilio never took it: the engine may send it, same touch, same text).
        """
        recorded = self._ledger.load(request.batch_id)
        since = _since(request.created_at)
        results = []
        for message in request.messages:
            entry = recorded.get(str(message.touch_id))
            if entry is not None and not entry.pending:
                results.append(from_entry(message, recorded))
            else:
                results.append(self._look_up(request, message, since))
        pairs = list(zip(request.messages, results, strict=True))
        settle(self._ledger, request.batch_id, [Outcome(m, result=r) for m, r in pairs])
        self._ledger.forget(request.batch_id,
                            [str(m.touch_id) for m, r in pairs if r.status == "absent"])
        return results

    def _look_up(self, request: SendRequest, message: Message, since: datetime) -> TouchResult:
        if not message.recipient.phone:
            return failed(message, "no_phone")
        body = sms_body(message, request.options)
        marker = message.link or body
        try:
            found = self._find(message.recipient.phone, marker, since)
        except TwilioException as exc:
            retry_after = self._client().http_client.retry_after_s
            raise _rest_error(exc, "GET Messages.json", retry_after)[1] from exc
        except httpx.TransportError as exc:
            raise transport_error(
                exc, provider=PROVIDER, action="GET Messages.json", sent=False
            ) from exc
        if found is None:
            return TouchResult(touch_id=message.touch_id, status="absent", reason="not_found")
        status = DELIVERY_STATUS.get(str(found.status), "sent")
        reason = f"twilio:{found.error_code}" if status == "failed" else None
        return _charged(message, body, request.options, sid=found.sid, status=status, reason=reason)

    def _find(self, phone: str, marker: str, since: datetime) -> Any:
        """The newest message to ``phone`` created since ``since`` whose body has ``marker``."""
        listed = self._client().messages.stream(to=phone, page_size=LOOKUP_PAGE)
        for seen, m in enumerate(listed):
            created = m.date_created
            if seen >= LOOKUP_MAX or (created is not None and created < since):
                return None  # newest first: everything further is older
            if m.body and marker in m.body:
                return m
        return None

    # -- plumbing -----------------------------------------------------------------------

    def _client(self) -> Client:
        """This thread's Twilio client (its own connection and ``retry_after_s``)."""
        return self._clients.get()

    def _new_client(self) -> Client:
        transport = TwilioHttp(self._timeout)
        self._transports.append(transport)
        client = Client(self._account_sid, self._auth_token, http_client=transport)
        client.edge = None
        client.region = None
        client.api.base_url = self._base
        return client

    def _bucket(self, options: Mapping[str, str]) -> TokenBucket:
        rate = float(options.get("rate_per_s", self._rate_per_s))
        return shared_bucket(f"twilio:{self._account_sid}", rate)


def _sender(settings: Settings) -> dict[str, str]:
    if settings.twilio_messaging_service_sid:
        return {"messaging_service_sid": settings.twilio_messaging_service_sid}
    if settings.twilio_from:
        return {"from_": settings.twilio_from}
    raise ConfigError(
        "sms: neither RECALL_TWILIO_FROM nor RECALL_TWILIO_MESSAGING_SERVICE_SID is set; "
        "set one to the registered sender"
    )


def _since(created_at: datetime | None) -> datetime:
    """How far back a lookup reads: a day before the batch was frozen (a margin for clocks),
    two days back when that is not known."""
    if created_at is None:
        return datetime.now(UTC) - timedelta(days=2)
    return created_at.astimezone(UTC) - timedelta(days=1)


def _status_callback(public_base_url: str, twilio_base: str) -> str:
    url = f"{public_base_url.rstrip('/')}/v1/callbacks/twilio"
    problem = callback_url_problem(url, allow_private=twilio_base != TWILIO_HOST)
    if problem is not None:
        raise ConfigError(
            f"sms: Twilio would refuse the status callback {url} (21609): {problem}; set "
            "RECALL_PUBLIC_BASE_URL to the public https address this API is reached at"
        )
    return url


def _no_phone(message: Message) -> TouchResult | None:
    return None if message.recipient.phone else failed(message, "no_phone")


def _local_refusal(request: SendRequest, message: Message) -> TouchResult | None:
    """What fails without a call: no phone, or a body Twilio refuses as too long (21617)."""
    missing = _no_phone(message)
    if missing is not None:
        return missing
    if body_too_long(sms_body(message, request.options)) is not None:
        return failed(message, "body_too_long")
    return None


def _charged(
    message: Message,
    body: str,
    options: Mapping[str, str],
    *,
    sid: str | None,
    status: TouchStatus = "sent",
    reason: str | None = None,
) -> TouchResult:
    """A result for a message Twilio took: segments of the body sent, at the policy's price."""
    segments = count_segments(body)
    price = float(options.get("price_per_segment", 0) or 0)
    return TouchResult(
        touch_id=message.touch_id,
        status=status,
        provider_message_id=sid,
        reason=reason,
        segments=segments,
        cost=round(segments * price, 6),
    )


def _page_error(exc: TwilioException) -> tuple[int | None, int | None]:
    """The error code and HTTP status of a list page Twilio refused (a 429 or a 5xx is the
    provider being busy, not a configuration error)."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = getattr(response, "status_code", None)
    try:
        code = json.loads(getattr(response, "text", "") or "{}").get("code")
    except (ValueError, AttributeError):
        code = None
    return (code if isinstance(code, int) else None), (status if isinstance(status, int) else None)


def _rest_error(
    exc: TwilioException, action: str, retry_after_s: float | None
) -> tuple[Verdict, ChannelError]:
    code, status = getattr(exc, "code", None), getattr(exc, "status", None)
    if status is None:  # a page Twilio would not list: TwilioException(message, response)
        code, status = _page_error(exc)
    verdict = classify_twilio(code, status=status)
    detail = getattr(exc, "msg", "") or getattr(exc, "detail", "") or str(code)
    error = to_channel_error(
        verdict,
        provider=PROVIDER,
        action=action,
        code=code,
        detail=str(detail),
        retry_after_s=retry_after_s,
    )
    return verdict, error
