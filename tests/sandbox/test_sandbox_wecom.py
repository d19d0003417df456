"""WeCom rules, driven through wechatpy's enterprise client over HTTP on loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_helpers import CONFIG, Receiver, SandboxWeComClient
from wechatpy.enterprise.crypto import WeChatCrypto as WeComCrypto
from wechatpy.exceptions import WeChatClientException
from wechatpy.utils import check_signature

from orchestrator.sandbox.server import SandboxHandle
from orchestrator.sandbox.state import SandboxState

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
LINK = {"msgtype": "link", "link": {"title": "Join us", "url": "https://r.example/s/j1"}}


def task(external_userids: list[str], sender: str = "staff-zhang") -> dict[str, Any]:
    return {
        "chat_type": "single",
        "external_userid": external_userids,
        "sender": sender,
        "text": {"content": "好久不见，进群领券"},
        "attachments": [LINK],
    }


def errcode_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(WeChatClientException) as caught:
        call()
    return caught.value.errcode


def send_results(wecom: SandboxWeComClient, msgid: str, userid: str) -> dict[str, int]:
    result = wecom.post(
        "externalcontact/get_groupmsg_send_result", data={"msgid": msgid, "userid": userid}
    )
    return {row["external_userid"]: row["status"] for row in result["send_list"]}


def test_token_checks_corp_and_secret(sandbox: SandboxHandle) -> None:
    url = f"{sandbox.base_url}/cgi-bin/gettoken"
    good = {"corpid": CONFIG.wecom_corp_id, "corpsecret": CONFIG.wecom_secret}
    first = httpx.get(url, params=good).json()
    assert first["errcode"] == 0 and first["expires_in"] == 7200
    assert httpx.get(url, params=good).json()["access_token"] == first["access_token"]
    assert httpx.get(url, params={**good, "corpsecret": "wrong"}).json()["errcode"] == 40001
    assert httpx.get(url, params={**good, "corpid": "ww-other"}).json()["errcode"] == 40013


def test_unknown_token_is_40014(sandbox: SandboxHandle) -> None:
    client = SandboxWeComClient(
        sandbox.base_url,
        CONFIG.wecom_corp_id,
        CONFIG.wecom_secret,
        access_token="forged",
        auto_retry=False,
    )
    assert errcode_of(lambda: client.external_contact.add_msg_template(task(["wm1"]))) == 40014


def test_task_waits_for_staff_then_reports_1_2_3(
    wecom: SandboxWeComClient, control: httpx.Client
) -> None:
    control.post("/_sandbox/clock", json={"now": "2024-05-01T02:00:00Z"})
    control.post("/_sandbox/config", json={"wecom_customer_limit": "day"})
    control.post(
        "/_sandbox/followers", json={"wecom": {"wmStranger": "not_friend", "wmGhost": "unknown"}}
    )
    first = wecom.external_contact.add_msg_template(task(["wmA", "wmStranger", "wmGhost"]))
    assert first["errcode"] == 0 and first["fail_list"] == ["wmGhost"]
    assert send_results(wecom, first["msgid"], "staff-zhang") == {"wmA": 0, "wmStranger": 0}

    confirmed = control.post(
        "/_sandbox/wecom/confirm", json={"msgid": first["msgid"], "userid": "staff-zhang"}
    ).json()
    assert (confirmed["sent"], confirmed["not_friend"]) == (1, 1)
    assert send_results(wecom, first["msgid"], "staff-zhang") == {"wmA": 1, "wmStranger": 2}

    second = wecom.external_contact.add_msg_template(task(["wmA", "wmB"]))
    control.post("/_sandbox/wecom/confirm", json={"msgid": second["msgid"]})
    assert send_results(wecom, second["msgid"], "staff-zhang") == {"wmA": 3, "wmB": 1}

    control.post("/_sandbox/clock", json={"now": "2024-05-01T16:00:00Z"})  # May 2 in Shanghai
    third = wecom.external_contact.add_msg_template(task(["wmA"]))
    control.post("/_sandbox/wecom/confirm", json={"msgid": third["msgid"]})
    assert send_results(wecom, third["msgid"], "staff-zhang") == {"wmA": 1}


@pytest.mark.parametrize(
    ("setting", "allowed", "period_end"),
    [
        ("month", 28, "2026-02-28T15:59:59Z"),  # February 2026 has 28 days
        ("week", 7, "2026-02-22T15:59:59Z"),  # Mon 16 Feb .. Sun 22 Feb, in Shanghai
        ("day", 1, "2026-02-16T15:59:59Z"),
    ],
)
def test_a_customer_gets_as_many_group_messages_as_the_admin_allows(
    wecom: SandboxWeComClient, control: httpx.Client, setting: str, allowed: int, period_end: str
) -> None:
    control.post("/_sandbox/config", json={"wecom_customer_limit": setting})
    control.post("/_sandbox/clock", json={"now": "2026-02-16T01:00:00Z"})  # Monday in Shanghai

    def confirmed_status() -> int:
        created = wecom.external_contact.add_msg_template(task(["wmA"]))
        control.post("/_sandbox/wecom/confirm", json={"msgid": created["msgid"]})
        return send_results(wecom, created["msgid"], "staff-zhang")["wmA"]

    assert [confirmed_status() for _ in range(allowed)] == [1] * allowed
    control.post("/_sandbox/clock", json={"now": period_end})
    assert confirmed_status() == 3  # over the limit until the period ends
    control.post("/_sandbox/clock", json={"now": period_end.replace("15:59:59", "16:00:00")})
    assert confirmed_status() == 1


def test_send_result_rows_carry_send_time_and_page_by_cursor(
    wecom: SandboxWeComClient, control: httpx.Client
) -> None:
    control.post("/_sandbox/clock", json={"now": "2024-05-01T02:00:00Z"})
    created = wecom.external_contact.add_msg_template(task(["wm1", "wm2", "wm3"]))
    control.post("/_sandbox/wecom/confirm", json={"msgid": created["msgid"]})
    page = wecom.post(
        "externalcontact/get_groupmsg_send_result",
        data={"msgid": created["msgid"], "userid": "staff-zhang", "limit": 2},
    )
    assert [r["external_userid"] for r in page["send_list"]] == ["wm1", "wm2"]
    assert page["send_list"][0]["send_time"] == 1714528800 and page["next_cursor"]
    rest = wecom.post(
        "externalcontact/get_groupmsg_send_result",
        data={"msgid": created["msgid"], "userid": "staff-zhang", "cursor": page["next_cursor"]},
    )
    assert [r["external_userid"] for r in rest["send_list"]] == ["wm3"]
    assert rest["next_cursor"] == ""


def test_auto_confirm_and_wechatpy_result_api(
    wecom: SandboxWeComClient, control: httpx.Client
) -> None:
    control.post("/_sandbox/config", json={"wecom_auto_confirm": True})
    created = wecom.external_contact.add_msg_template(task(["wm1"]))
    result = wecom.external_contact.get_group_msg_result(created["msgid"])
    assert result["check_status"] == 1
    assert [(r["external_userid"], r["status"]) for r in result["detail_list"]] == [("wm1", 1)]


def test_reconciliation_apis_and_cancel(wecom: SandboxWeComClient, control: httpx.Client) -> None:
    control.post("/_sandbox/clock", json={"now": "2024-05-01T02:00:00Z"})
    kept = wecom.external_contact.add_msg_template(task(["wm1"]))
    dropped = wecom.external_contact.add_msg_template(task(["wm2"], sender="staff-li"))
    wecom.post("externalcontact/cancel_groupmsg_send", data={"msgid": dropped["msgid"]})
    control.post("/_sandbox/wecom/confirm", json={"msgid": dropped["msgid"]})
    assert send_results(wecom, dropped["msgid"], "staff-li") == {"wm2": 0}

    listed = wecom.post(
        "externalcontact/get_groupmsg_list_v2",
        data={
            "chat_type": "single",
            "start_time": 1714500000,
            "end_time": 1714600000,
            "creator": "staff-zhang",
        },
    )
    assert [m["msgid"] for m in listed["group_msg_list"]] == [kept["msgid"]]
    pending = wecom.post("externalcontact/get_groupmsg_task", data={"msgid": kept["msgid"]})
    assert pending["task_list"] == [{"userid": "staff-zhang", "status": 0, "send_time": 0}]


def test_task_limits_and_content(wecom: SandboxWeComClient) -> None:
    too_many = [f"wm{i}" for i in range(10_001)]
    assert errcode_of(lambda: wecom.external_contact.add_msg_template(task(too_many))) == 40058
    empty = {"chat_type": "single", "external_userid": ["wm1"], "sender": "s"}
    assert errcode_of(lambda: wecom.external_contact.add_msg_template(empty)) == 44004
    bad_link = {**empty, "attachments": [{"msgtype": "link", "link": {"title": "x"}}]}
    assert errcode_of(lambda: wecom.external_contact.add_msg_template(bad_link)) == 40058
    mini = {
        **empty,
        "attachments": [
            {
                "msgtype": "miniprogram",
                "miniprogram": {
                    "title": "Shop",
                    "pic_media_id": "m",
                    "appid": "wxapp",
                    "page": "/p?s=1",
                },
            }
        ],
    }
    assert wecom.external_contact.add_msg_template(mini)["errcode"] == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"text": {"content": "字" * 1334}}, "text.content exceed max length 4000"),
        ({"attachments": [{"msgtype": "link", "link": {"title": "群" * 43, "url": "https://r.e/j"}}]},
         "attachments.link.title exceed max length 128"),
        ({"attachments": [{"msgtype": "link", "link": {"title": "t", "url": "https://r.e/j",
                                                        "desc": "d" * 513}}]},
         "attachments.link.desc exceed max length 512"),
        ({"attachments": [{"msgtype": "link", "link": {"title": "t",
                                                        "url": "https://r.e/" + "j" * 2040}}]},
         "attachments.link.url exceed max length 2048"),
    ],
    ids=["text-4000-bytes", "title-128-bytes", "desc-512-bytes", "url-2048-bytes"],
)
def test_text_and_link_card_over_wecoms_byte_limits_are_40058(
    wecom: SandboxWeComClient, content: dict[str, Any], problem: str
) -> None:
    body = {"chat_type": "single", "external_userid": ["wm1"], "sender": "s", **content}
    with pytest.raises(WeChatClientException) as caught:
        wecom.external_contact.add_msg_template(body)
    assert caught.value.errcode == 40058 and problem in caught.value.errmsg
    fits = {"chat_type": "single", "external_userid": ["wm1"], "sender": "s",
            "text": {"content": "字" * 1333},
            "attachments": [{"msgtype": "link", "link": {"title": "群" * 42, "url": "https://r"}}]}
    assert wecom.external_contact.add_msg_template(fits)["errcode"] == 0


def test_join_way_state_shows_in_groupchat_and_change_push(
    wecom: SandboxWeComClient, control: httpx.Client, receiver: Receiver, state: SandboxState
) -> None:
    control.post("/_sandbox/config", json={"wecom_callback_url": receiver.url("/wecom")})
    way = wecom.post(
        "externalcontact/groupchat/add_join_way",
        data={"scene": 2, "chat_id_list": ["wrChat1"], "state": "t:12345", "remark": "recall"},
    )
    got = wecom.post(
        "externalcontact/groupchat/get_join_way", data={"config_id": way["config_id"]}
    )["join_way"]
    assert (got["state"], got["chat_id_list"], got["scene"]) == ("t:12345", ["wrChat1"], 2)
    assert got["qr_code"].startswith("https://")

    joined = control.post(
        "/_sandbox/wecom/join", json={"config_id": way["config_id"], "external_userid": "wmA"}
    ).json()
    assert joined == {"chat_id": "wrChat1", "joined": True, "state": "t:12345"}

    chat = wecom.external_contact_group_chat.get("wrChat1")["group_chat"]
    [member] = chat["member_list"]
    assert (member["userid"], member["state"], member["join_scene"], member["type"]) == (
        "wmA",
        "t:12345",
        3,
        2,
    )

    control.post("/_sandbox/flush")
    [push] = receiver.requests
    check_signature(
        CONFIG.wecom_token, push.query["signature"], push.query["timestamp"], push.query["nonce"]
    )
    assert b"change_external_chat" in push.body and b"wrChat1" in push.body
    assert state.records("wecom")[-1]["path"].endswith("groupchat/get")


def test_change_push_is_encrypted_like_wecom_with_an_aes_key(
    wecom: SandboxWeComClient, control: httpx.Client, receiver: Receiver
) -> None:
    control.post(
        "/_sandbox/config",
        json={"wecom_callback_url": receiver.url("/wecom"), "wecom_aes_key": AES_KEY},
    )
    control.post("/_sandbox/wecom/join", json={"chat_id": "wrChat9", "external_userid": "wmB"})
    control.post("/_sandbox/flush")

    [push] = receiver.requests
    crypto = WeComCrypto(CONFIG.wecom_token, AES_KEY, CONFIG.wecom_corp_id)
    plain = crypto.decrypt_message(
        push.body, push.query["msg_signature"], push.query["timestamp"], push.query["nonce"]
    )
    assert "<ChatId><![CDATA[wrChat9]]></ChatId>" in plain
    assert "<Item><![CDATA[wmB]]></Item>" in plain


def test_join_way_validation_and_unknown_chat(
    wecom: SandboxWeComClient, control: httpx.Client
) -> None:
    def add(**body: Any) -> Any:
        return lambda: wecom.post("externalcontact/groupchat/add_join_way", data=body)

    assert errcode_of(add(scene=3, chat_id_list=["c"])) == 40058
    assert errcode_of(add(scene=2, chat_id_list=[f"c{i}" for i in range(6)])) == 40058
    assert errcode_of(add(scene=2, chat_id_list=["c"], state="x" * 31)) == 40058
    assert errcode_of(lambda: wecom.external_contact_group_chat.get("nope")) == 40050
    assert (
        control.post(
            "/_sandbox/wecom/join", json={"config_id": "nope", "external_userid": "w"}
        ).status_code
        == 404
    )
