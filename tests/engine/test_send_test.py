"""recall send-test and test_recipients: every send step to a seed list, through the real
channels and the sandbox, uncapped, outside quiet hours, consent kept, never counted,
audit-logged. What the people got is read from the sandbox's own record."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.clock import ManualClock
from orchestrator.engine.enroll import enroll
from orchestrator.engine.runner import run_until_idle
from orchestrator.engine.runtime import Runtime
from orchestrator.engine.testsends import parse_recipients, send_test
from orchestrator.errors import InputError, NotFoundError
from orchestrator.policy.consent import record_opt_out
from orchestrator.reports.export import rows as export_rows
from orchestrator.reports.funnel import journey_report
from orchestrator.reports.overview import overview, recent_touches
from orchestrator.sandbox.server import SandboxHandle
from orchestrator.store.models import AuditLog, Touch, User
from tests.engine.conftest import POLICY, T0, TEMPLATES

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
USERS = User.__table__  # type: ignore[attr-defined]
AUDIT = AuditLog.__table__  # type: ignore[attr-defined]

# The same content for everyone at the article and the invite (one mass send / one task),
# the SMS personal (a tracked link of its own).
JOURNEY = """\
id: launch
name: 上新提醒
entry:
  segment: "True"
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: w/article.j2
    cover: w/cover.jpg
  - wait: 1d
  - id: invite
    send: wecom_group_invite
    template: w/invite.j2
    group: campus-deals
  - wait: 1d
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/coupon?u={{ user_id }}"
"""
ARTICLE_TEXT = "<p>新品上架</p>"
TEMPLATES_HERE = {**TEMPLATES, "w/article.j2": '{% set title = "好久不见" %}' + ARTICLE_TEXT}
NO_SENDS = """\
id: quiet
name: 只等待
entry:
  segment: "True"
steps:
  - wait: 1d
"""
SMS_ONLY = """\
id: nudge
name: 提醒
entry:
  segment: "True"
steps:
  - id: sms
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/n?u={{ user_id }}"
"""
ONE_SMS_A_WEEK = POLICY.replace("sms: { max: 5, per: 7d }", "sms: { max: 1, per: 7d }")


def runtime(make_runtime: Callable[..., Runtime], **kwargs: Any) -> Runtime:
    return make_runtime(journeys={"launch": JOURNEY, "quiet": NO_SENDS, "nudge": SMS_ONLY},
                        templates=TEMPLATES_HERE, users=6, **kwargs)


def received(sandbox: SandboxHandle) -> Counter[tuple[str, str, str]]:
    """(step channel, address, content) for every send the sandbox accepted: what each
    person got, from the provider's own record."""
    got: Counter[tuple[str, str, str]] = Counter()
    drafts = {}
    for r in sandbox.state.records():
        if r["outcome"] != "accepted":
            continue
        body, path = r["body"], r["path"]
        if path.endswith("/draft/add"):
            drafts[len(drafts)] = body["articles"][0]["content"]
        elif path.endswith("/message/mass/send"):
            content = drafts[len(drafts) - 1]
            got.update(("wechat_article", o, content) for o in body["touser"])
        elif path.endswith("/message/mass/preview"):
            got[("wechat_article", body["touser"], drafts[len(drafts) - 1])] += 1
        elif path.endswith("/message/template/send"):
            got[("wechat_article", body["touser"], "template:" + str(body.get("data")))] += 1
        elif path.endswith("/add_msg_template"):
            got.update(("wecom_group_invite", e, body["text"]["content"])
                       for e in body["external_userid"])
        elif path.endswith("/Messages.json") and r["method"] == "POST":
            got[("sms", body["To"], body["Body"])] += 1
    return got


def phone(i: int) -> str:
    return f"+86138{i:08d}"


