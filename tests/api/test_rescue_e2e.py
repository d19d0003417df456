"""End to end: a signed payment-failure webhook → the rescue journey enrolls the payer in
the same request → engine tick + delivery → an SMS in the sandbox carrying a short link →
the link is followed → the click is recorded → a goal event through the API → the
conversion is attributed to that SMS touch.

Everything is real: uvicorn on loopback, the sandbox over HTTP, the Twilio SDK inside the
SMS adapter, Redis (caps) and the database; only the business clock is a ManualClock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, select

from orchestrator.api.app import create_app
from orchestrator.api.server import serve_in_thread
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.journeys.assign import arm_for
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.server import SandboxHandle, run_in_thread
from orchestrator.sandbox.state import SandboxState
from orchestrator.store.models import Conversion, Enrollment, Link
from tests.tracking.seed import T0, TOUCHES, Seeder

CONVERSIONS = Conversion.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]
LINKS = Link.__table__  # type: ignore[attr-defined]
SECRET = "whsec-e2e"

POLICY = """\
timezone: Asia/Shanghai
caps:
  global: { max: 3, per: 7d }
  sms: { max: 2, per: 7d }
send_hours:
  sms: "08:00-21:00"
sms:
  signature: "【校园外卖】"
  opt_out_suffix: "拒收请回复R"
  price_per_segment: 0.045
"""
RESCUE = """\
id: rescue
name: 支付失败挽回
entry:
  event: payment_failed
reentry: 3d
holdout: 10%
goal: { event: order_placed, within: 3d }
priority: 100
steps:
  - wait: 10m
  - id: sms
    send: sms
    template: rescue/sms.j2
    link: "https://m.example.com/pay/retry?order={{ event.props.webhook_id }}"
"""
SMS_TEMPLATE = "您的订单支付未成功，点此重新支付 {{ link }}"


@pytest.fixture
def stack(tmp_path: Path, db_engine: Engine, api_redis_url: str) -> Iterator[
        tuple[Settings, httpx.Client, SandboxHandle, ManualClock]]:
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys" / "policy.yaml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "journeys" / "rescue.yaml").write_text(RESCUE, encoding="utf-8")
    (tmp_path / "templates" / "rescue").mkdir(parents=True)
    (tmp_path / "templates" / "rescue" / "sms.j2").write_text(SMS_TEMPLATE, encoding="utf-8")
    settings = Settings(
        _env_file=None, api_keys="e2e-key", redis_url=api_redis_url,
        state_dir=tmp_path / "state", journeys_dir=tmp_path / "journeys",
        templates_dir=tmp_path / "templates", generic_webhook_secret=SECRET,
    )
    clock = ManualClock(T0)
    with run_in_thread(state=SandboxState(SandboxConfig.from_settings(settings))) as sandbox:
        settings.twilio_api_base = settings.wechat_api_base = settings.wecom_api_base = (
            sandbox.base_url)
        # Served on loopback for the embedded stack: the sandbox placeholders are accepted.
        app: FastAPI = create_app(settings, engine=db_engine, clock=clock,
                                  allow_sandbox_secrets=True)
        with serve_in_thread(app) as api:
            settings.public_base_url = api.base_url  # short links and Twilio callbacks
            with httpx.Client(base_url=api.base_url, trust_env=False, timeout=30) as client:
                yield settings, client, sandbox, clock


def signed(body: dict[str, object], t: int) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    v1 = hmac.new(SECRET.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return raw, {"X-Recall-Signature": f"t={t},v1={v1}", "Content-Type": "application/json"}


def treated_user() -> str:
    return next(u for u in (f"student-{i}" for i in range(100))
                if arm_for("rescue", u, 0.10) == "treatment")


def test_payment_failure_to_attributed_conversion(
    stack: tuple[Settings, httpx.Client, SandboxHandle, ManualClock],
    db_engine: Engine, seed: Seeder,
) -> None:
    settings, client, sandbox, clock = stack
    user = seed.user(treated_user(), phone="+8613800138000", openid="o-student")

    # 1. The payment system's signed webhook enrolls the payer in this very request.
    raw, headers = signed({"id": "pay_9", "type": "payment_failed", "user_id": user,
                           "amount": 18.5, "currency": "CNY", "reason": "card_declined",
                           "occurred_at": T0.isoformat()}, int(T0.timestamp()))
    answer = client.post("/v1/webhooks/payments/generic", content=raw, headers=headers)
    assert answer.json() == {"status": "accepted"}
    enrollment = seed.row(ENROLLMENTS, user_id=user)
    assert (enrollment["journey_id"], enrollment["arm"]) == ("rescue", "treatment")

    # 2. Ten minutes later the engine sends the SMS through the sandbox.
    rt = Runtime.from_settings(settings, db=db_engine, clock=clock)
    clock.advance(timedelta(minutes=10))
    try:
        run_until_idle(rt)
    finally:
        rt.close()  # the SMS adapter's connections, not left to the garbage collector
    sent = [r for r in sandbox.state.records("twilio") if r["outcome"] == "accepted"]
    assert len(sent) == 1
    body = sent[0]["body"]["Body"]
    assert body.startswith("【校园外卖】您的订单支付未成功") and body.endswith("拒收请回复R")
    short = re.search(rf"{re.escape(settings.public_base_url)}/s/([A-Za-z0-9_-]+)", body)
    assert short is not None, body
    code = short.group(1)
    touch = seed.row(TOUCHES, link_code=code)
    assert (touch["user_id"], touch["channel"], touch["status"]) == (user, "sms", "sent")

    # 3. The sandbox's signed status callbacks reach the API.
    flushed = httpx.post(f"{sandbox.base_url}/_sandbox/flush", trust_env=False).json()
    assert [r["status"] for r in flushed["results"]] == [200, 200]
    assert seed.row(TOUCHES, id=touch["id"])["status"] == "delivered"

    # 4. The recipient follows the short link.
    clock.advance(timedelta(minutes=3))
    click = client.get(f"/s/{code}", follow_redirects=False)
    assert click.status_code == 302
    target = urlsplit(click.headers["location"])
    assert (target.netloc, target.path) == ("m.example.com", "/pay/retry")
    assert parse_qs(target.query) == {"order": ["pay_9"], "utm_source": ["recall"],
                                      "utm_medium": ["sms"], "utm_campaign": ["rescue"],
                                      "touch": [code]}
    assert seed.row(TOUCHES, id=touch["id"])["clicked_at"] == clock.now()
    assert seed.row(LINKS, code=code)["clicks"] == 1

    # 5. The order goes through: a goal event via the API converts and is attributed.
    clock.advance(timedelta(minutes=2))
    goal = {"event_id": "order-77", "user_id": user, "name": "order_placed",
            "ts": clock.now().isoformat(), "value": 18.5, "props": {}}
    answer = client.post("/v1/events", json={"events": [goal]},
                         headers={"Authorization": "Bearer e2e-key"})
    assert answer.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    with db_engine.connect() as conn:
        conversion = conn.execute(select(CONVERSIONS)).mappings().one()
    assert (conversion["touch_id"], conversion["event_id"]) == (touch["id"], "order-77")
    assert conversion["converted_at"] == clock.now()
    # The SMS was the last step, so the enrollment had completed; measurement goes on.
    assert seed.row(ENROLLMENTS, user_id=user)["converted_at"] == clock.now()
    assert seed.row(TOUCHES, id=touch["id"])["converted_at"] == clock.now()
