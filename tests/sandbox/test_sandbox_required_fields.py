"""For every provider call the adapters make, a request missing one required field is refused
with the code the provider documents (docs/sandbox.md names each page), and the complete
request is accepted: so the adapters cannot lean on a kindness the real providers lack.

Each case is (call, the field left out, the expected code). Requests go over HTTP as raw
bodies, so a field is really absent, not an SDK default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sandbox_helpers import CONFIG

from orchestrator.sandbox.server import SandboxHandle
from tests.support import jpeg

TWILIO_MESSAGES = f"/2010-04-01/Accounts/{CONFIG.twilio_account_sid}/Messages.json"


@dataclass
class Provider:
    """A raw HTTP client for one provider, holding the ids a complete request needs."""

    http: httpx.Client
    token: str = ""
    ids: dict[str, str] = field(default_factory=dict)

    def wechat(self, path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
        params = {"access_token": self.token, **query}
        return self.http.post(f"/cgi-bin/{path}", params=params, json=body).json()

    def upload(self, path: str, files: dict[str, Any], **query: str) -> Any:
        params = {"access_token": self.token, **query}
        return self.http.post(f"/cgi-bin/{path}", params=params, files=files).json()


@pytest.fixture
def http(sandbox: SandboxHandle) -> Any:
    with httpx.Client(base_url=sandbox.base_url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def wx(http: httpx.Client) -> Provider:
    query = {"grant_type": "client_credential", "appid": CONFIG.wechat_appid,
             "secret": CONFIG.wechat_secret}
    provider = Provider(http, http.get("/cgi-bin/token", params=query).json()["access_token"])
    cover = ("cover.jpg", jpeg(), "image/jpeg")
    provider.ids["thumb"] = provider.upload(
        "material/add_material", {"media": cover}, type="thumb")["media_id"]
    return provider


@pytest.fixture
def wc(http: httpx.Client) -> Provider:
    query = {"corpid": CONFIG.wecom_corp_id, "corpsecret": CONFIG.wecom_secret}
    provider = Provider(http, http.get("/cgi-bin/gettoken", params=query).json()["access_token"])
    task = provider.wechat("externalcontact/add_msg_template", {
        "chat_type": "single", "external_userid": ["wm1"], "sender": "staff",
        "text": {"content": "进群领券"}})
    way = provider.wechat("externalcontact/groupchat/add_join_way",
                          {"scene": 2, "chat_id_list": ["wrChat"]})
    provider.ids.update(msgid=task["msgid"], config_id=way["config_id"])
    return provider


def without(body: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A deep copy of ``body`` without the field at ``dotted`` (``a.0.b``: into lists too)."""
    import copy

    copied = copy.deepcopy(body)
    *parents, last = dotted.split(".")
    node: Any = copied
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]
    return copied


# ---------------------------------------------------------------- WeChat Official Account

TOKEN = {"grant_type": "client_credential", "appid": CONFIG.wechat_appid,
         "secret": CONFIG.wechat_secret}


@pytest.mark.parametrize(("missing", "code"), [("grant_type", 40002), ("appid", 41002),
                                               ("secret", 41004)])
def test_wechat_token(http: httpx.Client, missing: str, code: int) -> None:
    assert "access_token" in http.get("/cgi-bin/token", params=TOKEN).json()
    query = {k: v for k, v in TOKEN.items() if k != missing}
    assert http.get("/cgi-bin/token", params=query).json()["errcode"] == code


@pytest.mark.parametrize(("missing", "code"), [("type", 40004), ("media", 41005)])
@pytest.mark.parametrize("path", ["material/add_material", "media/upload"])
def test_wechat_material_upload(wx: Provider, path: str, missing: str, code: int) -> None:
    query = {"type": "thumb"}
    files = {"media": ("cover.jpg", jpeg(), "image/jpeg")}
    assert "media_id" in wx.upload(path, files, **query)
    if missing == "type":
        query = {}
    else:
        files = {"file": ("cover.jpg", jpeg(), "image/jpeg")}
    assert wx.upload(path, files, **query)["errcode"] == code


DRAFT_CASES = [("articles", 44003), ("articles.0.title", 44003), ("articles.0.content", 44003),
               ("articles.0.thumb_media_id", 40007)]


@pytest.mark.parametrize(("missing", "code"), DRAFT_CASES)
def test_wechat_draft_add(wx: Provider, missing: str, code: int) -> None:
    body = {"articles": [{"title": "好久不见", "content": "<p>新店上线</p>",
                          "thumb_media_id": wx.ids["thumb"]}]}
    assert "media_id" in wx.wechat("draft/add", body)
    assert wx.wechat("draft/add", without(body, missing))["errcode"] == code


MASS_CASES = [("touser", 47001), ("msgtype", 47001), ("mpnews", 47001),
              ("mpnews.media_id", 40007)]


@pytest.mark.parametrize(("missing", "code"), MASS_CASES)
def test_wechat_mass_send(wx: Provider, missing: str, code: int) -> None:
    article = {"title": "好久不见", "content": "<p>x</p>", "thumb_media_id": wx.ids["thumb"]}

    def body(clientmsgid: str) -> dict[str, Any]:
        draft = wx.wechat("draft/add", {"articles": [article]})["media_id"]
        return {"touser": ["oA", "oB"], "msgtype": "mpnews", "mpnews": {"media_id": draft},
                "send_ignore_reprint": 0, "clientmsgid": clientmsgid}

    assert wx.wechat("message/mass/send", body("complete"))["errcode"] == 0
    assert wx.wechat("message/mass/send", without(body("partial"), missing))["errcode"] == code


@pytest.mark.parametrize(("missing", "code"), [("touser", 40003), ("template_id", 40037),
                                               ("data", 47001)])
