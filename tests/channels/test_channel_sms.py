"""sms through the twilio SDK over HTTP against the sandbox."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis
from channel_helpers import calls, fault, message, messages, request

from orchestrator.channels import SmsChannel
from orchestrator.channels.base import Message
from orchestrator.channels.pacing import Backoff
from orchestrator.channels.sms import sms_body
from orchestrator.config import Settings
from orchestrator.errors import ChannelConfig, ChannelRetryable, ChannelUnknown, ConfigError
from orchestrator.logs import configure_logging
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.server import SandboxHandle

CHANNEL = "sms"
POLICY = {
    "signature": "【校园外卖】",
    "opt_out_suffix": "拒收请回复R",
    "price_per_segment": "0.045",
}
CREATE = "/Messages.json"


def creates(sandbox: SandboxHandle, outcome: str | None = None) -> list[dict[str, object]]:
    return [c for c in calls(sandbox, "twilio", CREATE, outcome) if c["method"] == "POST"]


@pytest.fixture
def one_at_a_time(
    settings: Settings, redis_client: redis.Redis, key_prefix: str, sleeps: list[float]
) -> Iterator[SmsChannel]:
    """One worker thread: calls happen in batch order, so faults hit a known message."""
    channel = SmsChannel(
        settings,
        redis_client,
        key_prefix=key_prefix,
        workers=1,
        timeout=(5.0, 20.0),  # its faults answer at once: no need to give up early
        sleep=sleeps.append,
    )
    yield channel
    channel.close()


def test_each_touch_is_one_create_with_the_composed_body(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    batch = request(
        "s-basic", CHANNEL, messages(3, text="小王，好久不见！回来领券"), options=POLICY
    )
    results = sms.send(batch)
    assert [r.status for r in results] == ["sent"] * 3
    assert len({r.provider_message_id for r in results}) == 3
    assert all(str(r.provider_message_id).startswith("SM") for r in results)
    created = {c["body"]["To"]: c["body"] for c in creates(sandbox)}  # type: ignore[index]
    first = created["+8613800000000"]
    assert first["Body"] == (
        "【校园外卖】小王，好久不见！回来领券 http://127.0.0.1:8000/s/c000000000 拒收请回复R"
    )
    assert first["From"] == "+15005550006"
    assert first["StatusCallback"] == "http://127.0.0.1:8000/v1/callbacks/twilio"
    assert first["ValidityPeriod"] == "3600"
    # 55 UCS-2 characters: one segment, at the policy's price.
    assert {(r.segments, r.cost) for r in results} == {(1, 0.045)}


def test_long_chinese_text_is_billed_per_67_character_segment() -> None:
    body = sms_body(message(1, text="好" * 100), POLICY)
    assert body.startswith("【校园外卖】") and body.endswith(" 拒收请回复R")
    long = message(1, text="好" * 100)
    assert len(body) == 6 + 100 + 1 + len(long.link or "") + 1 + 6


@pytest.mark.parametrize(
    ("phone", "reason"),
    [
        ("+15005550001", "invalid_number"),
        ("+15005550004", "opted_out:sms"),
        ("+15005550009", "not_mobile"),
        ("+15005550002", "unroutable_number"),
    ],
)
def test_recipient_errors_fail_the_touch_only(
    settings: Settings,
    redis_client: redis.Redis,
    key_prefix: str,
    sandbox: SandboxHandle,
    phone: str,
    reason: str,
) -> None:
    opted_out: list[Message] = []
    channel = SmsChannel(settings, redis_client, key_prefix=key_prefix, on_opt_out=opted_out.append)
    try:
        batch = (message(1, phone=phone), message(2))
        results = channel.send(request(f"s-{reason}", CHANNEL, batch, options=POLICY))
    finally:
        channel.close()
    assert [(r.status, r.reason) for r in results] == [("failed", reason), ("sent", None)]
    assert results[0].cost == 0
    assert [m.touch_id for m in opted_out] == ([1] if reason == "opted_out:sms" else [])


def test_numbers_opted_out_through_the_sandbox_are_recipient_failures(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    sandbox.state.set_followers({"twilio": {"+8613800000001": "opted_out"}})
    results = sms.send(request("s-optout", CHANNEL, messages(2), options=POLICY))
    assert [r.reason for r in results] == [None, "opted_out:sms"]


def test_a_touch_without_phone_fails_without_a_call(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    (result,) = sms.send(request("s-nophone", CHANNEL, [message(1, phone=None)]))
    assert (result.status, result.reason) == ("failed", "no_phone")
    assert creates(sandbox) == []


def test_a_body_twilio_would_refuse_as_too_long_fails_without_a_call(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    # 1,588 Chinese characters + the signature and the suffix (6 each) are 1,600 units: sent;
    # an emoji is two units in UCS-2, so one more and Twilio would refuse it (21617).
    fits = replace(message(1, text="好" * 1588), link=None)
    over = replace(message(2, text="好" * 1587 + "😀"), link=None)
    results = sms.send(request("s-long", CHANNEL, [fits, over], options=POLICY))
    assert [(r.status, r.reason) for r in results] == [
        ("sent", None), ("failed", "body_too_long")]
    (created,) = creates(sandbox)
    assert created["body"]["To"] == fits.recipient.phone


@pytest.mark.parametrize(
    ("public", "problem"),
    [
        ("http://127.0.0.1:8000", "host 127.0.0.1 is a private or loopback address"),
        ("https://recall_api.example.com", "is not a valid host name"),
        ("https://localhost:8443", "is not a public host name"),
    ],
)
def test_a_status_callback_twilio_cannot_reach_is_refused_at_start(
    redis_client: redis.Redis, key_prefix: str, public: str, problem: str
) -> None:
    real_twilio = Settings(_env_file=None, public_base_url=public)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=rf"sms: Twilio would refuse the status callback .*"
                       rf"\(21609\): .*{problem}.*set RECALL_PUBLIC_BASE_URL"):
        SmsChannel(real_twilio, redis_client, key_prefix=key_prefix)
    public_api = Settings(_env_file=None, public_base_url="https://recall.example.com")  # type: ignore[call-arg]
    SmsChannel(public_api, redis_client, key_prefix=key_prefix).close()
    # A stand-in for Twilio (a staging mock) reaches what its own network reaches.
    staging = Settings(_env_file=None, twilio_api_base="http://10.0.0.9:8081",  # type: ignore[call-arg]
                       public_base_url="http://10.0.0.5:8000")
    SmsChannel(staging, redis_client, key_prefix=key_prefix).close()


def test_a_bad_sender_stops_the_batch_as_config(
    redis_client: redis.Redis, key_prefix: str, sandbox: SandboxHandle
) -> None:
    bad_from = Settings(
        _env_file=None,  # type: ignore[call-arg]
        twilio_api_base=sandbox.base_url,
        twilio_from="+15005550007",
    )
    channel = SmsChannel(bad_from, redis_client, key_prefix=key_prefix, workers=1)
    try:
        with pytest.raises(ChannelConfig, match=r"21606 from_not_sms_capable") as caught:
            channel.send(request("s-badfrom", CHANNEL, messages(5), options=POLICY))
    finally:
        channel.close()
    assert caught.value.code == 21606
    assert len(creates(sandbox)) == 1  # no call started after the first config refusal


def test_a_batch_over_max_batch_is_refused(sms: SmsChannel, sandbox: SandboxHandle) -> None:
    with pytest.raises(ChannelConfig, match=r"has 101 messages, more than max_batch=100"):
        sms.send(request("s-big", CHANNEL, messages(101)))
    assert creates(sandbox) == []


@pytest.mark.parametrize(
    ("kind", "code"), [("rate_limit", 20429), ("busy", 20503), ("http_500", 20500)]
)
def test_transient_refusals_are_retried_inside_with_back_off(
    sms: SmsChannel, sandbox: SandboxHandle, sleeps: list[float], kind: str, code: int
) -> None:
    fault(sandbox, kind, "twilio", CREATE, count=2)
    (result,) = sms.send(request(f"s-{kind}", CHANNEL, messages(1), options=POLICY))
    assert result.status == "sent"
    assert [c["outcome"] for c in creates(sandbox)] == [f"fault:{kind}"] * 2 + ["accepted"]
    assert len(sleeps) == 2 and all(0 <= s <= 2.0 for s in sleeps)


def test_refusals_that_outlast_the_back_off_raise_when_nothing_went_out(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    fault(sandbox, "rate_limit", "twilio", CREATE, count=3)
    batch = request("s-429", CHANNEL, messages(1), options=POLICY)
    with pytest.raises(ChannelRetryable, match=r"20429 too_many_requests") as caught:
        sms.send(batch)
    assert caught.value.code == 20429
    (result,) = sms.send(batch)  # the engine's retry: the refused call may be made now
    assert result.status == "sent"
    assert len(creates(sandbox, "accepted")) == 1


def test_a_rate_limit_in_a_partly_sent_batch_leaves_that_touch_to_send_again(
    one_at_a_time: SmsChannel, sandbox: SandboxHandle
) -> None:
    fault(sandbox, "rate_limit", "twilio", CREATE, count=3)  # every attempt for message 0
    batch = request("s-partial", CHANNEL, messages(3), options=POLICY)
    results = one_at_a_time.send(batch)
    assert [(r.status, r.reason) for r in results] == [
        ("absent", "20429"),  # Twilio did not take it: not a rejection, send it later
        ("sent", None),
        ("sent", None),
    ]
    again = one_at_a_time.send(batch)  # the engine's next attempt: only message 0 goes
    assert [r.status for r in again] == ["sent", "sent", "sent"]
    assert [c["outcome"] for c in creates(sandbox)].count("accepted") == 3


def test_the_same_batch_twice_is_one_create_per_touch(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    batch = request("s-twice", CHANNEL, messages(20), options=POLICY)
    first = sms.send(batch)
    assert sms.send(batch) == first
    assert len(creates(sandbox)) == 20


@pytest.mark.short_timeout
@pytest.mark.parametrize("kind", ["drop", "timeout"])
def test_a_lost_answer_is_unknown_and_reconcile_finds_the_message_once(
    sms: SmsChannel, sandbox: SandboxHandle, kind: str
) -> None:
    batch = request(f"s-{kind}", CHANNEL, messages(1), options=POLICY, created_at=_today())
    fault(sandbox, kind, "twilio", CREATE)
    with pytest.raises(ChannelUnknown, match=r"reconcile, do not resend"):
        sms.send(batch)
    with pytest.raises(ChannelUnknown):  # a redelivered task does not send it again either
        sms.send(batch)
    (found,) = sms.reconcile(batch)  # still queued at Twilio: no send date yet
    assert found.status == "sent" and str(found.provider_message_id).startswith("SM")
    assert (found.segments, found.cost) == (1, 0.045)
    assert len(creates(sandbox)) == 1
    listing = [c for c in calls(sandbox, "twilio", CREATE) if c["method"] == "GET"]
    assert listing[0]["body"]["To"] == "+8613800000000"
    # Not filtered by DateSent: a message not sent yet has no send date and would be missed.
    assert not any(k.startswith("DateSent") for k in listing[0]["body"])


def test_in_a_larger_batch_only_the_lost_answer_is_unknown(
    one_at_a_time: SmsChannel, sandbox: SandboxHandle
) -> None:
    fault(sandbox, "drop", "twilio", CREATE)
    results = one_at_a_time.send(request("s-drop-one", CHANNEL, messages(3), options=POLICY))
    assert [r.status for r in results] == ["unknown", "sent", "sent"]


def test_reconcile_finds_a_message_twilio_never_got_absent(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    sms.send(request("s-other", CHANNEL, [message(1)], options=POLICY))  # same phone, other link
    lost = message(1, text="another text")
    lost = Message(
        lost.touch_id + 100, lost.key, lost.recipient, lost.text, lost.title, "http://x/s/zz"
    )
    (result,) = sms.reconcile(request("s-never", CHANNEL, [lost], options=POLICY))
    assert (result.status, result.reason) == ("absent", "not_found")
    assert len(creates(sandbox)) == 1


@pytest.mark.parametrize(("kind", "retry_after"), [("rate_limit", 30.0), ("http_500", None),
                                                 ("busy", None)])
def test_a_lookup_twilio_refuses_for_now_is_retryable_not_a_config_error(
    sms: SmsChannel, sandbox: SandboxHandle, kind: str, retry_after: float | None
) -> None:
    # Twilio's list call answers 429/5xx as a page it could not fetch, not as a REST error;
    # that is the provider being busy, not our settings being wrong.
    sandbox.state.add_fault(FaultSpec(provider="twilio", path_contains=CREATE, method="GET",
                                      kind=kind, retry_after=30 if retry_after else None))
    batch = request("s-lookup-busy", CHANNEL, messages(1), options=POLICY)
    with pytest.raises(ChannelRetryable, match=r"twilio GET Messages.json failed") as refused:
        sms.reconcile(batch)
    assert refused.value.retry_after_s == retry_after
    assert creates(sandbox) == []  # a lookup never sends


def test_a_batch_of_100_goes_out_concurrently_with_distinct_sids(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    results = sms.send(request("s-100", CHANNEL, messages(100), options=POLICY))
    assert len({r.provider_message_id for r in results}) == 100
    assert sorted(c["body"]["To"] for c in creates(sandbox)) == sorted(  # type: ignore[index]
        m.recipient.phone for m in messages(100)
    )


def test_a_messaging_service_replaces_from(
    redis_client: redis.Redis, key_prefix: str, sandbox: SandboxHandle
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        twilio_api_base=sandbox.base_url,
        twilio_messaging_service_sid="MG00000000000000000000000000000000",
    )
    channel = SmsChannel(settings, redis_client, key_prefix=key_prefix, backoff=Backoff())
    try:
        channel.send(request("s-mg", CHANNEL, messages(1), options=POLICY))
    finally:
        channel.close()
    (created,) = creates(sandbox)
    body = created["body"]
    assert isinstance(body, dict)
    assert body["MessagingServiceSid"].startswith("MG") and "From" not in body


def _today() -> datetime:
    return datetime.now(UTC)


def test_latency_below_the_read_timeout_is_just_slow(
    sms: SmsChannel, sandbox: SandboxHandle
) -> None:
    fault(sandbox, "latency", "twilio", CREATE, seconds=0.2)
    (result,) = sms.send(request("s-slow", CHANNEL, messages(1), options=POLICY))
    assert result.status == "sent"
    assert [c["outcome"] for c in creates(sandbox)] == ["accepted"]


# -- the transport: a pooled httpx client behind the Twilio SDK's own client interface ---------


def test_the_call_carries_what_the_sdk_built_and_nothing_unset(
    sms: SmsChannel, sandbox: SandboxHandle, settings: Settings
) -> None:
    (result,) = sms.send(request("s-wire", CHANNEL, messages(1, text="回来领券"), options=POLICY))
    (created,) = creates(sandbox)
    assert created["body"] == {
        "To": "+8613800000000",
        "From": settings.twilio_from,
        "Body": sms_body(message(0, text="回来领券"), POLICY),
        "StatusCallback": "http://127.0.0.1:8000/v1/callbacks/twilio",
        "ValidityPeriod": "3600",
    }
    assert result.provider_message_id == created["ref"]


def test_a_retry_after_the_provider_sets_is_the_wait(
    sms: SmsChannel, sandbox: SandboxHandle, sleeps: list[float]
) -> None:
    sandbox.state.add_fault(FaultSpec(provider="twilio", path_contains=CREATE,
                                      kind="rate_limit", count=1, retry_after=1))
    (result,) = sms.send(request("s-retry-after", CHANNEL, messages(1), options=POLICY))
    assert result.status == "sent"
    assert sleeps == [1.0]


def test_a_connection_refused_is_retryable_and_nothing_was_sent(
    redis_client: redis.Redis, key_prefix: str, sleeps: list[float]
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        twilio_api_base=f"http://127.0.0.1:{port}",
        public_base_url="http://127.0.0.1:8000",
    )
    channel = SmsChannel(settings, redis_client, key_prefix=key_prefix, sleep=sleeps.append)
    batch = request("s-refused", CHANNEL, messages(1), options=POLICY)
    try:
        with pytest.raises(ChannelRetryable, match=r"nothing was sent, retry later"):
            channel.send(batch)
        with pytest.raises(ChannelRetryable, match=r"could not reach the provider"):
            channel.reconcile(batch)
    finally:
        channel.close()
    assert len(sleeps) == 2  # retried inside with back-off first


def test_the_sdk_logs_nothing_per_request(
    sms: SmsChannel, sandbox: SandboxHandle, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging()  # as every recall process does
    with caplog.at_level(logging.DEBUG):
        sms.send(request("s-quiet", CHANNEL, messages(5), options=POLICY))
    assert len(creates(sandbox)) == 5
    assert [r for r in caplog.records if r.name.startswith(("twilio", "httpx"))
            and r.levelno >= logging.INFO] == []
