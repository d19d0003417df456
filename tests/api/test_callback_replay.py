"""WeChat and WeCom callbacks cannot be replayed or downgraded.

An attacker who read one signed callback (an access log, a proxy) holds a valid
``(signature, timestamp, nonce)``: the plain-mode signature does not cover the body, so
without a time window and a nonce store that triple would forge any push forever. The
requests are signed here with ``hashlib`` and wechatpy's crypto, never with the code under
test.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from wechatpy.crypto import WeChatCrypto

from orchestrator.api.app import create_app
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.policy import consent
from orchestrator.store.models import OptOut
from tests.api.conftest import Swappable
from tests.api.test_callbacks import AES_KEY, event_xml
from tests.tracking.seed import T0, TOUCHES, USERS, Seeder

OPT_OUTS = OptOut.__table__  # type: ignore[attr-defined]


def signed(token: str, at: int, nonce: str | None = None, **extra: str) -> dict[str, str]:
    nonce = nonce or secrets.token_hex(5)
    signature = hashlib.sha1("".join(sorted([token, str(at), nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": str(at), "nonce": nonce} | extra


@pytest.fixture
def wall() -> ManualClock:
    """Real time as the API sees it, moved by the test."""
    return ManualClock(T0)


@pytest.fixture
def guarded(settings: Settings, db_engine: Engine, clock: ManualClock, wall: ManualClock,
            api_server: tuple[Swappable, str], api_redis_url: str) -> Iterator[httpx.Client]:
    app = create_app(settings, engine=db_engine, clock=clock, wall_clock=wall)
    swappable, url = api_server
    swappable.app = app
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        yield client
    swappable.app = None


NOW = int(T0.timestamp())


def unsubscribe(client: httpx.Client, query: dict[str, str],
                body: str | None = None) -> httpx.Response:
    return client.post("/v1/callbacks/wechat", params=query,
                       content=(body or event_xml("unsubscribe")).encode())


def test_a_replayed_push_is_refused_and_changes_nothing(
    guarded: httpx.Client, seed: Seeder
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    query = signed("wechat-token", NOW)
    first = guarded.post("/v1/callbacks/wechat", params=query,
                         content=event_xml("subscribe").encode())
    assert first.status_code == 200
    # The same (signature, timestamp, nonce) with another body: a forged unsubscribe.
    replay = unsubscribe(guarded, query)
    assert replay.status_code == 400
    assert replay.json()["error"]["field"] == "nonce"
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is True
    assert seed.count(OPT_OUTS) == 0


@pytest.mark.sqlite_only
@pytest.mark.parametrize(("age_s", "accepted"), [(-299, True), (299, True), (301, False),
                                                  (-301, False), (86_400, False)])
def test_the_timestamp_must_be_within_300_s_of_real_time(
    guarded: httpx.Client, seed: Seeder, wall: ManualClock, age_s: int, accepted: bool
) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    wall.set(T0 + timedelta(seconds=age_s))
    response = unsubscribe(guarded, signed("wechat-token", NOW))
    assert response.status_code == (200 if accepted else 400)
    assert (seed.count(OPT_OUTS) == 1) is accepted
    if not accepted:
        assert response.json()["error"]["field"] == "timestamp"


@pytest.mark.sqlite_only
def test_the_window_is_real_time_not_business_time(
    guarded: httpx.Client, seed: Seeder, clock: ManualClock
) -> None:
    """Under ``recall simulate`` business time runs days ahead; providers stamp wall time."""
    seed.user("u1", openid="o1", wechat_followed=True)
    clock.advance(timedelta(days=3))
    assert unsubscribe(guarded, signed("wechat-token", NOW)).status_code == 200


@pytest.mark.sqlite_only
def test_url_verification_cannot_be_replayed(guarded: httpx.Client) -> None:
    query = signed("wechat-token", NOW, echostr="e42")
    assert guarded.get("/v1/callbacks/wechat", params=query).text == "e42"
    again = guarded.get("/v1/callbacks/wechat", params=query)
    assert again.status_code == 400 and again.json()["error"]["field"] == "nonce"


@pytest.mark.sqlite_only
def test_wecom_plain_pushes_cannot_be_replayed(guarded: httpx.Client, seed: Seeder) -> None:
    touch = seed.touch(seed.enrollment(seed.user("u1", external_userid="wm_u1")), "invite",
                       channel="wecom_group_invite")
    xml = event_xml("change_external_chat", openid="sys", ChatId="wr1", ChangeType="update",
                    UpdateDetail="add_member", MemChangeList="<Item>wm_u1</Item>")
    query = signed("wecom-token", NOW)
    first = guarded.post("/v1/callbacks/wecom", params=query, content=xml.encode())
    assert first.status_code == 200
    assert seed.row(TOUCHES, id=touch)["joined_at"] is not None
    again = guarded.post("/v1/callbacks/wecom", params=query, content=xml.encode())
    assert again.status_code == 400 and again.json()["error"]["field"] == "nonce"


@pytest.mark.sqlite_only
def test_a_push_that_failed_can_be_retried_with_its_nonce(
    guarded: httpx.Client, seed: Seeder
) -> None:
    """WeChat retries a push it got no answer for; a failure must not burn the nonce."""
    seed.user("u1", openid="o1", wechat_followed=True)
    query = signed("wechat-token", NOW)
    assert unsubscribe(guarded, query, "<xml><broken").status_code == 400
    assert unsubscribe(guarded, query).status_code == 200
    assert seed.count(OPT_OUTS) == 1


def test_with_an_aes_key_a_plain_push_is_refused(
    guarded: httpx.Client, seed: Seeder, settings: Settings
) -> None:
    """``encrypt_type=raw`` (or none) would turn the body's signature off: a token-signed
    plain unsubscribe is refused once safe mode is configured."""
    settings.wechat_aes_key = SecretStr(AES_KEY)
    seed.user("u1", openid="o1", wechat_followed=True)
    for extra in ({}, {"encrypt_type": "raw"}):
        response = unsubscribe(guarded, signed("wechat-token", NOW, **extra))
        assert response.status_code == 400
        assert response.json()["error"]["field"] == "encrypt_type"
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is True
    assert seed.count(OPT_OUTS) == 0

    # The same event in safe mode goes through.
    query = signed("wechat-token", NOW, encrypt_type="aes")
    crypto = WeChatCrypto("wechat-token", AES_KEY, settings.wechat_appid)
    envelope = crypto.encrypt_message(event_xml("unsubscribe"), query["nonce"],
                                      query["timestamp"])
    msg_signature = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    response = unsubscribe(guarded, query | {"msg_signature": msg_signature}, envelope)
    assert response.status_code == 200
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is False
    assert consent.suppressions(seed.engine, ["u1"], "wechat_article") == {
        "u1": "not_following"}


@pytest.mark.sqlite_only
def test_without_redis_a_callback_is_a_503_and_changes_nothing(
    settings: Settings, db_engine: Engine, clock: ManualClock, seed: Seeder,
    api_server: tuple[Swappable, str],
) -> None:
    """The nonce store is unreachable: refuse (the provider retries), never guess."""
    seed.user("u1", openid="o1", wechat_followed=True)
    app = create_app(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}),
                     engine=db_engine, clock=clock)
    swappable, url = api_server
    swappable.app = app
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
            answer = unsubscribe(client, signed("wechat-token", int(time.time())))
    finally:
        swappable.app = None
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "store_unavailable"
    assert seed.count(OPT_OUTS) == 0
