"""wecom_group_invite through wechatpy.enterprise over HTTP against the sandbox."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from channel_helpers import calls, fault, message, messages, request

from orchestrator.channels import WeComInviteChannel
from orchestrator.channels.wecom_invite import WecomTask, batch_ref, join_state
from orchestrator.errors import ChannelConfig, ChannelRetryable, ChannelUnknown
from orchestrator.sandbox.server import SandboxHandle

CHANNEL = "wecom_group_invite"
GROUP = {"chat_id": "wrOgQhDgAAcwMTB7YmDkbeBsgT_AAAA", "link_title": "进群领券"}
TASK = "/externalcontact/add_msg_template"


def tasks(sandbox: SandboxHandle, outcome: str | None = None) -> list[dict[str, Any]]:
    return calls(sandbox, "wecom", TASK, outcome)


def test_one_task_per_sender_with_text_and_the_join_link(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = (*messages(2, wecom_sender="staff-a"), *messages(2, start=2, wecom_sender="staff-b"))
    results = invite.send(request("w-senders", CHANNEL, batch, options=GROUP))
    sent = tasks(sandbox)
    assert sorted(t["body"]["sender"] for t in sent) == ["staff-a", "staff-b"]
    by_sender = {t["body"]["sender"]: t["body"] for t in sent}
    body = by_sender["staff-a"]
    assert body["chat_type"] == "single"
    assert body["external_userid"] == ["wm00000000", "wm00000001"]
    assert body["text"] == {"content": "<p>We miss you</p>"}
    (attachment,) = body["attachments"]
    link = attachment["link"]
    assert attachment["msgtype"] == "link" and link["title"] == "进群领券"
    assert link["picurl"].startswith("https://wework.qpic.cn/")
    assert parse_qs(urlsplit(link["url"]).query)["recall_ref"] == [batch_ref("w-senders")]
    # provider_message_id is the task msgid of each recipient's sender.
    assert {r.status for r in results} == {"sent"}
    assert results[0].provider_message_id == results[1].provider_message_id
    assert results[0].provider_message_id != results[2].provider_message_id


def test_the_link_card_defaults_are_chinese_and_the_step_card_wins(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    untitled = tuple(replace(m, title=None) for m in messages(2))
    chat = {"chat_id": GROUP["chat_id"]}
    invite.send(request("w-default", CHANNEL, untitled, options=chat))
    card = {**chat, "link_title": "加入「校园优惠群」", "link_desc": "每天中午限时红包",
            "link_picurl": "https://m.example.com/static/group.png"}
    invite.send(request("w-card", CHANNEL, messages(2, start=2), options=card))
    default, chosen = (t["body"]["attachments"][0]["link"] for t in tasks(sandbox))
    assert (default["title"], default["desc"]) == ("邀请你加入群聊", "点击卡片，扫码即可入群")
    assert default["picurl"].startswith("https://wework.qpic.cn/")  # the group's QR code
    assert (chosen["title"], chosen["desc"], chosen["picurl"]) == (
        "加入「校园优惠群」", "每天中午限时红包", "https://m.example.com/static/group.png")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"text": "字" * 1334}, r"the text is 4,002 bytes in UTF-8; WeCom takes at most 4,000"),
        ({"title": "群" * 43}, r"the card title is 129 bytes in UTF-8; WeCom takes at most 128"),
    ],
    ids=["text", "title"],
)
def test_text_and_card_over_wecoms_limits_are_refused_before_any_call(
    invite: WeComInviteChannel, sandbox: SandboxHandle, change: dict[str, str], problem: str
) -> None:
    batch = tuple(replace(m, **change) for m in messages(2))
    with pytest.raises(ChannelConfig, match=problem):
        invite.send(request("w-long", CHANNEL, batch, options={"chat_id": GROUP["chat_id"]}))
    assert sandbox.state.records("wecom") == []


def test_the_join_way_is_created_once_per_group_and_content_version(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    invite.send(request("w-1", CHANNEL, messages(2), options=GROUP))
    invite.send(request("w-2", CHANNEL, messages(2, start=2), options=GROUP))
    (added,) = calls(sandbox, "wecom", "/groupchat/add_join_way")
    assert added["body"] == {
        "scene": 2,
        "chat_id_list": [GROUP["chat_id"]],
        "state": join_state("winback", "step", "j1:v1:tpl:a"),
        "remark": "recall",
    }
    assert len(added["body"]["state"]) <= 30
    invite.send(request("w-3", CHANNEL, messages(2), options=GROUP, content_version="j1:v2"))
    assert len(calls(sandbox, "wecom", "/groupchat/add_join_way")) == 2


def test_the_recipients_the_task_refused_fail_as_not_friend(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    sandbox.state.set_followers({"wecom": {"wm00000001": "unknown"}})
    batch = (*messages(3), message(7, external_userid=None))
    results = invite.send(request("w-fail", CHANNEL, batch, options=GROUP))
    assert [(r.status, r.reason) for r in results] == [
        ("sent", None),
        ("failed", "not_friend"),
        ("sent", None),
        ("failed", "no_external_userid"),
    ]


def test_a_batch_without_a_group_is_a_config_error(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    with pytest.raises(ChannelConfig, match=r"names no group: set options.chat_id"):
        invite.send(request("w-nogroup", CHANNEL, messages(2)))
    assert sandbox.state.records("wecom") == []


def test_a_batch_over_max_batch_is_refused(invite: WeComInviteChannel) -> None:
    with pytest.raises(ChannelConfig, match=r"more than max_batch=10000"):
        invite.send(request("w-big", CHANNEL, messages(10_001), options=GROUP))


def test_the_same_batch_twice_is_one_task(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = request("w-twice", CHANNEL, messages(3), options=GROUP)
    assert invite.send(batch) == invite.send(batch)
    assert len(tasks(sandbox)) == 1


def test_poll_follows_the_staff_confirmation(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    sandbox.state.configure({"wecom_customer_limit": "day"})  # the admin's strictest rule
    sandbox.state.set_followers({"wecom": {"wm00000002": "not_friend"}})
    earlier = invite.send(request("w-earlier", CHANNEL, [message(1)], options=GROUP))
    sandbox.state.wecom_confirm(str(earlier[0].provider_message_id))  # wm1 got one today
    results = invite.send(request("w-poll", CHANNEL, messages(3), options=GROUP))
    task = WecomTask(str(results[0].provider_message_id), "staff-a")
    assert {d.status for d in invite.poll([task])} == {"waiting"}
    sandbox.state.wecom_confirm(task.msgid, "staff-a")
    deliveries = {d.external_userid: d for d in invite.poll([task])}
    assert deliveries["wm00000000"].status == "delivered"
    assert deliveries["wm00000000"].send_time is not None
    assert (deliveries["wm00000001"].status, deliveries["wm00000001"].reason) == (
        "failed",
        "wecom_customer_limit",
    )
    assert (deliveries["wm00000002"].status, deliveries["wm00000002"].reason) == (
        "failed",
        "not_friend",
    )


def test_joins_report_who_came_in_through_the_join_way(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = request("w-join", CHANNEL, messages(2), options=GROUP)
    invite.send(batch)
    way = invite.join_way(batch)
    sandbox.state.wecom_join("wm00000001", config_id=way.config_id)
    (joined,) = invite.joins(GROUP["chat_id"])
    assert joined.external_userid == "wm00000001"
    assert joined.state == join_state("winback", "step", "j1:v1:tpl:a")
    assert joined.join_time.tzinfo is UTC


def test_cancel_withdraws_an_unconfirmed_task(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    (result, _) = invite.send(request("w-cancel", CHANNEL, messages(2), options=GROUP))
    invite.cancel(WecomTask(str(result.provider_message_id), "staff-a"))
    (cancelled,) = calls(sandbox, "wecom", "/cancel_groupmsg_send")
    assert cancelled["body"] == {"msgid": result.provider_message_id}
    assert sandbox.state.wecom_confirm(str(result.provider_message_id))["cancelled"] is True


@pytest.mark.parametrize(
    ("kind", "message_part"),
    [("busy", r"-1 system_busy"), ("rate_limit", r"45009"), ("http_500", r"http_5xx")],
)
def test_transient_refusals_are_retryable_and_the_retry_creates_one_task(
    invite: WeComInviteChannel, sandbox: SandboxHandle, kind: str, message_part: str
) -> None:
    batch = request(f"w-{kind}", CHANNEL, messages(2), options=GROUP)
    invite.join_way(batch)
    fault(sandbox, kind, "wecom", TASK)
    with pytest.raises(ChannelRetryable, match=message_part):
        invite.send(batch)
    assert {r.status for r in invite.send(batch)} == {"sent"}
    assert [t["outcome"] for t in tasks(sandbox)] == [f"fault:{kind}", "accepted"]


@pytest.mark.short_timeout
@pytest.mark.parametrize("kind", ["drop", "timeout"])
def test_a_lost_answer_is_unknown_and_reconcile_finds_the_task_without_resending(
    invite: WeComInviteChannel, sandbox: SandboxHandle, kind: str
) -> None:
    batch = request(f"w-{kind}", CHANNEL, messages(3), options=GROUP, created_at=datetime.now(UTC))
    fault(sandbox, kind, "wecom", TASK)
    with pytest.raises(ChannelUnknown, match=r"reconcile, do not resend"):
        invite.send(batch)
    with pytest.raises(ChannelUnknown):  # a redelivered task does not create it again
        invite.send(batch)
    results = invite.reconcile(batch)
    (accepted,) = tasks(sandbox)
    assert accepted["outcome"] == "accepted"
    msgids = {r.provider_message_id for r in results}
    assert {r.status for r in results} == {"sent"} and len(msgids) == 1
    (listing,) = calls(sandbox, "wecom", "/get_groupmsg_list_v2")
    assert listing["body"]["creator"] == "staff-a"
    assert invite.send(batch) == results  # reconciled into the ledger


def test_reconcile_without_a_task_finds_the_touches_absent_and_a_send_may_follow(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    invite.send(request("w-other", CHANNEL, messages(2), options=GROUP))
    never = request("w-never", CHANNEL, messages(2), options=GROUP, created_at=datetime.now(UTC))
    invite._ledger.mark_pending("w-never", ["sender:staff-a"])  # a call that never arrived
    assert {(r.status, r.reason) for r in invite.reconcile(never)} == {("absent", "not_found")}
    assert len(tasks(sandbox)) == 1
    assert {r.status for r in invite.send(never)} == {"sent"}  # the pending mark is gone
    assert len(tasks(sandbox)) == 2


def test_one_sender_lost_leaves_only_its_touches_unknown(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = (*messages(2, wecom_sender="staff-a"), *messages(1, start=2, wecom_sender="staff-b"))
    req = request("w-half", CHANNEL, batch, options=GROUP)
    invite.join_way(req)
    fault(sandbox, "drop", "wecom", TASK)  # the first sender's call
    results = invite.send(req)
    assert [r.status for r in results] == ["unknown", "unknown", "sent"]


@pytest.mark.short_timeout
def test_a_senders_task_that_never_arrived_is_absent_though_another_senders_is_found(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    """Every sender's task of a shared batch carries the batch's reference: finding staff-b's
    task says nothing of staff-a's, whose call never reached WeCom. Both answers are lost,
    so reconcile looks both up."""
    batch = (*messages(2, wecom_sender="staff-a"), *messages(2, start=2, wecom_sender="staff-b"))
    req = request("w-stalled", CHANNEL, batch, options=GROUP, created_at=datetime.now(UTC))
    invite.join_way(req)
    fault(sandbox, "stall", "wecom", TASK)  # staff-a's call never reaches WeCom
    fault(sandbox, "drop", "wecom", TASK)  # staff-b's is made, its answer lost
    with pytest.raises(ChannelUnknown):
        invite.send(req)
    assert [(t["body"]["sender"], t["outcome"]) for t in tasks(sandbox)] == [
        ("staff-a", "fault:stall"), ("staff-b", "accepted")]
    (staff_b,) = tasks(sandbox, "accepted")
    results = invite.reconcile(req)
    assert [(r.status, r.reason, r.provider_message_id) for r in results] == [
        ("absent", "not_found", None), ("absent", "not_found", None),
        ("sent", None, staff_b["ref"]), ("sent", None, staff_b["ref"])]
    assert [r.status for r in invite.send(req)] == ["sent"] * 4  # staff-a's task, once
    accepted = tasks(sandbox, "accepted")
    assert [(t["body"]["sender"], t["body"]["external_userid"]) for t in accepted] == [
        ("staff-b", ["wm00000002", "wm00000003"]), ("staff-a", ["wm00000000", "wm00000001"])]


def test_a_task_beyond_the_tasks_reconcile_reads_is_in_doubt_never_absent(
    settings: Any, redis_client: Any, key_prefix: str, sandbox: SandboxHandle
) -> None:
    """staff-a has more tasks around the batch than reconcile reads (here one page of 100):
    the batch's task, made but not on that page, is not called absent, or it would be made
    again."""
    invite = WeComInviteChannel(settings, redis_client, key_prefix=key_prefix, list_pages=1)
    now = datetime.now(UTC)
    for i in range(100):  # the sender's other tasks, listed first
        invite.send(request(f"w-other-{i}", CHANNEL, messages(1, start=i), options=GROUP))
    batch = request("w-late", CHANNEL, messages(2, start=200), options=GROUP, created_at=now)
    fault(sandbox, "drop", "wecom", TASK)  # made; its answer lost
    with pytest.raises(ChannelUnknown):
        invite.send(batch)
    with pytest.raises(ChannelRetryable, match=r"more than 100 tasks around the batch"):
        invite.reconcile(batch)
    with pytest.raises(ChannelUnknown):  # still in doubt: not made a second time
        invite.send(batch)
    assert len(tasks(sandbox, "accepted")) == 101


def test_an_expired_token_is_refreshed_once_and_the_task_created_once(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    invite.send(request("w-before", CHANNEL, messages(2), options=GROUP))
    fault(sandbox, "token_expired", "wecom")
    assert {
        r.status for r in invite.send(request("w-after", CHANNEL, messages(2), options=GROUP))
    } == {"sent"}
    assert len(calls(sandbox, "wecom", "/cgi-bin/gettoken")) == 2
    assert [t["outcome"] for t in tasks(sandbox)] == ["accepted", "error:42001", "accepted"]


# ---------------------------------------------------------------- one text per task


def own_texts(n: int) -> tuple[Any, ...]:
    return tuple(replace(m, text=f"同学{m.touch_id}，进群领券 {m.link}") for m in messages(n))


PER_RECIPIENT = {**GROUP, "mode": "per_recipient"}


def test_a_shared_batch_whose_texts_differ_is_refused_before_any_call(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = replace(request("w-mixed", CHANNEL, messages(3), options=GROUP),
                    messages=own_texts(3))
    with pytest.raises(ChannelConfig, match=r"holds 3 different texts, but one call sends one "
                                            r"text to all its recipients"):
        invite.send(batch)
    assert sandbox.state.records("wecom") == []  # not even the join way


def test_each_customer_of_a_per_recipient_batch_gets_a_task_with_their_own_text(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = request("w-own", CHANNEL, own_texts(3), options=PER_RECIPIENT)
    results = invite.send(batch)
    assert invite.send(batch) == results  # a retry creates no task
    got = {tuple(t["body"]["external_userid"]): t["body"] for t in tasks(sandbox)}
    assert sorted(got) == [("wm00000000",), ("wm00000001",), ("wm00000002",)]
    for m in batch.messages:
        body = got[(m.recipient.external_userid,)]
        assert body["text"]["content"] == m.text and m.link in m.text
        ref = parse_qs(urlsplit(body["attachments"][0]["link"]["url"]).query)["recall_ref"]
        assert ref == [batch_ref(f"w-own:{m.touch_id}")]  # each task found on its own
    assert {r.status for r in results} == {"sent"}
    assert len({r.provider_message_id for r in results}) == 3


def test_reconcile_finds_each_per_recipient_task_in_one_listing(
    invite: WeComInviteChannel, sandbox: SandboxHandle
) -> None:
    batch = request("w-own-lost", CHANNEL, own_texts(3), options=PER_RECIPIENT,
                    created_at=datetime.now(UTC))
    invite.send(replace(batch, messages=batch.messages[:2]))  # two went out...
    invite._ledger.forget("w-own-lost", [f"sender:staff-a:touch:{i}" for i in (0, 1)])
    invite._ledger.mark_pending("w-own-lost", ["sender:staff-a:touch:2"])  # ...one never did
    results = invite.reconcile(batch)
    assert [r.status for r in results] == ["sent", "sent", "absent"]
    assert len(calls(sandbox, "wecom", "/get_groupmsg_list_v2")) == 1  # one scan per sender
    assert [r.status for r in invite.send(batch)] == ["sent"] * 3
    assert len(tasks(sandbox)) == 3  # the missing one only
