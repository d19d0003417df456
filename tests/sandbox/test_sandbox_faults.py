"""Every fault kind, seen through the real SDKs."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
import requests
from sandbox_helpers import CONFIG, SandboxWeChatClient, SandboxWeComClient
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from wechatpy.exceptions import APILimitedException, WeChatClientException

from orchestrator.sandbox.server import SandboxHandle
from orchestrator.sandbox.state import SandboxState

OpenIds = Callable[[int], list[str]]
MASS = "/cgi-bin/message/mass/send"
CN = "+8613800138000"


def arm(control: httpx.Client, **spec: object) -> dict[str, object]:
    response = control.post("/_sandbox/faults", json=spec)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def sms(twilio: Client) -> object:
    return twilio.messages.create(to=CN, from_="+15005550006", body="hi")


def test_http_500_reaches_both_sdks_and_sends_nothing(
    wechat: SandboxWeChatClient,
    twilio: Client,
    control: httpx.Client,
    state: SandboxState,
    openids: OpenIds,
) -> None:
    arm(control, provider="wechat", path_contains=MASS, kind="http_500")
    arm(control, provider="twilio", kind="http_500")

    with pytest.raises(WeChatClientException) as wechat_error:
        wechat.message.send_mass_text(openids(2), "hi")
    with pytest.raises(TwilioRestException) as twilio_error:
        sms(twilio)

    assert wechat_error.value.response.status_code == 500
    assert (twilio_error.value.status, twilio_error.value.code) == (500, 20500)
    assert not state.wechat.jobs and not state.twilio.messages
    outcomes = [e["outcome"] for e in state.records() if e["path"] != "/cgi-bin/token"]
    assert outcomes == ["fault:http_500", "fault:http_500"]


def test_busy_is_errcode_minus_1_or_twilio_503(
    wechat: SandboxWeChatClient,
    wecom: SandboxWeComClient,
    twilio: Client,
    control: httpx.Client,
    openids: OpenIds,
) -> None:
    wecom.access_token  # noqa: B018 - fetch the token before the fault is armed
    wechat.access_token  # noqa: B018
    arm(control, provider="*", kind="busy", count=3)

    with pytest.raises(WeChatClientException) as wechat_error:
        wechat.message.send_mass_text(openids(2), "hi")
    with pytest.raises(WeChatClientException) as wecom_error:
        wecom.post("externalcontact/groupchat/get", data={"chat_id": "x"})
    with pytest.raises(TwilioRestException) as twilio_error:
        sms(twilio)

    assert wechat_error.value.errcode == -1 and wecom_error.value.errcode == -1
    assert (twilio_error.value.status, twilio_error.value.code) == (503, 20503)
    assert sms(twilio)  # the three armed calls are used up


def test_rate_limit_is_45009_and_twilio_20429(
    wechat: SandboxWeChatClient, twilio: Client, control: httpx.Client, openids: OpenIds
) -> None:
    wechat.access_token  # noqa: B018
    arm(control, provider="wechat", kind="rate_limit")
    arm(control, provider="twilio", kind="rate_limit")

    with pytest.raises(APILimitedException) as wechat_error:
        wechat.message.send_mass_text(openids(2), "hi")
    with pytest.raises(TwilioRestException) as twilio_error:
        sms(twilio)

    assert wechat_error.value.errcode == 45009
    assert (twilio_error.value.status, twilio_error.value.code) == (429, 20429)


def test_drop_records_the_send_but_never_answers(
    wechat: SandboxWeChatClient, control: httpx.Client, state: SandboxState, openids: OpenIds
) -> None:
    wechat.access_token  # noqa: B018
    arm(control, provider="wechat", path_contains=MASS, kind="drop")

    with pytest.raises(requests.ConnectionError):
        wechat.message.send_mass_text(openids(2), "hi", client_msg_id="batch-7")
    [dropped] = state.records("wechat", outcome="accepted")[-1:]
    assert (dropped["path"], dropped["fault"]) == (MASS, "drop")

    # The client retries the same batch (after the minute WeChat asks between repeats): the
    # provider already did it, so 45065 + its msg_id.
    control.post("/_sandbox/config", json={"wechat_clientmsgid_retry_interval_s": 0})
    with pytest.raises(WeChatClientException) as retry:
        wechat.message.send_mass_text(openids(2), "hi", client_msg_id="batch-7")
    assert retry.value.errcode == 45065
    assert str(retry.value.response.json()["msg_id"]) == dropped["ref"]
    sends = [e["outcome"] for e in state.records("wechat") if e["path"] == MASS]
    assert sends == ["accepted", "duplicate"]


def test_drop_on_twilio(twilio: Client, control: httpx.Client, state: SandboxState) -> None:
    arm(control, provider="twilio", kind="drop")
    with pytest.raises(requests.ConnectionError):
        sms(twilio)
    assert len(state.twilio.messages) == 1
    assert state.records("twilio")[-1]["fault"] == "drop"


def test_timeout_records_the_send_and_holds_the_answer(
    sandbox: SandboxHandle, control: httpx.Client, state: SandboxState, openids: OpenIds
) -> None:
    impatient = SandboxWeChatClient(
        sandbox.base_url, CONFIG.wechat_appid, CONFIG.wechat_secret, timeout=0.5, auto_retry=False
    )
    impatient.access_token  # noqa: B018
    arm(control, provider="wechat", path_contains=MASS, kind="timeout", seconds=600)

    with pytest.raises(requests.Timeout):
        impatient.message.send_mass_text(openids(2), "hi")

    entry = state.records("wechat")[-1]
    assert (entry["outcome"], entry["fault"]) == ("accepted", "timeout")
    assert len(state.wechat.jobs) == 1


def test_latency_delays_but_answers(
    wechat: SandboxWeChatClient, control: httpx.Client, state: SandboxState, openids: OpenIds
) -> None:
    wechat.access_token  # noqa: B018
    arm(control, provider="wechat", kind="latency", seconds=0.01)
    assert wechat.message.send_mass_text(openids(2), "hi")["errcode"] == 0
    assert state.records("wechat")[-1]["fault"] == "latency"


def test_token_expired_invalidates_every_issued_token(
    wechat: SandboxWeChatClient,
    wecom: SandboxWeComClient,
    control: httpx.Client,
    openids: OpenIds,
) -> None:
    old_wecom_token = wecom.access_token
    wechat.access_token  # noqa: B018
    result = arm(control, kind="token_expired")
    assert result["expired_tokens"] >= 2  # tokens outlive reset(), so earlier ones count too

    with pytest.raises(WeChatClientException) as wechat_error:
        wechat.message.send_mass_text(openids(2), "hi")
    with pytest.raises(WeChatClientException) as wecom_error:
        wecom.post("externalcontact/groupchat/get", data={"chat_id": "x"})
    assert wechat_error.value.errcode == 42001 and wecom_error.value.errcode == 42001

    wecom.fetch_access_token()  # WeCom hands out a fresh token once the old one expired
    assert wecom.access_token != old_wecom_token


def test_faults_match_provider_path_and_count(
    wechat: SandboxWeChatClient, twilio: Client, control: httpx.Client, openids: OpenIds
) -> None:
    wechat.access_token  # noqa: B018
    arm(control, provider="wechat", path_contains="template/send", kind="busy", count=2)
    assert control.get("/_sandbox/faults").json()[0]["remaining"] == 2

    assert wechat.message.send_mass_text(openids(2), "not matched")["errcode"] == 0
    assert sms(twilio)
    for _ in range(2):
        with pytest.raises(WeChatClientException):
            wechat.message.send_template("oA", "tpl", {})
    assert wechat.message.send_template("oA", "tpl", {})["errcode"] == 0
    assert control.get("/_sandbox/faults").json() == []


def test_unlimited_fault_until_cleared(twilio: Client, control: httpx.Client) -> None:
    arm(control, provider="twilio", kind="rate_limit", count=None)
    for _ in range(3):
        with pytest.raises(TwilioRestException):
            sms(twilio)
    control.delete("/_sandbox/faults")
    assert sms(twilio)


def test_bad_fault_specs_are_422(control: httpx.Client) -> None:
    assert control.post("/_sandbox/faults", json={"kind": "meteor"}).status_code == 422
    assert (
        control.post("/_sandbox/faults", json={"kind": "busy", "provider": "sms"}).status_code
        == 422
    )
    assert control.post("/_sandbox/faults", json={"kind": "busy", "rate": 0}).status_code == 422


def test_stall_never_reaches_the_provider_and_the_client_times_out(
    sandbox: SandboxHandle, control: httpx.Client, state: SandboxState
) -> None:
    impatient = Client(CONFIG.twilio_account_sid, CONFIG.twilio_auth_token)
    impatient.api.base_url = sandbox.base_url
    impatient.edge = impatient.region = None
    impatient.http_client.timeout = 0.5
    arm(control, provider="twilio", method="POST", kind="stall", seconds=600)

    with pytest.raises(requests.Timeout):
        sms(impatient)

    assert state.records("twilio")[-1]["outcome"] == "fault:stall"
    assert not state.twilio.messages  # the opposite of `timeout`: nothing was sent
    control.post("/_sandbox/held/release")


def test_rate_limit_can_say_retry_after(control: httpx.Client, sandbox: SandboxHandle) -> None:
    arm(control, provider="twilio", kind="rate_limit", retry_after=45)
    answer = httpx.post(
        f"{sandbox.base_url}/2010-04-01/Accounts/{CONFIG.twilio_account_sid}/Messages.json",
        auth=(CONFIG.twilio_account_sid, CONFIG.twilio_auth_token),
        data={"To": CN, "From": "+15005550006", "Body": "hi"},
    )
    assert (answer.status_code, answer.headers["retry-after"]) == (429, "45")
    assert answer.json()["code"] == 20429


def test_a_fault_can_aim_at_one_method(twilio: Client, control: httpx.Client) -> None:
    arm(control, provider="twilio", method="GET", kind="busy", count=None)
    assert sms(twilio)  # POST Messages.json is not hit
    with pytest.raises(TwilioException, match="HTTP 503"):
        twilio.messages.list(to=CN)


def test_one_fault_is_disarmed_by_its_id(twilio: Client, control: httpx.Client) -> None:
    first = arm(control, provider="twilio", kind="busy", count=None)
    second = arm(control, provider="wechat", kind="busy", count=None)
    assert control.delete(f"/_sandbox/faults/{first['id']}").status_code == 200
    assert sms(twilio)
    assert [f["id"] for f in control.get("/_sandbox/faults").json()] == [second["id"]]
    assert control.delete(f"/_sandbox/faults/{first['id']}").status_code == 404


def test_held_answers_are_listed_with_the_caller_and_released_on_request(
    sandbox: SandboxHandle, twilio: Client, control: httpx.Client, state: SandboxState
) -> None:
    armed = arm(control, provider="twilio", method="POST", kind="timeout", seconds=600)
    answers: list[str] = []
    caller = threading.Thread(target=lambda: answers.append(str(sms(twilio).sid)))
    caller.start()
    assert sandbox.app.state.waker.wait_until_waiting(1, timeout_s=10)

    [held] = control.get("/_sandbox/held").json()
    entry = state.records("twilio")[-1]
    assert (held["kind"], held["method"], held["seq"]) == ("timeout", "POST", entry["seq"])
    assert held["fault"] == armed["id"]
    host, port = held["client"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert control.post("/_sandbox/held/release", json={"ids": [held["id"]]}).json() == {
        "released": 1
    }
    caller.join(timeout=10)
    assert answers == [entry["ref"]] and control.get("/_sandbox/held").json() == []
