"""Every webhook and callback body, generated: never a 500, and nothing written when the
answer is a 4xx.

Bodies are *correctly signed* most of the time (signed here with ``hmac``/``hashlib``, not
with the code under test), so the fuzzing reaches the parsing behind each signature
check. The API runs under uvicorn on loopback; the store is SQLite (the HTTP behaviour
does not depend on the backend). Example counts: ``EXAMPLES`` per route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlmodel import SQLModel

from tests.tracking.seed import T0, Seeder

EXAMPLES = 30
PUBLIC = "https://recall.example.com"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
pytestmark = pytest.mark.sqlite_only


def snapshot(engine: Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(str(row) for t in SQLModel.metadata.sorted_tables
                         for row in conn.execute(select(t)).all())


@pytest.fixture
def world(client: httpx.Client, seed: Seeder, db_engine: Engine,
          api_redis_url: str) -> Iterator[tuple[httpx.Client, Engine]]:
    """People, touches and a batch for the callbacks to find."""
    enrollment = seed.enrollment(seed.user("u1", openid="o1", phone="+8613800138000",
                                           external_userid="wm1", wechat_followed=True))
    seed.touch(enrollment, "sms", provider_message_id="SM1")
    seed.touch(enrollment, "invite", channel="wecom_group_invite")
    seed.batch("b1", "1000001")
    yield client, db_engine


def check(engine: Engine, before: str, answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text
    if 400 <= answer.status_code < 500:
        assert snapshot(engine) == before, f"{answer.status_code} after a partial write"


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)
maybe = st.one_of(json_values, st.sampled_from(["u1", "u-none", "", "2026-03-02T09:58:00+08:00",
                                                "not a date", 1e308, -1, 2**63]))


@st.composite
def generic_bodies(draw: st.DrawFn) -> bytes:
    fields = {"id": draw(maybe), "type": draw(st.sampled_from(["payment_failed", "other", 3])),
              "user_id": draw(maybe), "amount": draw(maybe), "currency": draw(maybe),
              "occurred_at": draw(maybe), "reason": draw(maybe)}
    for key in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)):
        fields.pop(key)
    return draw(st.one_of(st.just(json.dumps(fields).encode()), st.binary(max_size=40),
                          json_values.map(lambda v: json.dumps(v).encode())))


@st.composite
def stripe_bodies(draw: st.DrawFn) -> bytes:
    obj = draw(st.one_of(json_values, st.fixed_dictionaries({}, optional={
        "id": maybe, "currency": maybe, "amount_due": maybe, "amount": maybe,
        "metadata": st.one_of(json_values, st.fixed_dictionaries({"user_id": maybe})),
        "last_payment_error": json_values, "billing_reason": maybe})))
    event = {"id": draw(maybe), "created": draw(maybe), "data": draw(st.one_of(
        json_values, st.just({"object": obj}))), "type": draw(st.sampled_from(
            ["invoice.payment_failed", "payment_intent.payment_failed", "charge.failed"]))}
    return json.dumps(event).encode()


def timestamped(secret: bytes, body: bytes, t: int) -> str:
    mac = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@FUZZ
@given(body=generic_bodies(), signed=st.booleans())
def test_generic_webhook(world: tuple[httpx.Client, Engine], body: bytes, signed: bool) -> None:
    client, engine = world
    before = snapshot(engine)
    header = timestamped(b"whsec-generic", body, int(T0.timestamp())) if signed else "t=1,v1=0"
    check(engine, before, client.post("/v1/webhooks/payments/generic", content=body,
                                      headers={"X-Recall-Signature": header}))


@FUZZ
@given(body=stripe_bodies(), header=st.one_of(st.none(), st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=30)))
def test_stripe_webhook(world: tuple[httpx.Client, Engine], body: bytes,
                        header: str | None) -> None:
    client, engine = world
    before = snapshot(engine)
    value = header if header is not None else timestamped(b"whsec_stripe", body,
                                                          int(T0.timestamp()))
    check(engine, before, client.post("/v1/webhooks/payments/stripe", content=body,
                                      headers={"Stripe-Signature": value.encode("latin-1")}))


WECHATPAY_KEY = "192006250b4c09247ec02edce69f6a2d"
xml_text = st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12)


@st.composite
def wechatpay_bodies(draw: st.DrawFn) -> bytes:
    fields = draw(st.fixed_dictionaries({}, optional={
        "return_code": st.sampled_from(["SUCCESS", "FAIL", ""]),
        "result_code": st.sampled_from(["SUCCESS", "FAIL", ""]),
        "openid": st.sampled_from(["o1", "o-unknown", ""]), "out_trade_no": xml_text,
        "transaction_id": xml_text, "total_fee": st.one_of(xml_text, st.integers().map(str)),
        "fee_type": xml_text, "time_end": st.one_of(xml_text, st.just("20260302095800")),
        "err_code": xml_text, "err_code_des": xml_text, "nonce_str": xml_text,
        "sign_type": st.sampled_from(["MD5", "HMAC-SHA256", "SHA1", ""])}))
    if draw(st.booleans()):
        pairs = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if v)
        kind = fields.get("sign_type") or "MD5"
        data = f"{pairs}&key={WECHATPAY_KEY}".encode()
        fields["sign"] = (hmac.new(WECHATPAY_KEY.encode(), data, hashlib.sha256).hexdigest()
                          if kind == "HMAC-SHA256" else hashlib.md5(data).hexdigest()).upper()
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items())
    return draw(st.one_of(st.just(f"<xml>{inner}</xml>".encode()), st.binary(max_size=40),
                          st.just(b'<!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>')))


@FUZZ
@given(body=wechatpay_bodies())
def test_wechatpay_webhook(world: tuple[httpx.Client, Engine], body: bytes) -> None:
    client, engine = world
    before = snapshot(engine)
    check(engine, before, client.post("/v1/webhooks/payments/wechatpay", content=body))


def twilio_signature(url: str, params: dict[str, str]) -> str:
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(b"twilio-token", data.encode(), hashlib.sha1).digest()
                            ).decode()


form_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)


@FUZZ
@given(params=st.fixed_dictionaries({}, optional={
    "MessageSid": st.sampled_from(["SM1", "SMx", ""]), "SmsSid": form_text,
    "MessageStatus": st.sampled_from(["sent", "delivered", "undelivered", "failed", "x"]),
    "ErrorCode": st.sampled_from(["21610", "30003", "", "abc"]),
    "From": st.sampled_from(["+8613800138000", "13800138000", "", "+1"]),
    "To": form_text, "Body": st.one_of(form_text, st.sampled_from(["TD", "退订。", "R"]))}),
    signed=st.booleans())
def test_twilio_callback(world: tuple[httpx.Client, Engine], params: dict[str, str],
                         signed: bool) -> None:
    client, engine = world
    before = snapshot(engine)
    url = f"{PUBLIC}/v1/callbacks/twilio"
    signature = twilio_signature(url, params) if signed else "bm9wZQ=="
    check(engine, before, client.post(
        "/v1/callbacks/twilio", content=urlencode(params),
        headers={"Content-Type": "application/x-www-form-urlencoded",
                 "X-Twilio-Signature": signature}))


@st.composite
def push_bodies(draw: st.DrawFn) -> bytes:
    fields = draw(st.fixed_dictionaries({}, optional={
        "ToUserName": xml_text, "FromUserName": st.sampled_from(["o1", "o2", "", "sys"]),
        "CreateTime": st.one_of(xml_text, st.just("1772416800")),
        "MsgType": st.sampled_from(["event", "text", ""]),
        "Event": st.sampled_from(["subscribe", "unsubscribe", "MASSSENDJOBFINISH",
                                  "change_external_chat", "x"]),
        "MsgID": st.one_of(xml_text, st.just("1000001")), "Status": xml_text,
        "TotalCount": st.one_of(xml_text, st.integers().map(str)),
        "ChangeType": st.sampled_from(["update", "create"]),
        "UpdateDetail": st.sampled_from(["add_member", "del_member"]),
        "State": st.one_of(xml_text, st.sampled_from(["t1", "t999999999999999999999"])),
        "MemChangeList": st.just("<Item>wm1</Item><Item>wm2</Item>"), "ChatId": xml_text}))
    inner = "".join(f"<{k}>{v if k == 'MemChangeList' else f'<![CDATA[{v}]]>'}</{k}>"
                    for k, v in fields.items())
    return draw(st.one_of(st.just(f"<xml>{inner}</xml>".encode()), st.binary(max_size=40)))


def plain_query(token: str, signed: bool) -> dict[str, str]:
    at, nonce = str(int(time.time())), secrets.token_hex(6)
    signature = hashlib.sha1("".join(sorted([token, at, nonce])).encode()).hexdigest()
    return {"signature": signature if signed else "0" * 40, "timestamp": at, "nonce": nonce}


@FUZZ
@given(body=push_bodies(), signed=st.booleans(),
       extra=st.dictionaries(st.sampled_from(["encrypt_type", "msg_signature", "echostr"]),
                             st.text(max_size=8), max_size=2))
def test_wechat_callback(world: tuple[httpx.Client, Engine], body: bytes, signed: bool,
                         extra: dict[str, str]) -> None:
    client, engine = world
    before = snapshot(engine)
    query = plain_query("wechat-token", signed) | extra
    check(engine, before, client.post("/v1/callbacks/wechat", params=query, content=body))
    check(engine, before, client.get("/v1/callbacks/wechat", params=query))


@FUZZ
@given(body=push_bodies(), signed=st.booleans())
def test_wecom_callback(world: tuple[httpx.Client, Engine], body: bytes, signed: bool) -> None:
    client, engine = world
    before = snapshot(engine)
    check(engine, before, client.post("/v1/callbacks/wecom",
                                      params=plain_query("wecom-token", signed), content=body))


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["signature", "timestamp", "nonce", "echostr",
                                              "msg_signature", "encrypt_type", "openid"]),
                             st.text(max_size=70), max_size=5))
def test_callback_queries(world: tuple[httpx.Client, Engine], query: dict[str, Any]) -> None:
    client, engine = world
    before = snapshot(engine)
    for path in ("/v1/callbacks/wechat", "/v1/callbacks/wecom"):
        check(engine, before, client.get(path, params=query))
        check(engine, before, client.post(path, params=query, content=b"<xml></xml>"))
