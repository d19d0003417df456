"""WeChat material as the sandbox holds it to WeChat's pages: covers, articles, drafts, and the
followers check, through wechatpy over HTTP on loopback."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_helpers import SandboxWeChatClient
from wechatpy.exceptions import WeChatClientException

from orchestrator.sandbox.state import SandboxState
from tests.support import jpeg

OpenIds = Callable[[int], list[str]]


def refused(call: Callable[[], object]) -> tuple[int, str]:
    with pytest.raises(WeChatClientException) as caught:
        call()
    return int(caught.value.errcode), str(caught.value.errmsg)


def jpg(data: bytes | None = None) -> tuple[str, io.BytesIO, str]:
    return ("cover.jpg", io.BytesIO(jpeg() if data is None else data), "image/jpeg")


def article(**fields: Any) -> dict[str, Any]:
    return {"title": "好久不见", "content": "<p>新店上线</p>", **fields}


def test_an_article_without_a_cover_is_refused_with_40007(
    wechat: SandboxWeChatClient, state: SandboxState
) -> None:
    no_cover = {"articles": [article()]}  # wechatpy's upload_articles insists on the key
    assert refused(lambda: wechat.post("media/uploadnews", data=no_cover))[0] == 40007
    assert refused(lambda: wechat.post("draft/add", data={"articles": [article()]}))[0] == 40007
    bogus = article(thumb_media_id="made-up")
    assert refused(lambda: wechat.post("draft/add", data={"articles": [bogus]}))[0] == 40007
    assert [e["outcome"] for e in state.records("wechat")[1:]] == ["error:40007"] * 3


def test_a_cover_the_sandbox_issued_makes_an_article(wechat: SandboxWeChatClient) -> None:
    temporary = wechat.media.upload("thumb", jpg())["media_id"]
    permanent = wechat.material.add("thumb", jpg())["media_id"]
    news = wechat.media.upload_articles([article(thumb_media_id=temporary)])
    draft = wechat.post("draft/add", data={"articles": [article(thumb_media_id=permanent)]})
    assert news["type"] == "news" and news["media_id"] and draft["media_id"]
    # uploadnews takes a temporary thumb, draft/add a permanent one: not the other way round.
    wrong_news = article(thumb_media_id=permanent)
    assert refused(lambda: wechat.media.upload_articles([wrong_news]))[0] == 40007
    wrong_draft = {"articles": [article(thumb_media_id=temporary)]}
    assert refused(lambda: wechat.post("draft/add", data=wrong_draft))[0] == 40007


@pytest.mark.parametrize(
    ("upload", "code"),
    [
        (("cover.png", jpeg(fmt="PNG"), "image/png"), 40005),  # a thumb is a JPG
        (("cover.jpg", b"GIF89a not really", "image/jpeg"), 40005),  # read from the bytes
        (("cover.jpg", jpeg(400, 400, noise=True), "image/jpeg"), 40012),  # over 64,000 bytes
    ],
    ids=["png", "not-an-image", "too-big"],
)
def test_a_thumb_must_be_a_jpg_of_at_most_64_kb(
    wechat: SandboxWeChatClient, upload: tuple[str, bytes, str], code: int
) -> None:
    name, data, mime = upload
    for add in (wechat.media.upload, wechat.material.add):
        assert refused(lambda add=add: add("thumb", (name, io.BytesIO(data), mime)))[0] == code


def test_upload_needs_a_type_and_a_file(sandbox: Any, wechat: SandboxWeChatClient) -> None:
    assert refused(lambda: wechat.media.upload("sticker", jpg()))[0] == 40004
    answer = httpx.post(
        f"{sandbox.base_url}/cgi-bin/material/add_material",
        params={"access_token": wechat.access_token, "type": "thumb"},
        files={"other": ("x.jpg", jpeg(), "image/jpeg")},
    ).json()
    assert answer["errcode"] == 41005


def test_a_temporary_thumb_expires_after_three_days_of_business_time(
    wechat: SandboxWeChatClient, control: httpx.Client
) -> None:
    control.post("/_sandbox/clock", json={"now": "2026-03-01T10:00:00+08:00"})
    thumb = wechat.media.upload("thumb", jpg())["media_id"]
    control.post("/_sandbox/clock", json={"now": "2026-03-04T09:59:59+08:00"})
    assert wechat.media.upload_articles([article(thumb_media_id=thumb)])["media_id"]
    control.post("/_sandbox/clock", json={"now": "2026-03-04T10:00:00+08:00"})
    assert refused(lambda: wechat.media.upload_articles([article(thumb_media_id=thumb)]))[0] == (
        40007
    )


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"title": "标" * 33}, 45003),
        ({"author": "作" * 17}, 45110),
        ({"digest": "摘" * 129}, 45004),
        ({"content": "字" * 20_000}, 45002),
        ({"content_source_url": "https://m.example.com/" + "a" * 1000}, 45005),
        ({"title": ""}, 44003),
        ({"content": " "}, 44003),
    ],
    ids=["title", "author", "digest", "content", "source-url", "no-title", "no-content"],
)
def test_draft_fields_within_wechats_limits(
    wechat: SandboxWeChatClient, fields: dict[str, str], code: int
) -> None:
    cover = wechat.material.add("thumb", jpg())["media_id"]
    body = {"articles": [article(thumb_media_id=cover, **fields)]}
    assert refused(lambda: wechat.post("draft/add", data=body))[0] == code
    limits = {"title": "标" * 32, "author": "作" * 16, "digest": "摘" * 128}
    assert wechat.post("draft/add", data={"articles": [article(thumb_media_id=cover, **limits)]})


def test_a_draft_is_mass_sent_once(
    wechat: SandboxWeChatClient, openids: OpenIds, state: SandboxState
) -> None:
    cover = wechat.material.add("thumb", jpg())["media_id"]
    draft = wechat.post("draft/add", data={"articles": [article(thumb_media_id=cover)]})
    sent = wechat.message.send_mass_article(openids(2), draft["media_id"], client_msg_id="b-1")
    # A second send of that draft is refused: it left the draft box ...
    again = refused(
        lambda: wechat.message.send_mass_article(openids(2), draft["media_id"], client_msg_id="b-2")
    )
    assert again[0] == 40007
    # ... but repeating the send that used it (a minute later) is still answered as that send.
    state.configure({"wechat_clientmsgid_retry_interval_s": 0})
    with pytest.raises(WeChatClientException) as repeat:
        wechat.message.send_mass_article(openids(2), draft["media_id"], client_msg_id="b-1")
    assert repeat.value.errcode == 45065
    assert repeat.value.response.json()["msg_id"] == sent["msg_id"]


def test_a_clientmsgid_over_64_bytes_is_45067(
    wechat: SandboxWeChatClient, news_media_id: str, openids: OpenIds
) -> None:
    assert wechat.message.send_mass_article(openids(2), news_media_id, client_msg_id="c" * 64)
    too_long = "c" * 65
    assert refused(
        lambda: wechat.message.send_mass_article(openids(2), news_media_id, client_msg_id=too_long)
    )[0] == 45067


def test_batchget_answers_followers_and_refuses_an_unknown_openid_without_naming_it(
    wechat: SandboxWeChatClient, control: httpx.Client, openids: OpenIds
) -> None:
    followers = {"oGone": "unfollowed", "oGhost": "unknown"}
    control.post("/_sandbox/followers", json={"wechat": followers})
    users = wechat.user.get_batch(["oHere", "oGone"])
    assert [(u["openid"], u["subscribe"]) for u in users] == [("oHere", 1), ("oGone", 0)]
    code, message = refused(lambda: wechat.user.get_batch(["oHere", "oGhost"]))
    assert code == 40003 and "oGhost" not in message
    assert refused(lambda: wechat.user.get_batch(openids(101)))[0] == 47001
    assert refused(lambda: wechat.user.get_batch([]))[0] == 47001