def test_each_listed_person_gets_each_step_once_through_the_real_channels(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = runtime(make_runtime)
    result = send_test(rt, "launch", ["u0001", "u0003"], actor="cli:tester")

    assert [(o.step_id, o.user_id, o.outcome) for o in result.outcomes] == [
        ("article", "u0001", "sent"), ("article", "u0003", "sent"),
        ("invite", "u0001", "sent"), ("invite", "u0003", "sent"),
        ("sms", "u0001", "sent"), ("sms", "u0003", "sent"),
    ]
    assert [o.address for o in result.outcomes if o.channel == "sms"] == [
        "+86*******0001", "+86*******0003"]
    got = received(sandbox)
    links = {t.user_id: t.link_code for t in _touches(rt) if t.channel == "sms"}
    assert got == {
        ("wechat_article", "ou0001", ARTICLE_TEXT): 1,
        ("wechat_article", "ou0003", ARTICLE_TEXT): 1,
        ("wecom_group_invite", "wmu0001", "进群领券：校园优惠群"): 1,
        ("wecom_group_invite", "wmu0003", "进群领券：校园优惠群"): 1,
        **{("sms", phone(i), f"【校园外卖】送你一张5元券 http://recall.test/s/{links[u]} "
            "拒收请回复R"): 1 for i, u in ((1, "u0001"), (3, "u0003"))},
    }
    assert {(t.test, t.status) for t in _touches(rt)} == {(True, "sent")}
    # The article went by WeChat's preview: none of the four mass sends a month was spent.
    paths = {r["path"].rsplit("/cgi-bin/", 1)[-1] for r in sandbox.state.records("wechat")}
    assert "message/mass/preview" in paths and "message/mass/send" not in paths
    [row] = _audit(rt)
    assert (row.actor, row.action, row.subject) == ("cli:tester", "send_test", "journey:launch")
    assert row.detail["recipients"] == ["u0001", "u0003"]
    assert row.detail["steps"] == ["article", "invite", "sms"]
    assert row.detail["version"] == result.version


def test_caps_are_skipped_and_left_as_they_were(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = runtime(make_runtime, policy=ONE_SMS_A_WEEK)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("nudge"), ["u0000"], now=T0)
    run_until_idle(rt)
    assert [(t.journey_id, t.status) for t in _touches(rt)] == [("nudge", "sent")]
    held = rt.caps.held("u0000")
    assert [h.channel for h in held].count("sms") == 1

    result = send_test(rt, "launch", ["u0000"])

    assert [o.outcome for o in result.outcomes] == ["sent", "sent", "sent"]
    assert rt.caps.held("u0000") == held
    assert sum(1 for channel, address, _ in received(sandbox)
               if channel == "sms" and address == phone(0)) == 2  # the journey's and the test's


def test_quiet_hours_do_not_defer_a_test_send(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = runtime(make_runtime)
    assert isinstance(rt.clock, ManualClock)
    rt.clock.set(T0.replace(hour=15))  # 23:00 in Shanghai, outside sms 08:00-21:00
    result = send_test(rt, "launch", ["u0002"])
    assert [(o.step_id, o.outcome) for o in result.outcomes] == [
        ("article", "sent"), ("invite", "sent"), ("sms", "sent")]
    assert ("sms", phone(2)) in {(c, a) for c, a, _ in received(sandbox)}


def test_an_opted_out_person_is_not_sent_to(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = runtime(make_runtime)
    record_opt_out(rt.db, channel="sms", user_id="u0004", reason="sms_reply:TD", at=T0)
    result = send_test(rt, "launch", ["u0004", "u0005"])
    outcome = {(o.step_id, o.user_id): (o.outcome, o.reason) for o in result.outcomes}
    assert outcome[("sms", "u0004")] == ("suppressed", "opted_out:sms")
    assert outcome[("sms", "u0005")] == ("sent", None)
    assert outcome[("article", "u0004")] == ("sent", None)  # only SMS was refused
    assert {a for c, a, _ in received(sandbox) if c == "sms"} == {phone(5)}


def test_counts_exports_and_the_dashboard_are_the_same_before_and_after(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = runtime(make_runtime)
    assert isinstance(rt.clock, ManualClock)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("launch"), ["u0000", "u0001", "u0002"], now=T0)
    run_until_idle(rt)
    rt.clock.advance(60)
    run_until_idle(rt)
    before = _counted(rt)
    assert before["touches"]  # the journey ran: there is something to compare

    result = send_test(rt, "launch", ["u0000", "u0005"])

    assert {o.outcome for o in result.outcomes} == {"sent"}
    assert _counted(rt) == before


def _counted(rt: Runtime) -> dict[str, Any]:
    journey = rt.book.latest("launch")
    report = journey_report(rt.db, journey, rt.book.policy_for(journey), now=T0)
    report.pop("generated_at")
    headlines = overview(rt.db, rt.book, now=T0)
    return {
        "touches": list(export_rows(rt.db, "touches")),
        "enrollments": list(export_rows(rt.db, "enrollments")),
        "report": report,
        "headlines": headlines,
        "recent": recent_touches(rt.db, "launch"),
    }


@pytest.mark.parametrize(("journey", "to", "error", "message"), [
    ("nope", ["u0001"], NotFoundError,
     "no journey 'nope' in .*; known journeys: launch, nudge, quiet"),
    ("quiet", ["u0001"], InputError, "journey 'quiet' has no send step: nothing to test"),
    ("launch", [], InputError, "no recipient"),
    ("launch", ["u0001", "ghost"], NotFoundError,
     r"--to names 1 user not imported: 'ghost'; a test send goes to imported users"),
])
def test_bad_input_changes_nothing(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, journey: str,
    to: list[str], error: type[Exception], message: str
) -> None:
    rt = runtime(make_runtime)
    with pytest.raises(error, match=message):
        send_test(rt, journey, to)
    assert _touches(rt) == []
    assert _audit(rt) == []
    assert sandbox.state.records() == []


def test_the_list_is_comma_separated_ids_or_a_file(tmp_path: Any) -> None:
    assert parse_recipients(" u1, u2 ,u1,u3") == ["u1", "u2", "u3"]
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("# the team\nu1\nu2, u4  # Li\n\n", encoding="utf-8")
    assert parse_recipients(f"@{seeds}") == ["u1", "u2", "u4"]
    with pytest.raises(InputError, match="--to names nobody"):
        parse_recipients(" , ")
    with pytest.raises(InputError, match="cannot read"):
        parse_recipients(f"@{tmp_path / 'missing.txt'}")
    with pytest.raises(InputError, match="at most 100"):
        parse_recipients(",".join(f"u{i}" for i in range(101)))


def _touches(rt: Runtime) -> list[Any]:
    with rt.db.connect() as conn:
        return list(conn.execute(select(TOUCHES).order_by(TOUCHES.c.id)))


def _audit(rt: Runtime) -> list[Any]:
    with rt.db.connect() as conn:
        return list(conn.execute(select(AUDIT).order_by(AUDIT.c.id)))




# --- test_recipients ------------------------------------------------------------------------

SEEDED = """\
id: seeded
name: 两条短信
entry:
  segment: "True"
test_recipients: [u0004, u0005]
steps:
  - id: first
    send: sms
    template: w/sms.j2
    link: "https://m.example.com/a?u={{ user_id }}"
  - wait: 1d
  - id: second
    send: sms
    template: w/last.j2
    link: "https://m.example.com/b?u={{ user_id }}"
"""
SEEDED_TEMPLATES = {**TEMPLATES_HERE, "w/last.j2": "券明天过期 {{ link }}"}


def sms_texts(sandbox: SandboxHandle) -> Counter[tuple[str, str]]:
    """(phone, text without its link) of every SMS the sandbox accepted."""
    return Counter((address, body.rsplit(" http", 1)[0])
                   for channel, address, body in received(sandbox) if channel == "sms")


def test_the_seed_list_gets_each_step_once_per_version_with_its_first_touches(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle, tmp_path: Any
) -> None:
    rt = make_runtime(journeys={"seeded": SEEDED}, templates=SEEDED_TEMPLATES, users=8)
    clock = rt.clock
    assert isinstance(clock, ManualClock)
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("seeded"), ["u0000", "u0001"], now=T0)
    run_until_idle(rt)
    first = "【校园外卖】送你一张5元券"
    assert sms_texts(sandbox) == {(phone(i), first): 1 for i in (0, 1, 4, 5)}

    clock.advance(3600)  # a later entrant: its first step goes, the seeds got theirs already
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("seeded"), ["u0002"], now=clock.now())
    run_until_idle(rt)
    assert sms_texts(sandbox)[(phone(4), first)] == 1
    assert sms_texts(sandbox)[(phone(2), first)] == 1

    clock.set(T0 + timedelta(days=1, hours=1))  # 10:00 local: the second step's first touches
    run_until_idle(rt)
    last = "【校园外卖】券明天过期"
    assert {key: n for key, n in sms_texts(sandbox).items() if key[1] == last} == {
        (phone(i), last): 1 for i in (0, 1, 2, 4, 5)}
    assert rt.caps.held("u0004") == [] and rt.caps.held("u0005") == []  # never counted
    assert len(rt.caps.held("u0000")) == 2

    touches = _touches(rt)
    assert {(t.step_id, t.user_id) for t in touches if t.test} == {
        (s, u) for s in ("first", "second") for u in ("u0004", "u0005")}
    assert {t.test for t in touches if t.user_id in ("u0004", "u0005")} == {True}
    assert {r["user_id"] for r in export_rows(rt.db, "touches")} == {"u0000", "u0001", "u0002"}
    report = journey_report(rt.db, rt.book.latest("seeded"),
                            rt.book.policy_for(rt.book.latest("seeded")), now=clock.now())
    assert [(s["step_id"], s["eligible"], s["sent"]) for s in report["steps"]] == [
        ("first", 3, 3), ("second", 3, 3)]
    assert [(r.action, r.actor, r.detail["steps"], r.detail["recipients"]) for r in _audit(rt)
            ] == [("test_recipients", "engine", ["first"], ["u0004", "u0005"]),
                  ("test_recipients", "engine", ["second"], ["u0004", "u0005"])]

    # A new version (the template changed): its first touches bring the seeds a new copy.
    (tmp_path / "templates" / "w" / "sms.j2").write_text("新券 {{ link }}", encoding="utf-8")
    rt.book.reload()
    rt.book.sync(rt.db, now=clock.now())
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("seeded"), ["u0003"], now=clock.now())
    run_until_idle(rt)
    assert sms_texts(sandbox)[(phone(4), "【校园外卖】新券")] == 1
    assert sms_texts(sandbox)[(phone(5), "【校园外卖】新券")] == 1
    assert sms_texts(sandbox)[(phone(4), first)] == 1


def test_seed_copies_skip_quiet_hours_and_keep_consent(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    rt = make_runtime(journeys={"seeded": SEEDED}, templates=SEEDED_TEMPLATES, users=8)
    assert isinstance(rt.clock, ManualClock)
    record_opt_out(rt.db, channel="sms", user_id="u0005", reason="sms_reply:TD", at=T0)
    rt.clock.set(T0.replace(hour=15))  # 23:00 in Shanghai
    with rt.db.begin() as conn:
        enroll(conn, rt.book.latest("seeded"), ["u0000"], now=rt.clock.now())
    run_until_idle(rt)
    by_user = {t.user_id: (t.status, t.reason) for t in _touches(rt)}
    assert by_user == {"u0000": ("scheduled", "quiet_hours:sms"),  # the real one waits
                       "u0004": ("sent", None),  # the seed's copy does not
                       "u0005": ("suppressed", "opted_out:sms")}
    assert set(sms_texts(sandbox)) == {(phone(4), "【校园外卖】送你一张5元券")}
