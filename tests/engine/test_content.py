"""One person's content never reaches another: a mass send and a WeCom task carry one text
for all their recipients, so recipients are grouped by their rendered content, and content of
a person's own goes by a call of its own. Judged from the sandbox's own record of what each
recipient was sent, never from the engine's view of itself."""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestrator.channels import WeChatArticleChannel, WeComInviteChannel
from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import in_flight, run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.sandbox.faults import FaultSpec
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.tables import LINKS, SEND_BATCHES, TOUCHES
from orchestrator.store.tables import USERS as PEOPLE
from tests.engine.conftest import T0
from tests.support import jpeg

USERS = 12
ARTICLE, CHANNEL = "wechat_article", "wecom_group_invite"


def journey(article: str, invite: str) -> str:
    return f"""\
id: content
name: 内容
entry:
  segment: "True"
reentry: 30d
goal: {{ event: order_placed, within: 7d }}
steps:
  - id: article
    send: wechat_article
    template: c/article.j2
    cover: c/cover.jpg
{article}  - id: invite
    send: wecom_group_invite
    template: c/invite.j2
    group: campus-deals
{invite}"""


PERSONAL = journey('    link: "https://m.example.com/a?u={{ user_id }}"\n',
                   '    link: "https://m.example.com/i?u={{ user_id }}"\n')
PERSONAL_TEMPLATES: dict[str, str | bytes] = {
    "c/article.j2": '{% set title = "给你的专属推荐" %}<p>{{ user.nickname }}，'
                    '<a href="{{ link }}">点这里领券</a></p>',
    "c/invite.j2": "{{ user.nickname }}，进群领券 {{ link }}",
    "c/cover.jpg": jpeg(),
}


def send_everything(rt: Runtime) -> None:
    """Both steps fall due and leave, each after its gathering window."""
    assert isinstance(rt.clock, ManualClock)
    for _ in range(2):
        run_until_idle(rt)
        rt.clock.advance(rt.settings.gather_window_s)
        run_until_idle(rt)


def start(make_runtime: Callable[..., Runtime], journey_text: str,
          templates: dict[str, str | bytes]) -> tuple[Runtime, list[str]]:
    rt = make_runtime(journeys={"content": journey_text}, templates=templates, users=USERS)
    ids = [f"u{i:04d}" for i in range(USERS)]
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("content"), ids, now=T0)
    send_everything(rt)
    return rt, ids


def received(sandbox: SandboxHandle) -> dict[str, list[str]]:
    """What each recipient (OpenID or external_userid) was sent, by the sandbox's record:
    accepted mass sends (their draft's article), template messages and WeCom tasks."""
    got: dict[str, list[str]] = defaultdict(list)
    wechat = [r for r in sandbox.state.records("wechat") if r["outcome"] == "accepted"]
    drafts = {r["ref"]: r["body"]["articles"][0] for r in wechat if r["path"].endswith("draft/add")}
    for r in wechat:
        if r["path"].endswith("message/mass/send"):
            article = drafts[r["body"]["mpnews"]["media_id"]]
            text = f"{article['content']} {article['content_source_url']}"
            for openid in set(r["recipients"]) - set(r["excluded"]):
                got[openid].append(text)
        elif r["path"].endswith("message/template/send"):
            body = r["body"]
            got[body["touser"]].append(f"{json.dumps(body['data'], ensure_ascii=False)} "
                                       f"{body.get('url', '')}")
    for r in sandbox.state.records("wecom"):
        if r["outcome"] == "accepted" and r["path"].endswith("add_msg_template"):
            text = f"{r['body']['text']['content']} {json.dumps(r['body']['attachments'])}"
            for external in set(r["body"]["external_userid"]) - set(r["excluded"]):
                got[external].append(text)
    return got


def owner(recipient: str) -> str:
    """The user an OpenID (``o`` + user id) or external_userid (``wm`` + user id) belongs to."""
    return recipient.removeprefix("wm") if recipient.startswith("wm") else recipient[1:]


