"""Twilio Messages, driven through the twilio SDK over HTTP on loopback."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sandbox_helpers import CONFIG, Receiver
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from orchestrator.channels.smstext import count_segments
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.sandbox.state import SandboxState

FROM = "+15005550006"
CN = "+8613800138000"
CHINESE = "【校园外卖】好久不见！你常点的那家店今天有满减，回来看看吧 拒收请回复R" * 2


def rest_error(call: object) -> TwilioRestException:
    assert callable(call)
    with pytest.raises(TwilioRestException) as caught:
        call()
    return caught.value


def test_create_answers_the_message_resource(twilio: Client, state: SandboxState) -> None:
    message = twilio.messages.create(to=CN, from_=FROM, body=CHINESE, validity_period=600)

    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert (message.status, message.to, message.from_, message.body) == (
        "queued",
        CN,
        FROM,
        CHINESE,
    )
    assert message.num_segments == str(count_segments(CHINESE)) == "2"
    assert message.price is None and message.direction == "outbound-api"
    assert message.account_sid == CONFIG.twilio_account_sid
    assert message.uri.endswith(f"/Messages/{message.sid}.json")
    assert isinstance(message.date_created, datetime)
    [entry] = state.records("twilio")
    assert entry["recipients"] == [CN] and entry["body"]["ValidityPeriod"] == "600"
    assert entry["ref"] == message.sid


def test_messaging_service_send_is_accepted(twilio: Client) -> None:
    message = twilio.messages.create(to=CN, messaging_service_sid="MG" + "0" * 32, body="hi")
    assert message.status == "accepted" and message.from_ is None


@pytest.mark.parametrize(
    ("to", "code"),
    [
        ("+15005550001", 21211),
        ("+15005550002", 21612),
        ("+15005550003", 21408),
        ("+15005550004", 21610),
        ("+15005550009", 21614),
        ("13800138000", 21211),
    ],
)
def test_magic_numbers_fail_as_twilio_documents(
    twilio: Client, to: str, code: int, state: SandboxState
) -> None:
    error = rest_error(lambda: twilio.messages.create(to=to, from_=FROM, body="hi"))
    assert (error.code, error.status) == (code, 400)
    assert state.records("twilio")[-1]["outcome"] == f"error:{code}"


@pytest.mark.parametrize(
    ("sender", "code"), [("+15005550001", 21212), ("+15005550007", 21606), ("+15005550008", 21611)]
)
def test_magic_from_numbers(twilio: Client, sender: str, code: int) -> None:
    assert rest_error(lambda: twilio.messages.create(to=CN, from_=sender, body="x")).code == code


@pytest.mark.parametrize(
    ("number_state", "code"), [("invalid", 21211), ("opted_out", 21610), ("not_mobile", 21614)]
)
def test_numbers_registered_through_the_control_api(
    twilio: Client, control: httpx.Client, number_state: str, code: int
) -> None:
    control.post("/_sandbox/followers", json={"twilio": {CN: number_state}})
    assert rest_error(lambda: twilio.messages.create(to=CN, from_=FROM, body="x")).code == code


def test_missing_fields_are_refused(twilio: Client) -> None:
    assert rest_error(lambda: twilio.messages.create(to=CN, body="x")).code == 21603
    assert rest_error(lambda: twilio.messages.create(to=CN, from_=FROM, body="")).code == 21602
    too_long = rest_error(lambda: twilio.messages.create(to=CN, from_=FROM, body="x" * 1601))
    assert too_long.code == 21617


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ("好" * 1600, True),  # 1,600 UCS-2 units
        ("好" * 1599 + "😀", False),  # an emoji is two units: 1,601
        ("€" * 800, True),  # a GSM-7 extension character is two septets: 1,600
        ("€" * 800 + "x", False),
    ],
    ids=["1600-chinese", "emoji-counts-two", "1600-septets", "1601-septets"],
)
def test_the_body_is_counted_as_the_carrier_is_sent_it(twilio: Client, body: str, ok: bool) -> None:
    if ok:
        assert twilio.messages.create(to=CN, from_=FROM, body=body).sid
    else:
        assert rest_error(lambda: twilio.messages.create(to=CN, from_=FROM, body=body)).code == (
            21617
        )


@pytest.mark.parametrize(
    "callback",
    [
        "https://my_app.example.com/v1/callbacks/twilio",  # an underscore in the host
        "http://10.1.2.3/v1/callbacks/twilio",  # not reachable from the internet
        "/v1/callbacks/twilio",  # not fully qualified
        "https://recall.example.com/" + "a" * 4000,  # over 4,000 characters
    ],
    ids=["underscore", "private-address", "relative", "too-long"],
)
def test_a_status_callback_twilio_cannot_use_is_21609(twilio: Client, callback: str) -> None:
    refused = rest_error(
        lambda: twilio.messages.create(to=CN, from_=FROM, body="x", status_callback=callback)
    )
    assert refused.code == 21609


@pytest.mark.parametrize(
    ("seconds", "ok"), [(1, True), (14_400, True), (0, False), (14_401, False)]
)
def test_validity_period_is_1_to_14400_seconds(twilio: Client, seconds: int, ok: bool) -> None:
    def create() -> object:
        return twilio.messages.create(to=CN, from_=FROM, body="x", validity_period=seconds)

    if ok:
        assert create()
    else:
        assert rest_error(create).code == 21624


def test_wrong_credentials_are_20003(sandbox: SandboxHandle) -> None:
    stranger = Client(CONFIG.twilio_account_sid, "not-the-token")
    stranger.api.base_url = sandbox.base_url
    stranger.edge = stranger.region = None
    error = rest_error(lambda: stranger.messages.create(to=CN, from_=FROM, body="x"))
    assert (error.code, error.status) == (20003, 401)


def test_status_callbacks_are_signed_like_twilio_and_move_the_status(
    twilio: Client, control: httpx.Client, receiver: Receiver
) -> None:
    callback = receiver.url("/v1/callbacks/twilio?touch=42")
    message = twilio.messages.create(to=CN, from_=FROM, body="hi", status_callback=callback)

    flushed = control.post("/_sandbox/flush").json()

    assert flushed["delivered"] == 2 and [r["status"] for r in flushed["results"]] == [200, 200]
    validator = RequestValidator(CONFIG.twilio_auth_token)
    statuses = []
    for request in receiver.requests:
        assert request.path == "/v1/callbacks/twilio?touch=42"
        assert validator.validate(callback, request.form, request.headers["X-Twilio-Signature"])
        assert request.form["MessageSid"] == message.sid and request.form["To"] == CN
        statuses.append(request.form["MessageStatus"])
    assert statuses == ["sent", "delivered"]
    fetched = twilio.messages(message.sid).fetch()
    assert fetched.status == "delivered" and fetched.price == "-0.00790"
    assert fetched.date_sent is not None


def test_undelivered_and_failed_numbers(
    twilio: Client, control: httpx.Client, receiver: Receiver
) -> None:
    control.post(
        "/_sandbox/followers",
        json={"twilio": {"+8613900000001": "undelivered", "+8613900000002": "failed"}},
    )
    for to in ("+8613900000001", "+8613900000002"):
        twilio.messages.create(to=to, from_=FROM, body="hi", status_callback=receiver.url("/t"))
    control.post("/_sandbox/flush")
    seen = [
        (r.form["To"], r.form["MessageStatus"], r.form.get("ErrorCode")) for r in receiver.requests
    ]
    assert seen == [
        ("+8613900000001", "sent", None),
        ("+8613900000001", "undelivered", "30003"),
        ("+8613900000002", "failed", "30008"),
    ]


def test_list_filters_by_to_and_date_and_pages_like_twilio(
    twilio: Client, control: httpx.Client
) -> None:
    control.post("/_sandbox/clock", json={"now": "2024-05-01T10:00:00Z"})
    old = twilio.messages.create(to=CN, from_=FROM, body="old")
    control.post("/_sandbox/flush")  # sent: it has a send date now
    control.post("/_sandbox/clock", json={"now": "2024-05-03T10:00:00Z"})
    new = [twilio.messages.create(to=CN, from_=FROM, body=f"new {i}").sid for i in range(5)]
    twilio.messages.create(to="+8613800138999", from_=FROM, body="someone else")
    control.post("/_sandbox/flush")
    queued = twilio.messages.create(to=CN, from_=FROM, body="not sent yet").sid

    everything = twilio.messages.list(to=CN, page_size=2)
    assert [m.sid for m in everything] == [queued, *reversed(new), old.sid]
    recent = twilio.messages.list(to=CN, date_sent_after=datetime(2024, 5, 2, tzinfo=UTC))
    assert {m.sid for m in recent} == set(new)  # a message not yet sent has no send date
    raw = control.get(
        f"/2010-04-01/Accounts/{CONFIG.twilio_account_sid}/Messages.json?To=%2B{CN[1:]}"
        "&DateSent>=2024-05-02&PageSize=2",
        auth=(CONFIG.twilio_account_sid, CONFIG.twilio_auth_token),
    ).json()
    assert len(raw["messages"]) == 2 and raw["next_page_uri"] and raw["page"] == 0


def test_fetch_unknown_message_is_20404(twilio: Client) -> None:
    error = rest_error(lambda: twilio.messages("SM" + "f" * 32).fetch())
    assert (error.code, error.status) == (20404, 404)


def test_inbound_stop_opts_the_number_out_and_is_pushed_signed(
    twilio: Client, control: httpx.Client, receiver: Receiver
) -> None:
    inbound_url = receiver.url("/v1/callbacks/twilio")
    control.post("/_sandbox/config", json={"twilio_inbound_url": inbound_url})
    answer = control.post(
        "/_sandbox/twilio/inbound", json={"from": CN, "body": "STOP", "to": FROM}
    ).json()
    assert answer["number_state"] == "opted_out"
    assert rest_error(lambda: twilio.messages.create(to=CN, from_=FROM, body="x")).code == 21610

    control.post("/_sandbox/flush")
    [push] = receiver.requests
    assert (push.form["From"], push.form["Body"], push.form["SmsStatus"]) == (
        CN,
        "STOP",
        "received",
    )
    validator = RequestValidator(CONFIG.twilio_auth_token)
    assert validator.validate(inbound_url, push.form, push.headers["X-Twilio-Signature"])
