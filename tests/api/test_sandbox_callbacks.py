"""Callbacks delivered by the sandbox itself: real signed requests from ``/_sandbox/flush``
to the API served by uvicorn on loopback, after real SDK calls to the sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from redis import Redis
from sqlalchemy import Engine
from twilio.rest import Client as TwilioClient

from orchestrator.channels.weixin import RecallWeChatClient
from orchestrator.policy import consent
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.server import SandboxHandle, run_in_thread
from orchestrator.sandbox.state import SandboxState
from tests.tracking.seed import BATCHES, TOUCHES, Seeder

PHONE = "+8613800138000"


@pytest.fixture
def sandbox(app: FastAPI, base_url: str) -> Iterator[SandboxHandle]:
    """A sandbox that signs with this app's credentials and calls this app back."""
    settings = app.state.services.settings
    settings.public_base_url = base_url  # the URL Twilio signs is the one it calls
    config = SandboxConfig(
        twilio_auth_token=settings.twilio_auth_token.get_secret_value(),
        wechat_token=settings.wechat_token.get_secret_value(),
        wecom_token=settings.wecom_token.get_secret_value(),
        wechat_callback_url=f"{base_url}/v1/callbacks/wechat",
        wecom_callback_url=f"{base_url}/v1/callbacks/wecom",
        twilio_inbound_url=f"{base_url}/v1/callbacks/twilio",
    )
    with run_in_thread(state=SandboxState(config)) as handle:
        yield handle


def flush(sandbox: SandboxHandle) -> list[int]:
    answer = httpx.post(f"{sandbox.base_url}/_sandbox/flush", trust_env=False, timeout=30)
    answer.raise_for_status()
    return [d["status"] for d in answer.json()["results"]]


def test_twilio_status_callbacks_from_the_sandbox_update_the_touch(
    sandbox: SandboxHandle, app: FastAPI, base_url: str, seed: Seeder
) -> None:
    settings = app.state.services.settings
    twilio = TwilioClient(settings.twilio_account_sid, settings.twilio_auth_token
                          .get_secret_value())
    twilio.api.base_url, twilio.edge, twilio.region = sandbox.base_url, None, None
    message = twilio.messages.create(
        to=PHONE, from_=settings.twilio_from, body="我们想你了 https://r.example/s/abc",
        status_callback=f"{base_url}/v1/callbacks/twilio",
    )
    touch = seed.touch(seed.enrollment(seed.user("u1", phone=PHONE)),
                       provider_message_id=message.sid)
    assert flush(sandbox) == [200, 200]  # sent, then delivered
    row = seed.row(TOUCHES, id=touch)
    assert row["status"] == "delivered" and row["delivered_at"] is not None


def test_inbound_opt_out_reply_through_the_sandbox(
    sandbox: SandboxHandle, seed: Seeder, db_engine: Engine
) -> None:
    seed.user("u1", phone=PHONE)
    httpx.post(f"{sandbox.base_url}/_sandbox/twilio/inbound", trust_env=False,
               json={"from": PHONE, "body": "TD"}).raise_for_status()
    assert flush(sandbox) == [200]
    assert consent.suppressions(db_engine, ["u1"], "sms") == {"u1": "opted_out:sms"}


def test_masssendjobfinish_from_the_sandbox_lands_on_the_batch(
    sandbox: SandboxHandle, app: FastAPI, seed: Seeder, api_redis_url: str
) -> None:
    settings = app.state.services.settings
    client = RecallWeChatClient(settings.wechat_appid, settings.wechat_secret
                                .get_secret_value(), redis=Redis.from_url(api_redis_url),
                                api_base=sandbox.base_url)
    sent = client.message.send_mass_text(["o1", "o2", "o3"], "回来看看吧",
                                         client_msg_id="batch-1")
    seed.batch("batch-1", str(sent["msg_id"]))
    assert flush(sandbox) == [200]
    result = seed.row(BATCHES, id="batch-1")["result"]
    assert (result["total_count"], result["sent_count"]) == (3, 3)


def test_group_join_push_from_the_sandbox_marks_the_invite(
    sandbox: SandboxHandle, seed: Seeder
) -> None:
    enrollment = seed.enrollment(seed.user("u1", external_userid="wm_u1"))
    touch = seed.touch(enrollment, "invite", channel="wecom_group_invite")
    httpx.post(f"{sandbox.base_url}/_sandbox/wecom/join", trust_env=False,
               json={"external_userid": "wm_u1", "chat_id": "wr_deals"}).raise_for_status()
    assert flush(sandbox) == [200]
    assert seed.row(TOUCHES, id=touch)["joined_at"] is not None