def links_in(texts: list[str], rt: Runtime) -> set[str]:
    """The users whose links (short codes, targets' ``u=``) and nicknames appear in ``texts``."""
    codes = {c for t in texts for c in re.findall(r"http://recall\.test/s/([\w-]+)", t)}
    with rt.db.connect() as conn:
        owners = set(conn.execute(
            select(TOUCHES.c.user_id).join(LINKS, LINKS.c.touch_id == TOUCHES.c.id)
            .where(LINKS.c.code.in_(codes))).scalars()) if codes else set()
    if len(owners) < len(codes):
        owners.add("<a code of no touch>")
    owners |= {u for t in texts for u in re.findall(r"[?&]u=(\w+)", t)}
    owners |= {f"u{int(n):04d}" for t in texts for n in re.findall(r"同学(\d+)", t)}
    return owners


def test_every_recipient_gets_only_their_own_link(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, ids = start(make_runtime, PERSONAL, PERSONAL_TEMPLATES)
    got = received(sandbox)
    others = {r: links_in(texts, rt) - {owner(r)} for r, texts in got.items()}
    assert {r: o for r, o in others.items() if o} == {}, "someone got another person's content"
    for prefix in ("o", "wm"):  # each channel reached everyone, with their own link
        reached = {owner(r) for r, texts in got.items()
                   if r.startswith(prefix) and links_in(texts, rt)}
        assert reached == set(ids), prefix
    with rt.db.connect() as conn:
        statuses = conn.execute(select(TOUCHES.c.status)).scalars().all()
    assert sorted(statuses) == ["sent"] * (2 * USERS)


def test_personal_content_goes_by_a_call_of_its_own(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, ids = start(make_runtime, PERSONAL, PERSONAL_TEMPLATES)
    wechat = sandbox.state.records("wechat")
    assert [r for r in wechat if r["path"].endswith("message/mass/send")] == []
    templates = [r for r in wechat if r["path"].endswith("message/template/send")]
    assert sorted(r["body"]["touser"] for r in templates) == sorted(f"o{u}" for u in ids)
    tasks = [r for r in sandbox.state.records("wecom") if r["path"].endswith("add_msg_template")]
    assert sorted(tuple(r["body"]["external_userid"]) for r in tasks) == [
        (f"wm{u}",) for u in sorted(ids)]  # one task per customer
    with rt.db.connect() as conn:
        modes = {b["payload"]["options"].get("mode") for b in
                 conn.execute(select(SEND_BATCHES)).mappings()}
    assert modes == {"per_recipient"}


PARITY_TEMPLATES: dict[str, str | bytes] = {
    "c/article.j2": '{% set title = "本周推荐" %}<p>'
                    "{{ '单号同学' if user.nickname[-1] in '13579' else '双号同学' }}"
                    "，新店上线</p>",
    "c/invite.j2": "{{ '单号' if user.nickname[-1] in '13579' else '双号' }}同学，进群领券",
    "c/cover.jpg": jpeg(),
}


def test_recipients_are_grouped_by_their_rendered_content(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt, ids = start(make_runtime, journey("", ""), PARITY_TEMPLATES)
    odd = {u for u in ids if int(u[1:]) % 2}
    mass = [r for r in sandbox.state.records("wechat") if r["path"].endswith("message/mass/send")]
    tasks = [r for r in sandbox.state.records("wecom") if r["path"].endswith("add_msg_template")]
    assert (len(mass), len(tasks)) == (2, 2)  # one call per distinct content, nobody alone
    for recipient, texts in received(sandbox).items():
        expected = "单号" if owner(recipient) in odd else "双号"
        assert len(texts) == 1 and expected in texts[0], (recipient, texts)
    with rt.db.connect() as conn:
        payloads = [b["payload"] for b in conn.execute(select(SEND_BATCHES)).mappings()]
    assert len(payloads) == 4
    for payload in payloads:  # the shared text is stored once, not per recipient
        assert set(payload["content"]) == {"text", "title", "link"}
        assert all("text" not in m for m in payload["messages"])
        assert "mode" not in payload["options"]


def test_a_fixed_landing_link_is_one_mass_send_that_links_everyone_to_it(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    landing = "https://m.example.com/welcome"
    templates: dict[str, str | bytes] = {
        "c/article.j2": '{% set title = "本周推荐" %}<p><a href="{{ link }}">新店上线</a></p>',
        "c/invite.j2": "进群领券 {{ link }}",
        "c/cover.jpg": jpeg(),
    }
    rt, ids = start(make_runtime, journey(f"    landing: {landing}\n",
                                          f"    landing: {landing}\n"), templates)
    (mass,) = [r for r in sandbox.state.records("wechat")
               if r["path"].endswith("message/mass/send")]
    assert sorted(mass["body"]["touser"]) == sorted(f"o{u}" for u in ids)
    got = received(sandbox)
    assert all(len(texts) == 1 and landing in texts[0] for texts in got.values())
    (draft,) = [r for r in sandbox.state.records("wechat") if r["path"].endswith("draft/add")]
    assert draft["body"]["articles"][0]["content_source_url"] == landing  # "read more"
    assert f'href="{landing}"' in draft["body"]["articles"][0]["content"]


def test_any_content_key_in_a_frozen_batch_reaches_the_provider_as_frozen(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    """A batch frozen before content grouping (every message carrying its own text) is still
    read and sent; one whose messages differ is refused, never sent as the first's text."""
    from orchestrator.engine.delivery import request_of

    rt, _ = start(make_runtime, journey("", ""), PARITY_TEMPLATES)
    with rt.db.connect() as conn:
        batch = conn.execute(select(SEND_BATCHES)).mappings().first()
    assert batch is not None
    shared = batch["payload"]["content"]
    request = request_of(batch)
    assert {(m.text, m.title, m.link) for m in request.messages} == {
        (shared["text"], shared["title"], shared["link"])}
    old_style: dict[str, Any] = {**batch, "payload": {
        **{k: v for k, v in batch["payload"].items() if k != "content"},
        "messages": [{**m, **shared} for m in batch["payload"]["messages"]]}}
    assert request_of(old_style) == request  # type: ignore[arg-type]


# ------------------------------------------- a provider call lost on the way, then looked up

INVITE_ONLY = """\
id: content
name: 内容
entry:
  segment: "True"
reentry: 30d
goal: { event: order_placed, within: 7d }
steps:
  - id: invite
    send: wecom_group_invite
    template: c/invite.j2
    group: campus-deals
"""

SHORT_TIMEOUT = (2.0, 1.0)  # the adapters give up on a held answer after a second


def settle_in_doubt(rt: Runtime, sandbox: SandboxHandle, *, timeout_s: float = 60.0) -> None:
    """Tick past the gathering window, then until no batch is open: batches in doubt are
    looked up on later attempts (due in real time, ``retry_base_s``); bounded in real time.
    The sandbox's business clock follows the runtime's."""
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    run_until_idle(rt)
    clock.advance(rt.settings.gather_window_s)
    sandbox.state.set_clock(clock.now())
    run_until_idle(rt)
    deadline = time.monotonic() + timeout_s
    while in_flight(rt):
        assert time.monotonic() < deadline, "batches still open"
        run_until_idle(rt)
        time.sleep(0.05)  # the beat's period, scaled down; not a synchronisation point


def arm(sandbox: SandboxHandle, kind: str, provider: str, path: str) -> None:
    sandbox.state.add_fault(FaultSpec(provider=provider, path_contains=path,  # type: ignore[arg-type]
                                      kind=kind))  # type: ignore[arg-type]


def tasks_by_customer(sandbox: SandboxHandle) -> dict[str, list[str]]:
    """The msgid of every task WeCom accepted, by customer: the sandbox's own record."""
    got: dict[str, list[str]] = defaultdict(list)
    for r in sandbox.state.records("wecom"):
        if r["outcome"] == "accepted" and r["path"].endswith("add_msg_template"):
            for external in set(r["body"]["external_userid"]) - set(r["excluded"]):
                got[external].append(r["ref"])
    return got


@pytest.mark.parametrize("personal", [False, True], ids=["shared-by-sender", "per-customer"])
def test_a_wecom_task_lost_on_the_way_is_made_once_and_none_is_called_sent_without_one(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, personal: bool
) -> None:
    """The first task's call never reaches WeCom (the worker gave up, or died, waiting); the
    second is made but its answer is lost. Both are looked up: the first is not there (even
    though the second, of the same batch, is) and is made then; the second is found."""
    link = '    link: "https://m.example.com/i?u={{ user_id }}"\n' if personal else ""
    text = "进群领券 {{ link }}" if personal else "进群领券"
    templates: dict[str, str | bytes] = {"c/invite.j2": text}
    rt = make_runtime(journeys={"content": INVITE_ONLY + link}, templates=templates,
                      users=6, retry_base_s=0.05)
    rt._channels[CHANNEL] = WeComInviteChannel(rt.settings, rt.redis, timeout=SHORT_TIMEOUT)
    ids = [f"u{i:04d}" for i in range(6)]
    with rt.db.begin() as conn:  # two staff members: a shared batch makes a task for each
        conn.execute(update(PEOPLE).where(PEOPLE.c.user_id.in_(ids[1::2]))
                     .values(wecom_sender="staff2"))
        enroll(conn, rt.book.latest("content"), ids, now=T0)
    arm(sandbox, "stall", "wecom", "add_msg_template")  # never reaches WeCom
    arm(sandbox, "drop", "wecom", "add_msg_template")  # made, its answer lost
    settle_in_doubt(rt, sandbox)

    calls = [r["outcome"] for r in sandbox.state.records("wecom")
             if r["path"].endswith("add_msg_template")]
    assert calls[:2] == ["fault:stall", "accepted"]  # the faults hit as meant
    assert len(calls_to(sandbox, "get_groupmsg_list_v2")) >= 1  # looked up, not resent
    got = tasks_by_customer(sandbox)
    with rt.db.connect() as conn:
        touches = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.status,
                                      TOUCHES.c.provider_message_id)).all()
    said_sent = {f"wm{t.user_id}": t.provider_message_id for t in touches
                 if t.status in ("sent", "delivered")}
    # Every touch the store calls sent is a task WeCom has for that customer, and the one
    # task the store names; nobody has two; everybody has theirs.
    assert {c: [m] for c, m in said_sent.items()} == {c: got.get(c, []) for c in said_sent}
    assert {c: len(m) for c, m in got.items()} == {f"wm{u}": 1 for u in ids}
    assert sorted(t.status for t in touches) == ["sent"] * len(ids)


def calls_to(sandbox: SandboxHandle, path: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.records("wecom") if r["path"].endswith(path)]


def test_a_template_message_in_doubt_is_never_sent_twice_nor_called_sent_without_one(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    """Template messages (an article of each recipient's own) have no lookup: one whose call
    never arrived and one whose answer was lost stay in doubt, are never repeated, and end
    ``unknown_outcome``; the others are sent once each."""
    article = journey('    link: "https://m.example.com/a?u={{ user_id }}"\n', "")
    steps = article[: article.index("  - id: invite")]
    rt = make_runtime(journeys={"content": steps}, templates=PERSONAL_TEMPLATES, users=4,
                      retry_base_s=0.05, retry_cap_s=0.1, max_attempts=2)
    rt._channels[ARTICLE] = WeChatArticleChannel(rt.settings, rt.redis, timeout=SHORT_TIMEOUT)
    ids = [f"u{i:04d}" for i in range(4)]
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("content"), ids, now=T0)
    arm(sandbox, "stall", "wechat", "message/template/send")
    arm(sandbox, "drop", "wechat", "message/template/send")
    settle_in_doubt(rt, sandbox)

    sends = [r for r in sandbox.state.records("wechat")
             if r["path"].endswith("message/template/send")]
    accepted = Counter(r["body"]["touser"] for r in sends if r["outcome"] == "accepted")
    assert sorted(r["outcome"] for r in sends) == ["accepted"] * 3 + ["fault:stall"]
    assert set(accepted.values()) == {1}  # nobody twice
    with rt.db.connect() as conn:
        touches = conn.execute(select(TOUCHES.c.user_id, TOUCHES.c.status,
                                      TOUCHES.c.reason)).all()
    sent = {f"o{t.user_id}" for t in touches if t.status in ("sent", "delivered")}
    assert sent <= set(accepted) and len(sent) == 2  # none called sent without its message
    assert sorted((t.status, t.reason) for t in touches if f"o{t.user_id}" not in sent) == [
        ("failed", "unknown_outcome")] * 2