def test_wechat_template_send(wx: Provider, missing: str, code: int) -> None:
    body = {"touser": "oA", "template_id": "tpl", "url": "https://m.example.com/s/1",
            "data": {"first": {"value": "好久不见"}}}
    assert wx.wechat("message/template/send", body)["errcode"] == 0
    assert wx.wechat("message/template/send", without(body, missing))["errcode"] == code


@pytest.mark.parametrize(("missing", "code"), [("user_list", 47001),
                                               ("user_list.0.openid", 40003)])
def test_wechat_user_batchget(wx: Provider, missing: str, code: int) -> None:
    body = {"user_list": [{"openid": "oA", "lang": "zh_CN"}]}
    assert wx.wechat("user/info/batchget", body)["user_info_list"][0]["subscribe"] == 1
    assert wx.wechat("user/info/batchget", without(body, missing))["errcode"] == code


# ---------------------------------------------------------------- WeCom

GETTOKEN = {"corpid": CONFIG.wecom_corp_id, "corpsecret": CONFIG.wecom_secret}


@pytest.mark.parametrize(("missing", "code"), [("corpid", 41002), ("corpsecret", 41004)])
def test_wecom_gettoken(http: httpx.Client, missing: str, code: int) -> None:
    assert "access_token" in http.get("/cgi-bin/gettoken", params=GETTOKEN).json()
    query = {k: v for k, v in GETTOKEN.items() if k != missing}
    assert http.get("/cgi-bin/gettoken", params=query).json()["errcode"] == code


TASK = {"chat_type": "single", "external_userid": ["wm1", "wm2"], "sender": "staff",
        "text": {"content": "进群领券"},
        "attachments": [{"msgtype": "link", "link": {"title": "校园优惠群",
                                                     "url": "https://m.example.com/j"}}]}
WECOM_CASES: list[tuple[str, Callable[[Provider], dict[str, Any]], str, int]] = [
    ("externalcontact/add_msg_template", lambda p: TASK, "external_userid", 40058),
    ("externalcontact/add_msg_template", lambda p: TASK, "attachments.0.link.title", 40058),
    ("externalcontact/add_msg_template", lambda p: TASK, "attachments.0.link.url", 40058),
    ("externalcontact/add_msg_template", lambda p: TASK, "attachments.0.msgtype", 40058),
    ("externalcontact/add_msg_template",
     lambda p: {k: v for k, v in TASK.items() if k != "attachments"}, "text", 44004),
    ("externalcontact/get_groupmsg_send_result",
     lambda p: {"msgid": p.ids["msgid"], "userid": "staff"}, "msgid", 40058),
    ("externalcontact/get_groupmsg_send_result",
     lambda p: {"msgid": p.ids["msgid"], "userid": "staff"}, "userid", 40058),
    ("externalcontact/get_groupmsg_list_v2",
     lambda p: {"chat_type": "single", "start_time": 0, "end_time": 2**31}, "chat_type", 40058),
    ("externalcontact/get_groupmsg_list_v2",
     lambda p: {"chat_type": "single", "start_time": 0, "end_time": 2**31}, "start_time", 40058),
    ("externalcontact/get_groupmsg_list_v2",
     lambda p: {"chat_type": "single", "start_time": 0, "end_time": 2**31}, "end_time", 40058),
    ("externalcontact/cancel_groupmsg_send", lambda p: {"msgid": p.ids["msgid"]}, "msgid", 40058),
    ("externalcontact/groupchat/add_join_way",
     lambda p: {"scene": 2, "chat_id_list": ["wrChat"]}, "scene", 40058),
    ("externalcontact/groupchat/add_join_way",
     lambda p: {"scene": 2, "chat_id_list": ["wrChat"]}, "chat_id_list", 40058),
    ("externalcontact/groupchat/get_join_way",
     lambda p: {"config_id": p.ids["config_id"]}, "config_id", 40058),
    ("externalcontact/groupchat/get", lambda p: {"chat_id": "wrChat"}, "chat_id", 40058),
]


@pytest.mark.parametrize(
    ("path", "body", "missing", "code"), WECOM_CASES,
    ids=[f"{c[0].rsplit('/', 1)[-1]}-{c[2]}" for c in WECOM_CASES],
)
def test_wecom_calls(
    wc: Provider, path: str, body: Callable[[Provider], dict[str, Any]], missing: str, code: int
) -> None:
    complete = body(wc)
    assert wc.wechat(path, complete)["errcode"] == 0
    assert wc.wechat(path, without(complete, missing))["errcode"] == code


# ---------------------------------------------------------------- Twilio

MESSAGE = {"To": "+8613800138000", "From": "+15005550006",
           "Body": "【校园外卖】好久不见 拒收请回复R",
           "StatusCallback": "https://recall.example.com/v1/callbacks/twilio",
           "ValidityPeriod": "3600"}


@pytest.mark.parametrize(("missing", "code"), [("To", 21604), ("From", 21603), ("Body", 21602)])
def test_twilio_messages_create(http: httpx.Client, missing: str, code: int) -> None:
    auth = (CONFIG.twilio_account_sid, CONFIG.twilio_auth_token)
    assert http.post(TWILIO_MESSAGES, data=MESSAGE, auth=auth).status_code == 201
    form = {k: v for k, v in MESSAGE.items() if k != missing}
    refused = http.post(TWILIO_MESSAGES, data=form, auth=auth)
    assert (refused.status_code, refused.json()["code"]) == (400, code)
    unsigned = http.post(TWILIO_MESSAGES, data=MESSAGE)  # no HTTP Basic auth at all
    assert (unsigned.status_code, unsigned.json()["code"]) == (401, 20003)
