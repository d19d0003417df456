"""Provider callbacks, signed here independently of the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import PrpCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto

from orchestrator.api.signatures import verify_twilio
from orchestrator.errors import SignatureError
from orchestrator.policy import consent
from orchestrator.policy.caps import CapStore, touch_key
from orchestrator.policy.rules import CapRule
from orchestrator.store.models import OptOut
from tests.tracking.seed import BATCHES, T0, TOUCHES, USERS, Seeder

OPT_OUTS = OptOut.__table__  # type: ignore[attr-defined]
TWILIO_URL = "https://recall.example.com/v1/callbacks/twilio"
AES_KEY = base64.b64encode(b"k" * 32).decode().rstrip("=")  # 43 characters, as WeChat's
PHONE = "+8613800138000"


# ------------------------------------------------------------------ Twilio


def test_twilio_documented_example_vector() -> None:
    """The example from Twilio's request-validation docs and twilio-python's own tests."""
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    verify_twilio(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", auth_token="12345")
    with pytest.raises(SignatureError, match="does not match"):
        verify_twilio(url, params | {"Digits": "1235"}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                      auth_token="12345")
    with pytest.raises(SignatureError, match="missing X-Twilio-Signature"):
        verify_twilio(url, params, None, auth_token="12345")


def twilio_signature(url: str, params: dict[str, str], token: str = "twilio-token") -> str:
    data = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def post_twilio(client: httpx.Client, params: dict[str, str], *,
                signature: str | None = None) -> httpx.Response:
    return client.post(
        "/v1/callbacks/twilio", content=urlencode(params),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "X-Twilio-Signature": signature or twilio_signature(TWILIO_URL, params)},
    )


def status_params(status: str, code: str | None = None, sid: str = "SM1") -> dict[str, str]:
    params = {"AccountSid": "AC1", "MessageSid": sid, "SmsSid": sid, "MessageStatus": status,
              "SmsStatus": status, "To": PHONE, "From": "+15005550006"}
    return params | ({"ErrorCode": code} if code else {})


def sms_touch(seed: Seeder) -> int:
    return seed.touch(seed.enrollment(seed.user("u1", phone=PHONE)), provider_message_id="SM1")


def test_twilio_delivered(client: httpx.Client, seed: Seeder) -> None:
    touch = sms_touch(seed)
    response = post_twilio(client, status_params("delivered"))
    assert response.status_code == 200 and "<Response>" in response.text
    row = seed.row(TOUCHES, id=touch)
    assert row["status"] == "delivered" and row["delivered_at"] is not None


def test_twilio_undelivered_fails_the_touch(client: httpx.Client, seed: Seeder) -> None:
    touch = sms_touch(seed)
    post_twilio(client, status_params("undelivered", "30003"))
    row = seed.row(TOUCHES, id=touch)
    assert (row["status"], row["reason"]) == ("failed", "provider:30003")
    assert seed.count(OPT_OUTS) == 0


def test_twilio_undelivered_frees_the_persons_cap_slot(
    client: httpx.Client, seed: Seeder, api_redis_url: str
) -> None:
    touch = sms_touch(seed)
    row = seed.row(TOUCHES, id=touch)
    caps = CapStore(redis.Redis.from_url(api_redis_url))
    caps.rebuild([])  # an empty, rebuilt store: reservations may be granted
    rule = CapRule.per("sms", "sms", 1, "7d")
    held = caps.reserve(person="u1", channel="sms", key=touch_key(row["enrollment_id"],
                        row["step_id"]), now=T0, rules=[rule], tz=ZoneInfo("Asia/Shanghai"))
    assert held.ok and caps.held("u1")
    post_twilio(client, status_params("undelivered", "30003"))
    assert caps.held("u1") == []


def test_twilio_21610_also_opts_the_number_out(
    client: httpx.Client, seed: Seeder, db_engine: Engine
) -> None:
    touch = sms_touch(seed)
    post_twilio(client, status_params("failed", "21610"))
    assert seed.row(TOUCHES, id=touch)["reason"] == "provider:21610"
    opt_out = seed.row(OPT_OUTS, channel="sms")
    assert (opt_out["identity"], opt_out["user_id"]) == (f"phone:{PHONE}", "u1")
    assert consent.suppressions(db_engine, ["u1"], "sms") == {"u1": "opted_out:sms"}


@pytest.mark.sqlite_only
def test_twilio_unknown_message_is_acknowledged(client: httpx.Client, seed: Seeder) -> None:
    touch = sms_touch(seed)
    response = post_twilio(client, status_params("delivered", sid="SMunknown"))
    assert response.status_code == 200
    assert seed.row(TOUCHES, id=touch)["status"] == "sent"


@pytest.mark.sqlite_only
@pytest.mark.parametrize("signature", [
    "bm90IHRoZSBzaWduYXR1cmU=",
    twilio_signature(TWILIO_URL, status_params("delivered"), token="other-token"),
    twilio_signature("http://10.0.0.5:8000/v1/callbacks/twilio", status_params("delivered")),
])
def test_twilio_wrong_signature_changes_nothing(client: httpx.Client, seed: Seeder,
                                                signature: str) -> None:
    touch = sms_touch(seed)
    response = post_twilio(client, status_params("delivered"), signature=signature)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "X-Twilio-Signature"
    assert seed.row(TOUCHES, id=touch)["status"] == "sent"


@pytest.mark.parametrize(("body", "opted_out"), [("TD", True), (" 退订。", True),
                                                  ("R", True), ("Thanks!", False)])
def test_twilio_inbound_reply(client: httpx.Client, seed: Seeder, db_engine: Engine,
                              body: str, opted_out: bool) -> None:
    seed.user("u1", phone="13800138000")
    params = {"AccountSid": "AC1", "MessageSid": "SMin", "SmsStatus": "received",
              "From": PHONE, "To": "+15005550006", "Body": body}
    assert post_twilio(client, params).status_code == 200
    assert seed.count(OPT_OUTS) == int(opted_out)
    expected = {"u1": "opted_out:sms"} if opted_out else {}
    assert consent.suppressions(db_engine, ["u1"], "sms") == expected


# ------------------------------------------------------------------ WeChat OA


def sha1_signature(*values: str) -> str:
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()


def signed_query(token: str, **extra: str) -> dict[str, str]:
    """Signed now (real time: callbacks older than 300 s are refused) with a fresh nonce."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(4)
    return {"signature": sha1_signature(token, timestamp, nonce), "timestamp": timestamp,
            "nonce": nonce} | extra


