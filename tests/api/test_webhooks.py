"""Payment webhooks: every scheme with valid, wrong, stale and replayed signatures.

Signatures are computed here with ``hmac``/``hashlib`` directly, never with the code under
test, so a mistake in the verification code cannot hide behind the same mistake in signing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import httpx
import pytest

from orchestrator.api.signatures import verify_wechatpay, wechatpay_sign
from orchestrator.clock import ManualClock
from orchestrator.errors import SignatureError
from orchestrator.store.models import Event, WebhookReceipt
from tests.tracking.seed import T0, Seeder

EVENTS = Event.__table__  # type: ignore[attr-defined]
RECEIPTS = WebhookReceipt.__table__  # type: ignore[attr-defined]
GENERIC_SECRET = b"whsec-generic"
STRIPE_SECRET = b"whsec_stripe"
WECHATPAY_KEY = "192006250b4c09247ec02edce69f6a2d"  # the key of WeChat Pay's sign example
NOW = int(T0.timestamp())


def timestamped(secret: bytes, body: bytes, t: int) -> str:
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def generic_body(**fields: Any) -> bytes:
    payload = {"id": "pay_001", "type": "payment_failed", "user_id": "u1", "amount": 25.5,
               "currency": "cny", "occurred_at": "2026-03-02T09:58:00+08:00",
               "reason": "insufficient_funds"} | fields
    return json.dumps(payload).encode()


def post_generic(client: httpx.Client, body: bytes, *, t: int = NOW,
                 secret: bytes = GENERIC_SECRET) -> httpx.Response:
    header = f"t={t},v1={timestamped(secret, body, t)}"
    return client.post("/v1/webhooks/payments/generic", content=body,
                       headers={"X-Recall-Signature": header,
                                "Content-Type": "application/json"})


def nothing_stored(seed: Seeder) -> bool:
    return seed.count(EVENTS) == 0 and seed.count(RECEIPTS) == 0


# ------------------------------------------------------------------ generic


def test_generic_failure_becomes_an_event(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1")
    response = post_generic(client, generic_body())
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "accepted"}
    event = seed.row(EVENTS, event_id="generic:pay_001")
    assert (event["user_id"], event["name"], event["value"]) == ("u1", "payment_failed", 25.5)
    assert event["ts"] == T0 - timedelta(minutes=2)
    assert event["props"] == {"amount": 25.5, "currency": "CNY", "reason": "insufficient_funds",
                              "source": "generic", "webhook_id": "pay_001"}
    assert seed.row(RECEIPTS, source="generic")["status"] == "matched"


def test_generic_replay_is_acknowledged_and_ignored(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1")
    assert post_generic(client, generic_body()).json() == {"status": "accepted"}
    replay = post_generic(client, generic_body(), t=NOW + 30)  # re-signed later: same id
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    assert seed.count(EVENTS) == 1 and seed.count(RECEIPTS) == 1


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("t", "secret", "tamper", "message"), [
    (NOW, b"wrong-secret", False, "does not match"),
    (NOW, GENERIC_SECRET, True, "does not match"),
    (NOW - 301, GENERIC_SECRET, False, "outside the 300 s tolerance"),
    (NOW + 301, GENERIC_SECRET, False, "outside the 300 s tolerance"),
])
def test_generic_wrong_or_stale_signature_stores_nothing(
    client: httpx.Client, seed: Seeder, t: int, secret: bytes, tamper: bool, message: str
) -> None:
    seed.user("u1")
    body = generic_body()
    header = f"t={t},v1={timestamped(secret, body, t)}"
    sent = generic_body(amount=0.01) if tamper else body
    response = client.post("/v1/webhooks/payments/generic", content=sent,
                           headers={"X-Recall-Signature": header})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_signature" and message in error["message"]
    assert error["field"] == "X-Recall-Signature"
    assert nothing_stored(seed)
    assert 'recall_webhook_rejections_total{source="generic"} 1.0' in client.get("/metrics").text


@pytest.mark.sqlite_only
def test_generic_tolerance_is_inclusive_and_follows_the_clock(
    client: httpx.Client, seed: Seeder, clock: ManualClock
) -> None:
    seed.user("u1")
    assert post_generic(client, generic_body(), t=NOW - 300).status_code == 200
    clock.advance(timedelta(hours=1))
    late = post_generic(client, generic_body(id="pay_002"), t=NOW)
    assert late.status_code == 400 and seed.count(EVENTS) == 1


@pytest.mark.sqlite_only
@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=now,v1=abc", f"t={NOW}"])
def test_generic_malformed_header(client: httpx.Client, seed: Seeder, header: str | None) -> None:
    headers = {} if header is None else {"X-Recall-Signature": header}
    response = client.post("/v1/webhooks/payments/generic", content=generic_body(),
                           headers=headers)
    assert response.status_code == 400 and nothing_stored(seed)


def test_generic_unknown_payer_is_recorded_as_unmatched(
    client: httpx.Client, seed: Seeder
) -> None:
    response = post_generic(client, generic_body(user_id="nobody"))
    assert response.json() == {"status": "unmatched"}
    receipt = seed.row(RECEIPTS, source="generic", external_id="pay_001")
    assert (receipt["status"], receipt["user_id"]) == ("unmatched", None)
    assert seed.count(EVENTS) == 0
    assert post_generic(client, generic_body(user_id="nobody")).json() == {"status": "duplicate"}


@pytest.mark.sqlite_only
def test_generic_other_types_are_acknowledged_and_ignored(
    client: httpx.Client, seed: Seeder
) -> None:
    seed.user("u1")
    response = post_generic(client, generic_body(type="payment_succeeded"))
    assert response.json() == {"status": "ignored"} and nothing_stored(seed)


@pytest.mark.sqlite_only
def test_generic_bad_body_with_good_signature_is_a_400(client: httpx.Client,
                                                       seed: Seeder) -> None:
    response = post_generic(client, json.dumps({"type": "payment_failed"}).encode())
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "invalid_input", "field": "id",
                                        "message": "generic webhook: id: Field required"}
    assert nothing_stored(seed)


# ------------------------------------------------------------------ stripe


def stripe_event(kind: str = "invoice.payment_failed", **obj: Any) -> bytes:
    data = {"id": "in_1", "object": "invoice", "amount_due": 1999, "currency": "usd",
            "metadata": {"user_id": "u1"}} | obj
    return json.dumps({"id": "evt_1", "object": "event", "type": kind, "created": NOW - 5,
                       "data": {"object": data}}).encode()


def post_stripe(client: httpx.Client, body: bytes, header: str) -> httpx.Response:
    return client.post("/v1/webhooks/payments/stripe", content=body,
                       headers={"Stripe-Signature": header})


def stripe_header(body: bytes, t: int = NOW, secret: bytes = STRIPE_SECRET) -> str:
    # Like Stripe during secret rotation: a v1 with the old secret, one with the new, a v0.
    old = timestamped(b"whsec_old", body, t)
    return f"t={t},v1={old},v1={timestamped(secret, body, t)},v0=deadbeef"


def test_stripe_invoice_failure(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1")
    body = stripe_event()
    response = post_stripe(client, body, stripe_header(body))
    assert response.json() == {"status": "accepted"}
    event = seed.row(EVENTS, event_id="stripe:evt_1")
    assert event["value"] == 19.99 and event["ts"] == T0 - timedelta(seconds=5)
    assert event["props"]["currency"] == "USD"
    assert event["props"]["order_id"] == "in_1"


def test_stripe_payment_intent_failure_with_decline_code(client: httpx.Client,
                                                         seed: Seeder) -> None:
    seed.user("u1")
    body = stripe_event("payment_intent.payment_failed", id="pi_1", object="payment_intent",
                        amount_due=None, amount=500, currency="jpy",
                        last_payment_error={"code": "card_declined",
                                            "decline_code": "insufficient_funds"})
    assert post_stripe(client, body, stripe_header(body)).json() == {"status": "accepted"}
    event = seed.row(EVENTS, event_id="stripe:evt_1")
    assert event["value"] == 500.0  # JPY has no minor unit
    assert event["props"]["reason"] == "insufficient_funds"


def test_stripe_replay_is_ignored(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1")
    body = stripe_event()
    post_stripe(client, body, stripe_header(body))
    again = post_stripe(client, body, stripe_header(body, t=NOW + 60))
    assert again.json() == {"status": "duplicate"} and seed.count(EVENTS) == 1


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("t", "secret"), [
    (NOW, b"whsec_wrong"), (NOW - 301, STRIPE_SECRET), (NOW + 400, STRIPE_SECRET),
])
def test_stripe_wrong_or_stale_signature_stores_nothing(
    client: httpx.Client, seed: Seeder, t: int, secret: bytes
) -> None:
    seed.user("u1")
    body = stripe_event()
    response = post_stripe(client, body, stripe_header(body, t=t, secret=secret))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "Stripe-Signature"
    assert nothing_stored(seed)


@pytest.mark.sqlite_only
def test_stripe_other_events_are_acknowledged(client: httpx.Client, seed: Seeder) -> None:
    body = stripe_event("invoice.paid")
    assert post_stripe(client, body, stripe_header(body)).json() == {"status": "ignored"}
    assert nothing_stored(seed)


def test_stripe_payer_without_metadata_is_unmatched(client: httpx.Client, seed: Seeder) -> None:
    body = stripe_event(metadata={})
    assert post_stripe(client, body, stripe_header(body)).json() == {"status": "unmatched"}
    assert seed.count(EVENTS) == 0 and seed.count(RECEIPTS) == 1


# ------------------------------------------------------------------ wechatpay

# WeChat Pay's documented sign example (商户平台开发文档, 签名算法).
DOC_PARAMS = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000",
              "body": "test", "nonce_str": "ibuaiVcKdpRxkhJA"}


def test_wechatpay_documented_sign_example() -> None:
    assert wechatpay_sign(DOC_PARAMS, WECHATPAY_KEY) == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert wechatpay_sign(DOC_PARAMS, WECHATPAY_KEY, "HMAC-SHA256") == (
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    )
    verify_wechatpay(DOC_PARAMS | {"sign": "9A0A8659F005D6984697E2CA0A9CF3B7"},
                     api_key=WECHATPAY_KEY)
    with pytest.raises(SignatureError, match="sign does not match"):
        verify_wechatpay(DOC_PARAMS | {"sign": "9A0A8659F005D6984697E2CA0A9CF3B8"},
                         api_key=WECHATPAY_KEY)
    with pytest.raises(SignatureError, match="unsupported sign_type"):
        verify_wechatpay(DOC_PARAMS | {"sign": "x", "sign_type": "SHA1"}, api_key=WECHATPAY_KEY)


def independent_sign(fields: dict[str, str], key: str, sign_type: str) -> str:
    text = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if v) + f"&key={key}"
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest().upper()
    return hashlib.md5(text.encode()).hexdigest().upper()


def notify(sign_type: str | None = None, key: str = WECHATPAY_KEY, **fields: str) -> bytes:
    data = {"return_code": "SUCCESS", "appid": "wxd930ea5d5a258f4f", "mch_id": "10000100",
            "nonce_str": "5K8264ILTKCH16CQ", "result_code": "FAIL", "err_code": "NOTENOUGH",
            "err_code_des": "余额不足", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "trade_type": "JSAPI", "total_fee": "1250", "fee_type": "CNY",
            "out_trade_no": "1409811653", "transaction_id": "1004400740201409030005092168",
            "time_end": "20260302095500"} | fields
    if sign_type:
        data["sign_type"] = sign_type
    sign = independent_sign(data, key, sign_type or "MD5")
    items = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in data.items())
    return f"<xml>{items}<sign><![CDATA[{sign}]]></sign></xml>".encode()


ACK = ("<xml><return_code><![CDATA[SUCCESS]]></return_code>"
       "<return_msg><![CDATA[OK]]></return_msg></xml>")


def post_wechatpay(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/webhooks/payments/wechatpay", content=body,
                       headers={"Content-Type": "text/xml"})


@pytest.mark.parametrize("sign_type", [None, "MD5", "HMAC-SHA256"])
def test_wechatpay_failed_payment(client: httpx.Client, seed: Seeder,
                                  sign_type: str | None) -> None:
    seed.user("u1", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    response = post_wechatpay(client, notify(sign_type))
    assert response.status_code == 200 and response.text == ACK
    event = seed.row(EVENTS, event_id="wechatpay:1004400740201409030005092168")
    assert (event["user_id"], event["value"]) == ("u1", 12.5)
    assert event["ts"] == T0 - timedelta(minutes=5)  # 09:55 Beijing time
    assert event["props"]["reason"] == "余额不足"
    assert event["props"]["order_id"] == "1409811653"


def test_wechatpay_replay_is_acknowledged_once(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    assert post_wechatpay(client, notify()).text == ACK
    # WeChat Pay retries for about a day; v2 notifies carry no signed timestamp, so an old
    # notify is judged by its id alone.
    again = post_wechatpay(client, notify(nonce_str="another-nonce"))
    assert again.status_code == 200 and again.text == ACK
    assert seed.count(EVENTS) == 1 and seed.count(RECEIPTS) == 1


@pytest.mark.sqlite_only
@pytest.mark.parametrize("body", [
    notify(key="not-the-key"),
    notify("HMAC-SHA256", key="not-the-key"),
    notify().replace(b"1250", b"1"),  # amount altered after signing
    notify().replace(b"<sign>", b"<signx>").replace(b"</sign>", b"</signx>"),
])
def test_wechatpay_wrong_sign_stores_nothing(client: httpx.Client, seed: Seeder,
                                             body: bytes) -> None:
    seed.user("u1", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    response = post_wechatpay(client, body)
    assert response.status_code == 400
    assert "<return_code><![CDATA[FAIL]]></return_code>" in response.text
    assert nothing_stored(seed)


def test_wechatpay_unknown_openid_is_unmatched(client: httpx.Client, seed: Seeder) -> None:
    assert post_wechatpay(client, notify()).text == ACK
    assert seed.row(RECEIPTS, source="wechatpay")["status"] == "unmatched"
    assert seed.count(EVENTS) == 0


@pytest.mark.sqlite_only
def test_wechatpay_success_notify_is_ignored(client: httpx.Client, seed: Seeder) -> None:
    seed.user("u1", openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    assert post_wechatpay(client, notify(result_code="SUCCESS")).text == ACK
    assert nothing_stored(seed)


@pytest.mark.sqlite_only
def test_wechatpay_refuses_entities(client: httpx.Client, seed: Seeder) -> None:
    evil = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b"<xml><openid>&e;</openid></xml>")
    response = post_wechatpay(client, evil)
    assert response.status_code == 400 and nothing_stored(seed)
