"""WeChat OA rules, driven through wechatpy over HTTP on loopback."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from sandbox_helpers import CONFIG, Receiver, SandboxWeChatClient
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.events import MassSendJobFinishEvent, TemplateSendJobFinishEvent
from wechatpy.exceptions import WeChatClientException
from wechatpy.utils import check_signature

from orchestrator.sandbox.server import SandboxHandle
from orchestrator.sandbox.state import SandboxState
from tests.support import jpeg

OpenIds = Callable[[int], list[str]]
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 chars, as WeChat issues them


def errcode_of(call: Callable[[], object]) -> WeChatClientException:
    with pytest.raises(WeChatClientException) as caught:
        call()
    return caught.value


def test_token_is_issued_for_the_configured_app_only(sandbox: SandboxHandle) -> None:
    url = f"{sandbox.base_url}/cgi-bin/token"
    good = {
        "grant_type": "client_credential",
        "appid": CONFIG.wechat_appid,
        "secret": CONFIG.wechat_secret,
    }
    issued = httpx.get(url, params=good).json()
    assert set(issued) == {"access_token", "expires_in"} and issued["expires_in"] == 7200
    assert httpx.get(url, params={**good, "secret": "wrong"}).json()["errcode"] == 40125
    assert httpx.get(url, params={**good, "appid": "wx-other"}).json()["errcode"] == 40013


def test_calls_with_a_bad_token_answer_40001(sandbox: SandboxHandle, openids: OpenIds) -> None:
    client = SandboxWeChatClient(
        sandbox.base_url,
        CONFIG.wechat_appid,
        CONFIG.wechat_secret,
        access_token="forged",
        auto_retry=False,
    )
    error = errcode_of(lambda: client.message.send_mass_text(openids(2), "hi"))
    assert error.errcode == 40001


def test_mass_send_to_one_openid_is_40130(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds
) -> None:
    error = errcode_of(lambda: wechat.message.send_mass_article(openids(1), news_media_id))
    assert error.errcode == 40130


@pytest.mark.parametrize("size", [2, 10_000])
def test_mass_send_of_2_to_10000_openids_is_accepted(
    wechat: SandboxWeChatClient,
    news_media_id: str,
    openids: OpenIds,
    size: int,
    state: SandboxState,
) -> None:
    result = wechat.message.send_mass_article(
        openids(size), news_media_id, client_msg_id=f"batch-{size}"
    )
    assert result["errcode"] == 0 and result["errmsg"] == "send job submission success"
    assert isinstance(result["msg_id"], int) and isinstance(result["msg_data_id"], int)
    [entry] = state.records("wechat", outcome="accepted")[-1:]
    assert entry["path"] == "/cgi-bin/message/mass/send"
    assert len(entry["recipients"]) == size and entry["ref"] == str(result["msg_id"])


def test_mass_send_of_10001_openids_is_rejected(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds
) -> None:
    error = errcode_of(lambda: wechat.message.send_mass_article(openids(10_001), news_media_id))
    assert error.errcode == 40130


def test_same_clientmsgid_is_45065_with_the_existing_msg_id_and_no_second_send(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds, control: httpx.Client
) -> None:
    control.post("/_sandbox/config", json={"wechat_clientmsgid_retry_interval_s": 0})
    first = wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-1")
    error = errcode_of(
        lambda: wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-1")
    )
    assert error.errcode == 45065
    assert error.response.json()["msg_id"] == first["msg_id"]
    sends = control.get("/_sandbox/record", params={"provider": "wechat"}).json()
    outcomes = [e["outcome"] for e in sends if e["path"] == "/cgi-bin/message/mass/send"]
    assert outcomes == ["accepted", "duplicate"]


def test_a_clientmsgid_repeated_within_a_minute_is_45066_and_sends_nothing(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds, control: httpx.Client
) -> None:
    wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-fast")
    error = errcode_of(
        lambda: wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-fast")
    )
    assert (error.errcode, error.errmsg) == (45066, "same clientmsgid retry too fast")
    assert "msg_id" not in error.response.json()
    sends = control.get("/_sandbox/record", params={"provider": "wechat"}).json()
    outcomes = [e["outcome"] for e in sends if e["path"] == "/cgi-bin/message/mass/send"]
    assert outcomes == ["accepted", "too_fast"]


def test_a_clientmsgid_is_forgotten_after_24_hours_and_a_repeat_sends_again(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds, control: httpx.Client
) -> None:
    control.post("/_sandbox/config", json={"wechat_clientmsgid_retry_interval_s": 0})
    control.post("/_sandbox/clock", json={"now": "2026-03-02T01:00:00Z"})
    first = wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-24")
    control.post("/_sandbox/clock", json={"now": "2026-03-03T00:59:59Z"})  # still inside
    again = errcode_of(
        lambda: wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-24")
    )
    assert again.errcode == 45065
    control.post("/_sandbox/clock", json={"now": "2026-03-03T01:00:00Z"})  # 24 h later
    later = wechat.message.send_mass_article(openids(3), news_media_id, client_msg_id="b-24")
    assert later["errcode"] == 0 and later["msg_id"] != first["msg_id"]  # a second send


def test_identical_send_without_clientmsgid_is_a_duplicate_too(
    wechat: SandboxWeChatClient, openids: OpenIds, control: httpx.Client
) -> None:
    control.post("/_sandbox/config", json={"wechat_clientmsgid_retry_interval_s": 0})
    wechat.message.send_mass_text(openids(2), "hello")
    assert errcode_of(lambda: wechat.message.send_mass_text(openids(2), "hello")).errcode == 45065
    assert wechat.message.send_mass_text(openids(2), "hello again")["errcode"] == 0


def test_monthly_quota_filters_the_fifth_send_and_resets_next_month_in_shanghai(
    wechat: SandboxWeChatClient,
    news_media_id: str,
    control: httpx.Client,
    receiver: Receiver,
    state: SandboxState,
) -> None:
    control.post("/_sandbox/config", json={"wechat_callback_url": receiver.url("/wx")})
    # 23:30 on 31 March in Shanghai is still March there (15:30 UTC).
    control.post("/_sandbox/clock", json={"now": "2024-03-31T15:30:00Z"})
    pair = ["oAlice", "oBob"]
    for n in range(4):
        wechat.message.send_mass_article(pair, news_media_id, client_msg_id=f"m{n}")

    fifth = wechat.message.send_mass_article([*pair, "oCarol"], news_media_id, client_msg_id="m4")
    assert state.records("wechat")[-1]["excluded"] == {"oAlice": "quota", "oBob": "quota"}
    error = errcode_of(
        lambda: wechat.message.send_mass_article(pair, news_media_id, client_msg_id="m5")
    )
    assert error.errcode == 45028

    control.post("/_sandbox/clock", json={"now": "2024-03-31T16:00:00Z"})  # April 1, 00:00
    assert wechat.message.send_mass_article(pair, news_media_id, client_msg_id="m6")["msg_id"]

    control.post("/_sandbox/flush")
    events = [parse_message(r.body) for r in receiver.requests]
    [job] = [e for e in events if e.id == fifth["msg_id"]]
    assert isinstance(job, MassSendJobFinishEvent)
    # WeChat's FilterCount is the number left after filtering, so 2 of 3 were filtered out.
    assert (job.total_count, job.filter_count, job.sent_count, job.error_count) == (3, 1, 1, 0)


def test_a_preview_spends_no_monthly_quota_and_keeps_the_article(
    wechat: SandboxWeChatClient, news_media_id: str, control: httpx.Client, state: SandboxState
) -> None:
    openid = "o" + "1" * 27  # shaped like an OpenID: wechatpy previews by touser
    for _ in range(6):  # more than the four mass sends a month
        answer = wechat.message.send_mass_article(openid, news_media_id, preview=True)
        assert (answer["errcode"], answer["errmsg"]) == (0, "preview success")
    entry = state.records("wechat", outcome="accepted")[-1]
    assert (entry["path"], entry["recipients"]) == ("/cgi-bin/message/mass/preview", [openid])
    pair = [openid, "o" + "2" * 27]  # the article is still sendable and the quota untouched
    wechat.message.send_mass_article(pair, news_media_id, client_msg_id="after-previews")
    assert not state.records("wechat")[-1]["excluded"]  # nobody filtered for quota

    control.post("/_sandbox/followers", json={"wechat": {"oGone" + "0" * 23: "unfollowed"}})
    gone = errcode_of(lambda: wechat.message.send_mass_article(
        "oGone" + "0" * 23, news_media_id, preview=True))
    assert gone.errcode == 43004
    stale = errcode_of(lambda: wechat.message.send_mass_article(openid, "nope", preview=True))
    assert stale.errcode == 40007


def test_at_most_100_previews_a_day(
    wechat: SandboxWeChatClient, news_media_id: str, control: httpx.Client
) -> None:
    control.post("/_sandbox/clock", json={"now": "2024-03-31T15:30:00Z"})  # 23:30 in Shanghai
    openid = "o" + "3" * 27
    for _ in range(100):
        wechat.message.send_mass_article(openid, news_media_id, preview=True)
    error = errcode_of(lambda: wechat.message.send_mass_article(openid, news_media_id,
                                                                 preview=True))
    assert error.errcode == 45009
    control.post("/_sandbox/clock", json={"now": "2024-03-31T16:00:00Z"})  # the next day there
    assert wechat.message.send_mass_article(openid, news_media_id, preview=True)["errcode"] == 0


def test_unknown_openid_rejects_the_mass_send_with_40003(
    wechat: SandboxWeChatClient, control: httpx.Client, openids: OpenIds
) -> None:
    control.post("/_sandbox/followers", json={"wechat": {"oGhost": "unknown"}})
    error = errcode_of(lambda: wechat.message.send_mass_text([*openids(2), "oGhost"], "hi"))
    # Like WeChat, the sandbox does not say which OpenID: the hint is a request id.
    assert error.errcode == 40003 and "oGhost" not in error.errmsg
    assert error.errmsg.startswith("invalid openid hint: [")
    assert errcode_of(lambda: wechat.message.send_template("oGhost", "tpl", {})).errcode == 40003


def test_unfollowed_openids_are_43004_alone_and_errors_in_a_mixed_send(
    wechat: SandboxWeChatClient, control: httpx.Client, receiver: Receiver
) -> None:
    control.post("/_sandbox/config", json={"wechat_callback_url": receiver.url("/wx")})
    control.post(
        "/_sandbox/followers", json={"wechat": {"oGone1": "unfollowed", "oGone2": "unfollowed"}}
    )
    assert (
        errcode_of(lambda: wechat.message.send_mass_text(["oGone1", "oGone2"], "hi")).errcode
        == 43004
    )
    assert errcode_of(lambda: wechat.message.send_template("oGone1", "tpl", {})).errcode == 43004

    mixed = wechat.message.send_mass_text(["oGone1", "oHere"], "hi")
    control.post("/_sandbox/flush")
    [event] = [parse_message(r.body) for r in receiver.requests]
    assert event.id == mixed["msg_id"]
    assert (event.total_count, event.filter_count, event.sent_count, event.error_count) == (
        2,
        2,
        1,
        1,
    )


def test_job_finish_push_is_signed_like_wechat_and_parsed_by_wechatpy(
    wechat: SandboxWeChatClient,
    news_media_id: str,
    control: httpx.Client,
    receiver: Receiver,
    openids: OpenIds,
) -> None:
    control.post("/_sandbox/config", json={"wechat_callback_url": receiver.url("/wx?x=1")})
    sent = wechat.message.send_mass_article(openids(5), news_media_id, client_msg_id="j")

    flushed = control.post("/_sandbox/flush").json()

    assert flushed["delivered"] == 1 and flushed["results"][0]["status"] == 200
    [push] = receiver.requests
    assert push.query["x"] == "1" and push.query["openid"] == "mphelper"
    check_signature(
        CONFIG.wechat_token, push.query["signature"], push.query["timestamp"], push.query["nonce"]
    )
    event = parse_message(push.body)
    assert isinstance(event, MassSendJobFinishEvent)
    assert (event.id, event.status, event.total_count, event.sent_count) == (
        sent["msg_id"],
        "send success",
        5,
        5,
    )
    assert wechat.message.get_mass(sent["msg_id"])["msg_status"] == "SEND_SUCCESS"


def test_push_in_safe_mode_is_encrypted_with_the_configured_aes_key(
    wechat: SandboxWeChatClient, control: httpx.Client, receiver: Receiver, openids: OpenIds
) -> None:
    control.post(
        "/_sandbox/config",
        json={"wechat_callback_url": receiver.url("/wx"), "wechat_aes_key": AES_KEY},
    )
    wechat.message.send_mass_text(openids(2), "hi")
    control.post("/_sandbox/flush")

    [push] = receiver.requests
    assert push.query["encrypt_type"] == "aes"
    crypto = WeChatCrypto(CONFIG.wechat_token, AES_KEY, CONFIG.wechat_appid)
    plain = crypto.decrypt_message(
        push.body, push.query["msg_signature"], push.query["timestamp"], push.query["nonce"]
    )
    assert isinstance(parse_message(plain), MassSendJobFinishEvent)


def test_template_message_answers_msgid_and_pushes_its_finish_event(
    wechat: SandboxWeChatClient, control: httpx.Client, receiver: Receiver, state: SandboxState
) -> None:
    control.post("/_sandbox/config", json={"wechat_callback_url": receiver.url("/wx")})
    sent = wechat.message.send_template(
        "oAlice", "tpl-1", {"first": {"value": "hi"}}, url="https://r.example/s/abc"
    )
    assert sent["errcode"] == 0 and isinstance(sent["msgid"], int)
    assert state.records("wechat")[-1]["recipients"] == ["oAlice"]
    assert errcode_of(lambda: wechat.message.send_template("oAlice", "", {})).errcode == 40037

    control.post("/_sandbox/flush")
    [push] = receiver.requests
    event = parse_message(push.body)
    assert isinstance(event, TemplateSendJobFinishEvent)
    assert (event.id, event.source, event.status) == (sent["msgid"], "oAlice", "success")


def test_media_uploads_feed_mpnews_and_unknown_media_is_40007(
    wechat: SandboxWeChatClient, openids: OpenIds
) -> None:
    thumb = wechat.media.upload("thumb", ("cover.jpg", io.BytesIO(jpeg()), "image/jpeg"))
    assert thumb["type"] == "thumb" and thumb["thumb_media_id"] == thumb["media_id"]
    cover = wechat.material.add("thumb", ("cover.jpg", io.BytesIO(jpeg()), "image/jpeg"))
    image_url = wechat.media.upload_image(("pic.png", io.BytesIO(jpeg(fmt="PNG")), "image/png"))
    assert image_url.startswith("http://mmbiz.qpic.cn/")
    draft = wechat.post(
        "draft/add",
        data={
            "articles": [
                {
                    "title": "t",
                    "content": f'<img src="{image_url}">',
                    "thumb_media_id": cover["media_id"],
                }
            ]
        },
    )
    assert wechat.message.send_mass_article(openids(2), draft["media_id"])["errcode"] == 0
    assert (
        errcode_of(lambda: wechat.message.send_mass_article(openids(2), "no-such-media")).errcode
        == 40007
    )
    assert errcode_of(lambda: wechat.media.upload_articles([])).errcode == 44003


def test_a_body_that_is_not_json_is_47001(
    sandbox: SandboxHandle, wechat: SandboxWeChatClient
) -> None:
    response = httpx.post(
        f"{sandbox.base_url}/cgi-bin/message/mass/send",
        params={"access_token": wechat.access_token},
        content=b"{not json",
    )
    assert response.json()["errcode"] == 47001


def test_record_at_is_business_time(
    wechat: SandboxWeChatClient, control: httpx.Client, openids: OpenIds, state: SandboxState
) -> None:
    control.post("/_sandbox/clock", json={"now": "2030-01-02T03:04:05+08:00"})
    wechat.message.send_mass_text(openids(2), "hi")
    at = datetime.fromisoformat(state.records("wechat")[-1]["at"])
    assert at == datetime(2030, 1, 1, 19, 4, 5, tzinfo=UTC)