@pytest.mark.sqlite_only
def test_wechat_url_verification(client: httpx.Client) -> None:
    ok = client.get("/v1/callbacks/wechat", params=signed_query("wechat-token", echostr="e42"))
    assert ok.status_code == 200 and ok.text == "e42"
    bad = client.get("/v1/callbacks/wechat", params=signed_query("nope", echostr="e42"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_signature"


def event_xml(event: str, openid: str = "o1", **fields: Any) -> str:
    body = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    return (f"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
            f"</FromUserName><CreateTime>1772416800</CreateTime><MsgType><![CDATA[event]]>"
            f"</MsgType><Event><![CDATA[{event}]]></Event>{body}</xml>")


def push(client: httpx.Client, path: str, xml: str, query: dict[str, str]) -> httpx.Response:
    return client.post(path, params=query, content=xml.encode())


def test_wechat_unsubscribe_opts_out_and_subscribe_clears_it(
    client: httpx.Client, seed: Seeder, db_engine: Engine
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    response = push(client, "/v1/callbacks/wechat", event_xml("unsubscribe"),
                    signed_query("wechat-token"))
    assert response.status_code == 200 and response.text == "success"
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is False
    assert seed.row(OPT_OUTS, channel="wechat_article")["identity"] == "openid:o1"
    assert consent.suppressions(db_engine, ["u1"], "wechat_article") == {"u1": "not_following"}
    push(client, "/v1/callbacks/wechat", event_xml("subscribe"), signed_query("wechat-token"))
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is True
    assert consent.suppressions(db_engine, ["u1"], "wechat_article") == {}


@pytest.mark.sqlite_only
def test_wechat_push_with_a_wrong_signature_changes_nothing(
    client: httpx.Client, seed: Seeder
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    response = push(client, "/v1/callbacks/wechat", event_xml("unsubscribe"),
                    signed_query("not-the-token"))
    assert response.status_code == 400
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is True
    assert seed.count(OPT_OUTS) == 0


def test_masssendjobfinish_stores_the_counts_on_the_batch(
    client: httpx.Client, seed: Seeder
) -> None:
    seed.batch("wa-batch-1", "1000001625")
    xml = event_xml("MASSSENDJOBFINISH", openid="gh_1", MsgID=1000001625,
                    Status="<![CDATA[send success]]>", TotalCount=100, FilterCount=80,
                    SentCount=75, ErrorCount=5)
    assert push(client, "/v1/callbacks/wechat", xml, signed_query("wechat-token")).text == (
        "success")
    result = seed.row(BATCHES, id="wa-batch-1")["result"]
    assert {k: result[k] for k in ("status", "total_count", "filter_count", "sent_count",
                                   "error_count")} == {
        "status": "send success", "total_count": 100, "filter_count": 80, "sent_count": 75,
        "error_count": 5}


@pytest.mark.sqlite_only
def test_wechat_safe_mode_push_is_decrypted(
    client: httpx.Client, app: FastAPI, seed: Seeder
) -> None:
    settings = app.state.services.settings
    settings.wechat_aes_key = SecretStr(AES_KEY)
    seed.user("u1", openid="o1", wechat_followed=True)
    query = signed_query("wechat-token", encrypt_type="aes")
    crypto = WeChatCrypto("wechat-token", AES_KEY, settings.wechat_appid)
    envelope = crypto.encrypt_message(event_xml("unsubscribe"), query["nonce"],
                                      query["timestamp"])
    msg_signature = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    response = push(client, "/v1/callbacks/wechat", envelope,
                    query | {"msg_signature": msg_signature})
    assert response.status_code == 200
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is False
    tampered = push(client, "/v1/callbacks/wechat", envelope,
                    query | {"msg_signature": "0" * 40})
    assert tampered.status_code == 400


# ------------------------------------------------------------------ WeCom


def test_wecom_plain_verification_and_join_by_member(
    client: httpx.Client, seed: Seeder
) -> None:
    ok = client.get("/v1/callbacks/wecom", params=signed_query("wecom-token", echostr="e1"))
    assert ok.text == "e1"
    touch = seed.touch(seed.enrollment(seed.user("u1", external_userid="wm_u1")), "invite",
                       channel="wecom_group_invite")
    xml = event_xml("change_external_chat", openid="sys", ChatId="wr1", ChangeType="update",
                    UpdateDetail="add_member", JoinScene=3,
                    MemChangeList="<Item>wm_u1</Item><Item>wm_other</Item>")
    assert push(client, "/v1/callbacks/wecom", xml, signed_query("wecom-token")).text == (
        "success")
    row = seed.row(TOUCHES, id=touch)
    assert row["joined_at"] is not None and row["clicked_at"] == row["joined_at"]


def test_wecom_encrypted_verification_and_join_by_state(
    client: httpx.Client, app: FastAPI, seed: Seeder
) -> None:
    settings = app.state.services.settings
    settings.wecom_aes_key = SecretStr(AES_KEY)
    corp = settings.wecom_corp_id
    echostr = PrpCrypto(base64.b64decode(AES_KEY + "=")).encrypt("echo-me", corp).decode()
    timestamp, nonce = str(int(time.time())), secrets.token_hex(4)
    query = {"msg_signature": sha1_signature("wecom-token", timestamp, nonce, echostr),
             "timestamp": timestamp, "nonce": nonce, "echostr": echostr}
    assert client.get("/v1/callbacks/wecom", params=query).text == "echo-me"
    bad = client.get("/v1/callbacks/wecom", params=query | {"msg_signature": "0" * 40})
    assert bad.status_code == 400

    touch = seed.touch(seed.enrollment(seed.user("u1")), "invite",
                       channel="wecom_group_invite")
    xml = event_xml("change_external_chat", openid="sys", ChatId="wr1", ChangeType="update",
                    UpdateDetail="add_member", State=f"t{touch}",
                    MemChangeList="<Item>wm_x</Item>")
    nonce = secrets.token_hex(4)  # a push reusing the verification's nonce would be a replay
    envelope = WeComCrypto("wecom-token", AES_KEY, corp).encrypt_message(xml, nonce, timestamp)
    msg_signature = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    response = push(client, "/v1/callbacks/wecom", envelope,
                    {"msg_signature": msg_signature, "timestamp": timestamp, "nonce": nonce})
    assert response.status_code == 200
    assert seed.row(TOUCHES, id=touch)["joined_at"] is not None


@pytest.mark.sqlite_only
def test_malformed_push_is_a_400(client: httpx.Client) -> None:
    response = push(client, "/v1/callbacks/wechat", "<xml><oops", signed_query("wechat-token"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
