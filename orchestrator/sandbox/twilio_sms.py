"""Twilio Programmable Messaging subset: create / fetch / list Messages, status callbacks and
simulated inbound SMS, with Twilio's error JSON, its magic test numbers and HTTP Basic auth.

Create rules (docs/sandbox.md cites the pages): ``To`` (21604), ``From`` or
``MessagingServiceSid`` (21603), ``Body`` or ``MediaUrl`` (21602) are required; the body is
at most 1,600 characters counted as the carrier is sent them (UCS-2 units for Chinese, two
for an emoji; 21617); ``StatusCallback`` is a fully qualified http(s) URL with a valid host
name (no underscores), at most 4,000 characters, that Twilio can reach (21609: a private
address is refused; loopback is reachable because the sandbox runs on this machine);
``ValidityPeriod`` an integer 1..14,400 seconds (21624, the stricter of Twilio's pages).

A created message is ``queued`` (``accepted`` via a Messaging Service). Each flush moves it
along (``sent`` then ``delivered``, or ``undelivered`` / ``failed`` for numbers registered
that way) and posts a status callback signed exactly as Twilio signs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from orchestrator.channels.common import callback_url_problem, is_loopback_host
from orchestrator.channels.smstext import MAX_BODY_UNITS, body_too_long, count_segments
from orchestrator.sandbox.calls import Call, Endpoint, Outcome, ProviderError, Reply
from orchestrator.sandbox.outbox import Delivery, Pending

if TYPE_CHECKING:
    from orchestrator.sandbox.state import SandboxState

API_VERSION = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_VALIDITY_S = 14_400
MAGIC_TO: dict[str, int] = {  # Twilio test credentials' documented "To" numbers
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550004": 21610,
    "+15005550009": 21614,
}
MAGIC_FROM: dict[str, int] = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}
NUMBER_STATES = ("ok", "invalid", "opted_out", "not_mobile", "undelivered", "failed")
STATE_CODES = {"invalid": 21211, "opted_out": 21610, "not_mobile": 21614}
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})
DELIVERY_ERRORS = {
    "undelivered": (30003, "Unreachable destination handset"),
    "failed": (30008, "Unknown error"),
}
FAULTS = {
    "http_500": (500, 20500, "Internal Server Error"),
    "busy": (503, 20503, "Service Unavailable"),
    "rate_limit": (429, 20429, "Too Many Requests"),
}


def _messages(code: int, to: str = "", sender: str = "") -> str:
    return {
        21211: f"The 'To' number {to} is not a valid phone number.",
        21212: f"The 'From' number {sender} is not a valid phone number, shortcode, "
        "or alphanumeric sender ID.",
        21408: "Permission to send an SMS has not been enabled for the region indicated by "
        f"the 'To' number: {to}.",
        21606: f"The 'From' phone number provided ({sender}) is not a valid message-capable "
        "Twilio phone number for this destination/account.",
        21610: "Attempt to send to unsubscribed recipient",
        21611: f"This 'From' number ({sender}) has exceeded the maximum number of queued messages",
        21612: f"The 'To' phone number: {to}, is not currently reachable using the 'From' "
        f"phone number: {sender} via SMS.",
        21614: f"'To' number {to} is not a valid mobile number",
    }[code]


def twilio_error(code: int, message: str, status: int = 400) -> ProviderError:
    return ProviderError(code, message, http_status=status)


@dataclass(slots=True)
class SmsMessage:
    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    num_segments: int
    status: str
    date_created: datetime
    date_updated: datetime
    status_callback: str | None
    fate: str  # delivered | undelivered | failed
    direction: str = "outbound-api"
    date_sent: datetime | None = None
    price: str | None = None
    error_code: int | None = None
    error_message: str | None = None


class TwilioSMS:
    """State and operations of one sandboxed Twilio account."""

    provider = "twilio"

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self.reset()

    def reset(self) -> None:
        self.numbers: dict[str, str] = {}  # E.164 -> ok|invalid|opted_out|not_mobile|...
        self.messages: dict[str, SmsMessage] = {}
        self.by_to: dict[str, list[str]] = {}

    def error_reply(self, err: ProviderError) -> Reply:
        status = err.http_status if err.http_status >= 400 else 400
        return Reply(
            status,
            {
                "code": err.code,
                "message": err.message,
                "more_info": f"https://www.twilio.com/docs/errors/{err.code}",
                "status": status,
            },
        )

    def fault_reply(self, kind: str) -> Reply:
        status, code, message = FAULTS[kind]
        return self.error_reply(twilio_error(code, message, status))

    def _authorize(self, call: Call) -> str:
        config = self._state.config
        expected = (config.twilio_account_sid, config.twilio_auth_token)
        if call.basic_auth != expected:
            raise twilio_error(20003, "Authentication Error - invalid username or password", 401)
        if call.path_params.get("AccountSid") != config.twilio_account_sid:
            raise twilio_error(
                20003, "Authentication Error - the AccountSid in the URL is not yours", 401
            )
        return config.twilio_account_sid

    # -- create ----------------------------------------------------------------------------

    def create_message(self, call: Call) -> Outcome:
        account_sid = self._authorize(call)
        form = call.body
        to, body = str(form.get("To", "")), str(form.get("Body", ""))
        sender = form.get("From") or None
        service = form.get("MessagingServiceSid") or None
        callback = form.get("StatusCallback") or None
        _check(bool(to), 21604, "A 'To' phone number is required.")
        _check(bool(sender or service), 21603, "A 'From' phone number is required.")
        _check(bool(body or form.get("MediaUrl")), 21602, "Message body is required.")
        _check(
            body_too_long(body) is None,
            21617,
            f"The concatenated message body exceeds the {MAX_BODY_UNITS} character limit.",
        )
        _check_callback(callback)
        _check_validity(form.get("ValidityPeriod"))
        if sender in MAGIC_FROM:
            code = MAGIC_FROM[str(sender)]
            raise twilio_error(code, _messages(code, to, str(sender)))
        fate = self._fate(to, str(sender or ""))
        message = self._store(account_sid, to, sender, service, body, callback, fate)
        return Outcome(self.resource(message), status=201, ref=message.sid)

    def _fate(self, to: str, sender: str) -> str:
        """How a message to ``to`` ends, or the error Twilio refuses it with."""
        _check(bool(E164.match(to)), 21211, _messages(21211, to))
        if to in MAGIC_TO:
            code = MAGIC_TO[to]
            raise twilio_error(code, _messages(code, to, sender))
        number_state = self.numbers.get(to, "ok") if self.numbers else "ok"
        if number_state in STATE_CODES:
            code = STATE_CODES[number_state]
            raise twilio_error(code, _messages(code, to, sender))
        return "delivered" if number_state == "ok" else number_state

    def _store(
        self,
        account_sid: str,
        to: str,
        sender: Any,
        service: Any,
        body: str,
        callback: Any,
        fate: str,
    ) -> SmsMessage:
        now = self._state.now()
        sid = f"SM{self._state.prefix}{self._state.next_id('twilio_sms', 1):024x}"
        message = SmsMessage(
            sid=sid,
            account_sid=account_sid,
            to=to,
            from_=str(sender) if sender else None,
            messaging_service_sid=str(service) if service else None,
            body=body,
            num_segments=count_segments(body) or 1,
            status="accepted" if service and not sender else "queued",
            date_created=now,
            date_updated=now,
            status_callback=str(callback) if callback else None,
            fate=fate,
        )
        self.messages[sid] = message
        self.by_to.setdefault(to, []).append(sid)
        steps = ("failed",) if fate == "failed" else ("sent", fate)
        for step in steps:
            self._state.outbox.put(Pending("twilio", "status", sid, data=(("status", step),)))
        return message

    def resource(self, m: SmsMessage) -> dict[str, Any]:
        """The Message resource JSON exactly as Twilio shapes it."""
        uri = f"/{API_VERSION}/Accounts/{m.account_sid}/Messages/{m.sid}"
        return {
            "account_sid": m.account_sid,
            "api_version": API_VERSION,
            "body": m.body,
            "date_created": format_datetime(m.date_created),
            "date_sent": format_datetime(m.date_sent) if m.date_sent else None,
            "date_updated": format_datetime(m.date_updated),
            "direction": m.direction,
            "error_code": m.error_code,
            "error_message": m.error_message,
            "from": m.from_,
            "messaging_service_sid": m.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(m.num_segments),
            "price": m.price,
            "price_unit": "USD",
            "sid": m.sid,
            "status": m.status,
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": m.to,
            "uri": f"{uri}.json",
        }

    # -- fetch / list ----------------------------------------------------------------------

    def fetch_message(self, call: Call) -> Outcome:
        self._authorize(call)
        message = self.messages.get(call.path_params.get("MessageSid", ""))
        if message is None:
            raise twilio_error(20404, f"The requested resource {call.path} was not found", 404)
        return Outcome(self.resource(message), ref=message.sid)

    def list_messages(self, call: Call) -> Outcome:
        account_sid = self._authorize(call)
        query = call.query
        size = _int_param(query, "PageSize", 50, 1, 1000)
        page = _int_param(query, "Page", 0, 0, 10**9)
        token = query.get("PageToken", "")
        start = int(token[2:]) if token.startswith("PA") and token[2:].isdigit() else page * size
        rows = self._matching(query)
        chosen = rows[start : start + size]
        filters = {
            k: v
            for k, v in query.items()
            if k in ("To", "From", "DateSent", "DateSent<", "DateSent>")
        }
        base = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"

        def page_uri(number: int) -> str:
            params = {
                **filters,
                "PageSize": size,
                "Page": number,
                "PageToken": f"PA{number * size}",
            }
            return f"{base}?{urlencode(params)}"

        payload = {
            "messages": [self.resource(m) for m in chosen],
            "end": start + max(len(chosen) - 1, 0),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if start + size < len(rows) else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }
        return Outcome(payload)

    def _matching(self, query: Any) -> list[SmsMessage]:
        """Newest first, like Twilio. A ``DateSent`` filter matches on the send date only: a
        message not yet sent (queued, accepted) has none and matches no such filter (the
        docs describe the filter on the sent date and say nothing of unsent messages; this
        is the strict reading)."""
        to, sender = query.get("To"), query.get("From")
        sids = self.by_to.get(to, []) if to else list(self.messages)
        lower, upper = _date_bounds(query)
        dated = lower is not None or upper is not None
        rows: list[SmsMessage] = []
        for sid in reversed(sids):
            message = self.messages[sid]
            if sender and message.from_ != sender:
                continue
            if dated and not _sent_within(message.date_sent, lower, upper):
                continue
            rows.append(message)
        return rows

    # -- callbacks ---------------------------------------------------------------------------

    def settle(self, item: Pending) -> Delivery | None:
        if item.kind == "inbound":
            return self._inbound_delivery(item)
        message = self.messages.get(item.key)
        if message is None:  # forgotten by a reset
            return None
        self._advance(message, dict(item.data)["status"])
        if not message.status_callback:
            return None
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "From": message.from_ or "",
            "MessageSid": message.sid,
            "MessageStatus": message.status,
            "SmsSid": message.sid,
            "SmsStatus": message.status,
            "To": message.to,
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        return self._signed(
            message.status_callback, params, "status", f"{message.sid}-{message.status}"
        )

    def _advance(self, message: SmsMessage, status: str) -> None:
        now = self._state.now()
        message.status, message.date_updated = status, now
        if status == "sent":
            message.date_sent = now
            unit = self._state.config.twilio_segment_price
            message.price = f"-{message.num_segments * unit:.5f}"
        if status in DELIVERY_ERRORS:
            message.error_code, message.error_message = DELIVERY_ERRORS[status]

    def _signed(self, url: str, params: dict[str, str], kind: str, idempotency: str) -> Delivery:
        signature = RequestValidator(self._state.config.twilio_auth_token).compute_signature(
            url, params
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": idempotency,
            "User-Agent": "TwilioProxy/1.1",
        }
        return Delivery("twilio", kind, url, urlencode(params).encode("utf-8"), headers)

    # -- control -----------------------------------------------------------------------------

    def inbound(self, sender: str, body: str, to: str | None = None) -> dict[str, Any]:
        """A person texts the account (control API); STOP-words opt the number out."""
        word = body.strip().upper()
        if word in OPT_OUT_WORDS:
            self.numbers[sender] = "opted_out"
        elif word in OPT_IN_WORDS and self.numbers.get(sender) == "opted_out":
            self.numbers[sender] = "ok"
        sid = f"SM{self._state.prefix}{self._state.next_id('twilio_sms', 1):024x}"
        pairs = (("From", sender), ("To", to or ""), ("Body", body))
        self._state.outbox.put(Pending("twilio", "inbound", sid, data=pairs))
        return {"sid": sid, "number_state": self.numbers.get(sender, "ok")}

    def _inbound_delivery(self, item: Pending) -> Delivery | None:
        config = self._state.config
        if not config.twilio_inbound_url:
            return None
        data = dict(item.data)
        params = {
            "AccountSid": config.twilio_account_sid,
            "ApiVersion": API_VERSION,
            "Body": data["Body"],
            "From": data["From"],
            "MessageSid": item.key,
            "NumMedia": "0",
            "NumSegments": str(count_segments(data["Body"]) or 1),
            "SmsMessageSid": item.key,
            "SmsSid": item.key,
            "SmsStatus": "received",
            "To": data["To"],
        }
        return self._signed(config.twilio_inbound_url, params, "inbound", item.key)

    def set_numbers(self, states: dict[str, str]) -> None:
        for number, number_state in states.items():
            if number_state not in NUMBER_STATES:
                raise ValueError(
                    f"twilio number {number!r}: {number_state!r} is not one of {NUMBER_STATES}"
                )
        self.numbers.update(states)


def _check_callback(callback: str | None) -> None:
    if callback is None:
        return
    problem = callback_url_problem(callback, allow_private=is_loopback_host(callback))
    _check(
        problem is None, 21609, f"The StatusCallback URL {callback} is not a valid URL: {problem}"
    )


def _check_validity(value: str | None) -> None:
    if value in (None, ""):
        return
    _check(
        str(value).isdigit() and 1 <= int(str(value)) <= MAX_VALIDITY_S,
        21624,
        f"Invalid validity period value {value!r}: an integer from 1 to {MAX_VALIDITY_S:,}",
    )


def _check(condition: bool, code: int, message: str) -> None:
    if not condition:
        raise twilio_error(code, message)


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    _check(
        str(raw).isdigit() and low <= int(raw) <= high,
        20001,
        f"Invalid {name}: {raw!r} (expected {low}..{high})",
    )
    return int(raw)


def _sent_within(sent: datetime | None, lower: datetime | None, upper: datetime | None) -> bool:
    if sent is None:
        return False
    return not ((lower and sent < lower) or (upper and sent > upper))


def _date_bounds(query: Any) -> tuple[datetime | None, datetime | None]:
    """Twilio's ``DateSent`` (that day), ``DateSent>`` (on/after) and ``DateSent<`` (on/before).

    ``?DateSent>=2024-05-01`` in a URL *is* the key ``DateSent>``; dates cover whole UTC days.
    """
    lower = upper = None
    if query.get("DateSent"):
        lower, upper = (
            _parse_when(query["DateSent"], end=False),
            _parse_when(query["DateSent"], end=True),
        )
    if query.get("DateSent>"):
        lower = _parse_when(query["DateSent>"], end=False)
    if query.get("DateSent<"):
        upper = _parse_when(query["DateSent<"], end=True)
    return lower, upper


def _parse_when(value: str, *, end: bool) -> datetime:
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1, microseconds=-1) if end else start
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise twilio_error(20001, f"Invalid DateSent value {value!r}: use YYYY-MM-DD") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


ACCOUNT = f"/{API_VERSION}/Accounts/{{AccountSid}}"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "twilio",
        "POST",
        f"{ACCOUNT}/Messages.json",
        TwilioSMS.create_message,
        body_kind="form",
        recipients="To",
    ),
    Endpoint(
        "twilio", "GET", f"{ACCOUNT}/Messages.json", TwilioSMS.list_messages, body_kind="query"
    ),
    Endpoint(
        "twilio",
        "GET",
        f"{ACCOUNT}/Messages/{{MessageSid}}.json",
        TwilioSMS.fetch_message,
        body_kind="query",
    ),
)
