"""The /_sandbox control API: record, reset, clock, config, followers, flush."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sandbox_helpers import CONFIG, Receiver, SandboxWeChatClient
from twilio.rest import Client
from wechatpy.exceptions import WeChatClientException

from orchestrator.sandbox.state import SandboxState

OpenIds = Callable[[int], list[str]]
CONTRACT_KEYS = {"seq", "provider", "method", "path", "body", "at", "outcome", "recipients"}


def test_record_lists_every_call_in_order_with_its_outcome(
    wechat: SandboxWeChatClient, twilio: Client, control: httpx.Client, openids: OpenIds
) -> None:
    control.post("/_sandbox/config", json={"wechat_clientmsgid_retry_interval_s": 0})
    wechat.message.send_mass_text(openids(2), "hi", client_msg_id="c1")
    with pytest.raises(WeChatClientException):  # 45065: the record must show it
        wechat.message.send_mass_text(openids(2), "hi", client_msg_id="c1")
    twilio.messages.create(to="+8613800138000", from_="+15005550006", body="hi")

    record = control.get("/_sandbox/record").json()

    assert [e["seq"] for e in record] == list(range(1, len(record) + 1))
    assert CONTRACT_KEYS <= set(record[0])
    token, first, second, sms = record
    assert token["path"] == "/cgi-bin/token" and token["body"]["secret"] == "***"
    assert (first["outcome"], second["outcome"], sms["outcome"]) == (
        "accepted",
        "duplicate",
        "accepted",
    )
    assert first["body"]["clientmsgid"] == "c1" and first["recipients"] == openids(2)
    assert sms["provider"] == "twilio" and sms["body"]["To"] == "+8613800138000"
    assert sms["method"] == "POST" and sms["recipients"] == ["+8613800138000"]


def test_record_filters(
    wechat: SandboxWeChatClient, twilio: Client, control: httpx.Client, openids: OpenIds
) -> None:
    for n in range(3):
        twilio.messages.create(to="+8613800138000", from_="+15005550006", body=f"{n}")
    wechat.message.send_mass_text(openids(2), "hi")

    def get(**params: object) -> list[dict[str, object]]:
        records: list[dict[str, object]] = control.get("/_sandbox/record", params=params).json()
        return records

    assert [e["provider"] for e in get(provider="twilio")] == ["twilio"] * 3
    assert [e["seq"] for e in get(since=2)] == [3, 4, 5]
    assert [e["seq"] for e in get(provider="twilio", limit=1)] == [1]
    assert len(get(outcome="accepted")) == 5
    assert control.get("/_sandbox/record", params={"provider": "sms"}).status_code == 422


def test_reset_forgets_data_but_keeps_config_and_tokens(
    wechat: SandboxWeChatClient, control: httpx.Client, state: SandboxState, openids: OpenIds
) -> None:
    control.post("/_sandbox/config", json={"wechat_callback_url": "http://127.0.0.1:9/wx"})
    control.post("/_sandbox/clock", json={"now": "2024-01-01T00:00:00Z"})
    wechat.message.send_mass_text(openids(2), "hi")

    assert control.post("/_sandbox/reset").json() == {"ok": True}

    assert control.get("/_sandbox/record").json() == []
    assert control.get("/_sandbox/status").json()["pending_callbacks"] == 0
    assert control.get("/_sandbox/config").json()["wechat_callback_url"] == "http://127.0.0.1:9/wx"
    assert not control.get("/_sandbox/clock").json()["now"].startswith("2024-01-01")
    assert wechat.message.send_mass_text(openids(2), "hi")["errcode"] == 0  # same token works


def test_clock_accepts_iso_and_null(control: httpx.Client) -> None:
    assert control.post("/_sandbox/clock", json={"now": "2024-02-29T20:00:00+08:00"}).json() == {
        "now": "2024-02-29T12:00:00+00:00"
    }
    assert control.get("/_sandbox/clock").json()["now"] == "2024-02-29T12:00:00+00:00"
    assert control.post("/_sandbox/clock", json={"now": "2024-02-29T12:00:00"}).json()["now"] == (
        "2024-02-29T12:00:00+00:00"
    )  # naive is UTC
    wall = control.post("/_sandbox/clock", json={"now": None}).json()["now"]
    assert not wall.startswith("2024-02-29")
    assert control.post("/_sandbox/clock", json={"now": "yesterday"}).status_code == 422


def test_config_is_validated(control: httpx.Client) -> None:
    changed = control.post("/_sandbox/config", json={"twilio_auth_token": "t2"}).json()
    assert changed["twilio_auth_token"] == "t2" and changed["wechat_appid"] == CONFIG.wechat_appid
    assert control.post("/_sandbox/config", json={"no_such_key": 1}).status_code == 422
    assert control.post("/_sandbox/config", json={"auto_flush_s": -1}).status_code == 422


def test_followers_are_validated(control: httpx.Client) -> None:
    ok = control.post(
        "/_sandbox/followers",
        json={"wechat": {"o1": "unfollowed"}, "twilio": {"+8613800138000": "opted_out"}},
    )
    assert ok.json() == {"wechat": 1, "wecom": 0, "twilio": 1}
    assert control.post("/_sandbox/followers", json={"wechat": {"o1": "maybe"}}).status_code == 422
    assert control.post("/_sandbox/followers", json={"sms": {}}).status_code == 422


def test_wecom_confirm_of_unknown_task_is_404(control: httpx.Client) -> None:
    response = control.post("/_sandbox/wecom/confirm", json={"msgid": "nope"})
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_flush_reports_failed_deliveries_and_settles_without_a_url(
    twilio: Client, control: httpx.Client, receiver: Receiver, state: SandboxState
) -> None:
    quiet = twilio.messages.create(to="+8613800138000", from_="+15005550006", body="no callback")
    twilio.messages.create(
        to="+8613800138001",
        from_="+15005550006",
        body="x",
        status_callback="http://127.0.0.1:9/closed",
    )

    flushed = control.post("/_sandbox/flush").json()

    assert (flushed["settled"], flushed["delivered"], flushed["failed"]) == (4, 0, 2)
    assert (
        flushed["results"][0]["status"] is None and "ConnectError" in flushed["results"][0]["error"]
    )
    assert twilio.messages(quiet.sid).fetch().status == "delivered"
    assert control.post("/_sandbox/flush").json()["settled"] == 0


def test_auto_flush_delivers_in_the_background(
    twilio: Client, control: httpx.Client, receiver: Receiver
) -> None:
    control.post("/_sandbox/config", json={"auto_flush_s": 0.02})
    twilio.messages.create(
        to="+8613800138000", from_="+15005550006", body="x", status_callback=receiver.url("/cb")
    )
    statuses = [r.form["MessageStatus"] for r in receiver.wait_for(2)]
    assert statuses == ["sent", "delivered"]
    control.post("/_sandbox/config", json={"auto_flush_s": None})
