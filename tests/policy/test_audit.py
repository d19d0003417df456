"""The independent audit over exported touches: each check catches its violation and passes
the clean case beside it (pure), then ``audit_store`` on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from orchestrator.config import get_settings
from orchestrator.errors import InputError
from orchestrator.journeys.model import Policy
from orchestrator.policy.audit import (
    OptOutFact,
    TouchRef,
    UserFacts,
    Violation,
    audit,
    audit_report,
    audit_store,
    counts_as_send,
    identity_key,
)
from orchestrator.policy.audit_cli import register
from orchestrator.store.db import dispose_engines
from orchestrator.store.models import OptOut, Touch, User

_ids = itertools.count(1)
SMS_POLICY = {"signature": "【校园外卖】", "opt_out_suffix": "拒收请回复R",
              "price_per_segment": 0.045}
BASE_CAPS = {
    "global": {"max": 3, "per": "7d"},
    "sms": {"max": 2, "per": "7d"},
    "wechat_article": {"max": 4, "per": "month"},
    "wecom_group_invite": {"max": 1, "per": "day"},
}


def policy(**overrides: Any) -> Policy:
    data: dict[str, Any] = {
        "timezone": "Asia/Shanghai",
        "caps": BASE_CAPS,
        "send_hours": {"sms": "08:00-21:00"},
        "sms": SMS_POLICY,
    }
    return Policy.model_validate({**data, **overrides})


def row(
    sent: str | None,
    channel: str = "sms",
    *,
    user: str = "u1",
    journey: str = "j1",
    step: str = "s1",
    status: str = "sent",
    reason: str | None = None,
    due: str | None = None,
) -> dict[str, Any]:
    """An export-touches row (documented columns) with a fresh enrollment id."""
    return {
        "journey_id": journey, "journey_version": "v1", "enrollment_id": next(_ids),
        "user_id": user, "arm": "treatment", "variant": None, "step_id": step,
        "channel": channel, "status": status, "reason": reason, "due_at": due or sent,
        "sent_at": sent if status in ("sent", "delivered") else None, "delivered_at": None,
        "clicked_at": None, "converted_at": None, "provider_message_id": None, "cost": 0.0,
    }


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass
class Case:
    rows: list[dict[str, Any]]
    expected: list[tuple[str, str]]  # (kind, a fragment of the detail), in time order
    users: dict[str, UserFacts] = field(default_factory=lambda: {"u1": UserFacts("u1")})
    opt_outs: list[OptOutFact] = field(default_factory=list)
    policy: Policy = field(default_factory=policy)
    journey_policies: Mapping[str, Policy] | None = None


CASES: dict[str, Case] = {
    # -- caps: rolling
    "rolling sms cap: 3 sms within 7 d, max 2": Case(
        [row("2025-03-03T02:00:00Z"), row("2025-03-06T02:00:00Z"), row("2025-03-10T01:59:00Z")],
        [("cap", "cap sms (2 per 7d): 3 sms sends in the 7d up to 2025-03-10T01:59:00Z")],
    ),
    "rolling sms cap: 3 sms spread over 8 d": Case(
        [row("2025-03-03T02:00:00Z"), row("2025-03-07T02:00:00Z"), row("2025-03-11T02:00:00Z")],
        [],
    ),
    "rolling sms cap: the third exactly 7 d after the first is a new window": Case(
        [row("2025-03-03T02:00:00Z"), row("2025-03-06T02:00:00Z"), row("2025-03-10T02:00:00Z")],
        [],
    ),
    # -- caps: calendar month, counted in Shanghai
    "platform quota: 5 articles in March, Shanghai time": Case(
        [row(t, "wechat_article") for t in ("2025-03-02T02:00:00Z", "2025-03-09T02:00:00Z",
                                            "2025-03-16T02:00:00Z", "2025-03-23T02:00:00Z",
                                            "2025-03-30T02:00:00Z")],
        [("cap", "cap wechat_article (4 per month): 5 wechat_article sends in month 2025-03 "
                 "(Asia/Shanghai)")],
    ),
    "platform quota: 4 in March + 1 on April 1 00:30 Shanghai (March 31 16:30 UTC)": Case(
        [row(t, "wechat_article") for t in ("2025-03-02T02:00:00Z", "2025-03-09T02:00:00Z",
                                            "2025-03-16T02:00:00Z", "2025-03-23T02:00:00Z",
                                            "2025-03-31T16:30:00Z")],
        [],
    ),
    "platform quota is Shanghai's even under a UTC policy: March 1 00:30 is in March": Case(
        [row(t, "wechat_article") for t in ("2025-02-28T16:30:00Z", "2025-03-08T02:00:00Z",
                                            "2025-03-15T02:00:00Z", "2025-03-22T02:00:00Z",
                                            "2025-03-29T02:00:00Z")],
        [("cap", "cap platform:wechat_article (4 per month): 5 wechat_article sends in month "
                 "2025-03 (Asia/Shanghai)")],
        policy=policy(timezone="UTC"),
    ),
    "platform quota under a UTC policy: 4 per month in both calendars": Case(
        [row(t, "wechat_article") for t in ("2025-02-28T16:30:00Z", "2025-03-10T02:00:00Z",
                                            "2025-03-17T02:00:00Z", "2025-03-24T02:00:00Z",
                                            "2025-03-31T16:30:00Z")],
        [],
        policy=policy(timezone="UTC"),
    ),
    "wecom invite: 2 on one Shanghai day (UTC days differ)": Case(
        [row("2025-03-03T17:00:00Z", "wecom_group_invite"),
         row("2025-03-04T09:00:00Z", "wecom_group_invite")],
        [("cap", "cap wecom_group_invite (1 per day): 2 wecom_group_invite sends in day "
                 "2025-03-04 (Asia/Shanghai)")],
    ),
    # -- caps: global, across channels and journeys
    "global cap: 4 touches on 3 channels from 3 journeys within 7 d": Case(
        [row("2025-03-03T02:00:00Z", "sms", journey="j1"),
         row("2025-03-04T02:00:00Z", "wechat_article", journey="j2"),
         row("2025-03-05T02:00:00Z", "wecom_group_invite", journey="j3"),
         row("2025-03-06T02:00:00Z", "sms", journey="j2")],
        [("cap", "cap global (3 per 7d): 4 any-channel sends in the 7d up to "
                 "2025-03-06T02:00:00Z")],
    ),
    "global cap: the 4th touch 7 d and a minute after the first": Case(
        [row("2025-03-03T02:00:00Z", "sms", journey="j1"),
         row("2025-03-04T02:00:00Z", "wechat_article", journey="j2"),
         row("2025-03-05T02:00:00Z", "wecom_group_invite", journey="j3"),
         row("2025-03-10T02:01:00Z", "sms", journey="j2")],
        [],
    ),
    "caps count per user": Case(
        [row("2025-03-03T02:00:00Z", user="u1"), row("2025-03-04T02:00:00Z", user="u2"),
         row("2025-03-05T02:00:00Z", user="u3")],
        [],
        users={u: UserFacts(u) for u in ("u1", "u2", "u3")},
    ),
    # -- caps: what counts as a send
    "a provider rejection released its slot": Case(
        [row("2025-03-03T02:00:00Z"), row("2025-03-04T02:00:00Z"),
         row(None, status="failed", reason="provider:30003", due="2025-03-05T02:00:00Z")],
        [],
    ),
    "unknown_outcome and unknown keep their slots (counted at due_at)": Case(
        [row("2025-03-03T02:00:00Z"),
         row(None, status="failed", reason="unknown_outcome", due="2025-03-04T02:00:00Z"),
         row(None, status="unknown", due="2025-03-05T02:00:00Z")],
        [("cap", "cap sms (2 per 7d): 3 sms sends in the 7d up to 2025-03-05T02:00:00Z")],
    ),
    # -- caps: a journey's stricter cap is judged where that journey sent
    "stricter journey cap: the strict journey sends after another's sms": Case(
        [row("2025-03-03T02:00:00Z", journey="loose"), row("2025-03-05T02:00:00Z",
                                                           journey="strict")],
        [("cap", "cap sms (1 per 7d): 2 sms sends in the 7d up to 2025-03-05T02:00:00Z")],
        journey_policies={"strict": policy(caps={**BASE_CAPS, "sms": {"max": 1, "per": "7d"}})},
    ),
    "stricter journey cap: a looser journey may send after the strict one": Case(
        [row("2025-03-03T02:00:00Z", journey="strict"), row("2025-03-05T02:00:00Z",
                                                            journey="loose")],
        [],
        journey_policies={"strict": policy(caps={**BASE_CAPS, "sms": {"max": 1, "per": "7d"}})},
    ),
    # -- quiet hours
    "sms at 21:30 Shanghai, send hours 08:00-21:00": Case(
        [row("2025-03-04T13:30:00Z")],
        [("quiet_hours", "sms sent 2025-03-04T13:30:00Z, 21:30 Tue 2025-03-04 in "
                         "Asia/Shanghai: outside send hours 08:00-21:00")],
    ),
    "sms at 20:59 Shanghai": Case([row("2025-03-04T12:59:00Z")], []),
    "sms at 21:00 Shanghai: the end is excluded": Case(
        [row("2025-03-04T13:00:00Z")], [("quiet_hours", "21:00 Tue")]
    ),
    "sms at 07:59 Shanghai": Case([row("2025-03-03T23:59:00Z")], [("quiet_hours", "07:59")]),
    "no send hours for articles: any time": Case([row("2025-03-04T18:00:00Z", "wechat_article")],
                                                 []),
    "user in New York: 09:30 EDT (21:30 in Shanghai) is inside": Case(
        [row("2025-03-10T13:30:00Z")],
        [],
        users={"u1": UserFacts("u1", timezone="America/New_York")},
    ),
    "user in New York: 21:30 EDT (09:30 in Shanghai) is outside": Case(
        [row("2025-03-11T01:30:00Z")],
        [("quiet_hours", "21:30 Mon 2025-03-10 in America/New_York")],
        users={"u1": UserFacts("u1", timezone="America/New_York")},
    ),
    "a user zone that is no zone falls back to the policy's": Case(
        [row("2025-03-04T13:30:00Z")],
        [("quiet_hours", "in Asia/Shanghai")],
        users={"u1": UserFacts("u1", timezone="Mars/Olympus")},
    ),
    "a journey's tighter send hours": Case(
        [row("2025-03-04T12:30:00Z", journey="strict")],
        [("quiet_hours", "outside send hours 09:00-20:00")],
        journey_policies={"strict": policy(send_hours={"sms": "09:00-20:00"})},
    ),
    "window crossing midnight belongs to the day it starts: 02:00 is inside": Case(
        [row("2025-03-03T18:00:00Z")], [], policy=policy(send_hours={"sms": "22:00-06:00"})
    ),
    "window crossing midnight: 07:00 is outside": Case(
        [row("2025-03-03T23:00:00Z")],
        [("quiet_hours", "outside send hours 22:00-06:00")],
        policy=policy(send_hours={"sms": "22:00-06:00"}),
    ),
    "rest-day hours on a Saturday: 09:00 is outside 10:00-20:00": Case(
        [row("2025-03-08T01:00:00Z")],
        [("quiet_hours", "outside send hours 10:00-20:00 (rest-day hours)")],
        policy=policy(holidays="CN", holiday_send_hours={"sms": "10:00-20:00"}),
    ),
    "rest-day hours: 09:00 on a Monday and on a make-up working Sunday are inside": Case(
        [row("2025-03-10T01:00:00Z"), row("2025-09-28T01:00:00Z")],
        [],
        policy=policy(holidays="CN", holiday_send_hours={"sms": "10:00-20:00"}),
    ),
    "quiet hours are not judged without a sent_at": Case(
        [row(None, status="unknown", due="2025-03-04T13:30:00Z")], []
    ),
    # -- consent
    "sms after an opt-out recorded by phone": Case(
        [row("2025-03-05T02:00:00Z")],
        [("consent", "sms sent 2025-03-05T02:00:00Z after an opt-out for sms recorded "
                     "2025-03-05T00:00:00Z (phone:+8613800138000, sms_reply:TD)")],
        users={"u1": UserFacts("u1", phone="138 0013 8000")},
        opt_outs=[OptOutFact("sms", "phone:+8613800138000", utc("2025-03-05T00:00:00Z"),
                             None, "sms_reply:TD")],
    ),
    "sms before the opt-out": Case(
        [row("2025-03-04T02:00:00Z")],
        [],
        users={"u1": UserFacts("u1", phone="138 0013 8000")},
        opt_outs=[OptOutFact("sms", "phone:+8613800138000", utc("2025-03-05T00:00:00Z"),
                             None, "sms_reply:TD")],
    ),
    "sms at the very moment of the opt-out": Case(
        [row("2025-03-05T00:00:00Z")],
        [("consent", "after an opt-out")],
        opt_outs=[OptOutFact("sms", "user:u1", utc("2025-03-05T00:00:00Z"), "u1", "operator")],
    ),
    "an sms opt-out does not stop articles": Case(
        [row("2025-03-06T02:00:00Z", "wechat_article")],
        [],
        opt_outs=[OptOutFact("sms", "user:u1", utc("2025-03-05T00:00:00Z"), "u1", "operator")],
    ),
    "an opt-out from all channels, by openid": Case(
        [row("2025-03-06T02:00:00Z", "wechat_article")],
        [("consent", "after an opt-out for all recorded 2025-03-05T00:00:00Z (openid:o-1")],
        users={"u1": UserFacts("u1", openid="o-1")},
        opt_outs=[OptOutFact("all", "openid:o-1", utc("2025-03-05T00:00:00Z"), None,
                             "unsubscribe")],
    ),
    "sms to users.sms_opt_out": Case(
        [row("2025-03-04T02:00:00Z")],
        [("consent", "to a user with users.sms_opt_out (held for the run)")],
        users={"u1": UserFacts("u1", sms_opt_out=True)},
    ),
    "an article to a user who does not follow": Case(
        [row("2025-03-04T02:00:00Z", "wechat_article")],
        [("consent", "to a user with users.wechat_followed = false (held for the run)")],
        users={"u1": UserFacts("u1", openid="o-1", wechat_followed=False)},
    ),
    "an article to a user whose following is unknown": Case(
        [row("2025-03-04T02:00:00Z", "wechat_article")],
        [],
        users={"u1": UserFacts("u1", openid="o-1", wechat_followed=None)},
    ),
    "an article before the unfollow that cleared the flag": Case(
        [row("2025-03-04T02:00:00Z", "wechat_article")],
        [],
        users={"u1": UserFacts("u1", openid="o-1", wechat_followed=False)},
        opt_outs=[OptOutFact("wechat_article", "openid:o-1", utc("2025-03-05T00:00:00Z"), "u1",
                             "unfollow")],
    ),
    "an article after that unfollow": Case(
        [row("2025-03-06T02:00:00Z", "wechat_article")],
        [("consent", "after an opt-out for wechat_article recorded 2025-03-05T00:00:00Z")],
        users={"u1": UserFacts("u1", openid="o-1", wechat_followed=False)},
        opt_outs=[OptOutFact("wechat_article", "openid:o-1", utc("2025-03-05T00:00:00Z"), "u1",
                             "unfollow")],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_audit(case: Case) -> None:
    found = audit(case.rows, users=case.users, opt_outs=case.opt_outs, policy=case.policy,
                  journey_policies=case.journey_policies)
    assert [v.kind for v in found] == [kind for kind, _ in case.expected], found
    for violation, (_, fragment) in zip(found, case.expected, strict=True):
        assert fragment in violation.detail


def test_a_violation_names_the_touch() -> None:
    rows = [row("2025-03-04T13:30:00Z", journey="winback", step="sms-1")]
    [found] = audit(rows, users={}, opt_outs=[], policy=policy())
    assert found == Violation("quiet_hours", "u1",
                              TouchRef("winback", "sms-1", rows[0]["enrollment_id"]),
                              found.detail)


def test_every_send_over_the_cap_is_reported_in_time_order() -> None:
    rows = [row(f"2025-03-0{d}T02:00:00Z") for d in (3, 4, 5, 6)]
    found = audit(rows, users={}, opt_outs=[], policy=policy())
    assert [(v.kind, v.touch.enrollment_id) for v in found] == [
        ("cap", rows[2]["enrollment_id"]),  # sms: 3 in 7 d
        ("cap", rows[3]["enrollment_id"]),  # global: 4 in 7 d
        ("cap", rows[3]["enrollment_id"]),  # sms: 4 in 7 d
    ]


@pytest.mark.parametrize(
    ("status", "reason", "counted"),
    [
        ("sent", None, True),
        ("delivered", None, True),
        ("sending", None, True),
        ("unknown", "unknown:timeout", True),
        ("failed", "unknown_outcome", True),
        ("failed", "provider:30003", False),
        ("failed", "unconfirmed", False),
        ("suppressed", "capped:sms", False),
        ("scheduled", None, False),
        ("claimed", None, False),
        ("cancelled", "goal", False),
    ],
)
def test_what_counts_as_a_send(status: str, reason: str | None, counted: bool) -> None:
    assert counts_as_send({"status": status, "reason": reason}) is counted


def test_test_sends_are_not_counted() -> None:
    assert not counts_as_send({"status": "sent", "test": True})


def test_report_counts_touches_and_sends() -> None:
    rows = [row("2025-03-04T02:00:00Z"), row(None, status="suppressed", reason="capped:sms",
                                              due="2025-03-04T02:00:00Z")]
    report = audit_report(rows, users={}, opt_outs=[], policy=policy())
    assert (report.touches, report.sends, report.violations) == (2, 1, [])
    assert report.by_kind() == {"cap": 0, "quiet_hours": 0, "consent": 0}


def test_a_bad_time_says_which_row() -> None:
    rows = [row("2025-03-04T02:00:00Z"), {**row("2025-03-04T02:00:00Z"), "sent_at": "yesterday"}]
    with pytest.raises(InputError, match=r"touch row 2: sent_at 'yesterday' is not an ISO 8601"):
        audit(rows, users={}, opt_outs=[], policy=policy())


def test_csv_rows_with_string_ids_and_naive_times() -> None:
    rows = [{**row(f"2025-03-0{d}T02:00:00"), "enrollment_id": str(d)} for d in (3, 4, 5)]
    [found] = audit(rows, users={}, opt_outs=[], policy=policy())
    assert found.touch.enrollment_id == 5


@pytest.mark.parametrize(
    ("identity", "key"),
    [
        ("phone:+8613800138000", "phone:13800138000"),
        ("phone:008613800138000", "phone:13800138000"),
        ("phone:138-0013-8000", "phone:13800138000"),
        ("phone:+14155550100", "phone:14155550100"),
        ("openid:o-1", "openid:o-1"),
    ],
)
def test_identity_keys(identity: str, key: str) -> None:
    assert identity_key(identity) == key


# ---------------------------------------------------------------- the store

T0 = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def _touch(
    enrollment_id: int, user_id: str, channel: str, at: datetime, *, status: str = "sent",
    test: bool = False,
) -> dict[str, Any]:
    return {
        "enrollment_id": enrollment_id, "journey_id": "j1", "journey_version": "v1",
        "user_id": user_id, "step_id": "s1", "channel": channel, "status": status,
        "due_at": at, "reserved_at": at, "sent_at": at if status == "sent" else None,
        "test": test,
    }


def _user(user_id: str, **values: Any) -> dict[str, Any]:
    empty = dict.fromkeys(("phone", "openid", "timezone", "wechat_followed"))
    return {"user_id": user_id, **empty, "sms_opt_out": False, "attributes": {}, **values}


def _insert(engine: Engine, table: Any, values: Sequence[Mapping[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(table), list(values))


def test_audit_store(db_engine: Engine) -> None:
    """Users, opt-outs and touches in the store: one violation of each kind is found, and
    neither the test send nor the held-but-unsent rows are miscounted."""
    _insert(db_engine, User.__table__, [  # type: ignore[attr-defined]
        _user("u1", phone="13800138000"),
        _user("u2", openid="o-2", wechat_followed=False),
        _user("u3", timezone="America/New_York"),
    ])
    _insert(db_engine, OptOut.__table__, [  # type: ignore[attr-defined]
        {"channel": "sms", "identity": "phone:+8613800138000", "user_id": None,
         "reason": "sms_reply:TD", "created_at": T0.replace(day=4)},
    ])
    _insert(db_engine, Touch.__table__, [  # type: ignore[attr-defined]
        _touch(1, "u1", "sms", T0),                                   # fine
        _touch(2, "u1", "sms", T0.replace(day=5)),                    # after the opt-out
        _touch(3, "u2", "wechat_article", T0),                        # not following
        _touch(4, "u3", "sms", T0.replace(hour=14)),                  # 10:00 EDT: fine
        _touch(5, "u3", "sms", T0.replace(day=4)),                    # 21:00 EST: quiet hours
        _touch(6, "u3", "sms", T0.replace(day=4, hour=14), test=True),  # a test send: uncounted
        _touch(7, "u3", "sms", T0.replace(day=5, hour=14)),           # 3rd counted sms: cap
        _touch(8, "u3", "sms", T0.replace(day=5), status="suppressed"),
    ])
    found = audit_store(db_engine, policy=policy())
    assert [(v.kind, v.user_id, v.touch.enrollment_id) for v in found] == [
        ("consent", "u2", 3),
        ("quiet_hours", "u3", 5),
        ("consent", "u1", 2),
        ("cap", "u3", 7),
    ]


# ---------------------------------------------------------------- recall audit

POLICY_YAML = """\
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


@pytest.fixture
def audit_cli(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[typer.Typer, Path]]:
    """The ``recall audit`` command on a SQLite store, with a journeys folder of its own."""
    journeys = tmp_path / "journeys"
    journeys.mkdir()
    (journeys / "policy.yaml").write_text(POLICY_YAML, encoding="utf-8")
    (tmp_path / "templates").mkdir()
    monkeypatch.setenv("RECALL_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RECALL_TEMPLATES_DIR", str(tmp_path / "templates"))
    get_settings.cache_clear()
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in `recall`: the command is named, not implied
    register(app)
    yield app, journeys
    dispose_engines()
    get_settings.cache_clear()


def test_recall_audit_passes_a_clean_run(
    audit_cli: tuple[typer.Typer, Path], sqlite_engine: Engine
) -> None:
    app, journeys = audit_cli
    _insert(sqlite_engine, Touch.__table__, [  # type: ignore[attr-defined]
        _touch(1, "u1", "sms", T0), _touch(2, "u1", "sms", T0, status="suppressed"),
    ])
    result = CliRunner().invoke(app, ["audit", "--journeys", str(journeys)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "audit: 1 sends checked of 2 touches",
        "violations: cap 0, quiet_hours 0, consent 0",
        "no cap, quiet-hour or consent violation",
    ]


def test_recall_audit_lists_violations_and_exits_1(
    audit_cli: tuple[typer.Typer, Path], sqlite_engine: Engine
) -> None:
    app, journeys = audit_cli
    late = T0.replace(hour=13, minute=30)  # 21:30 in Shanghai
    _insert(sqlite_engine, Touch.__table__, [  # type: ignore[attr-defined]
        _touch(n, "u1", "sms", late.replace(day=3 + n)) for n in range(25)
    ])
    result = CliRunner().invoke(app, ["audit", "--journeys", str(journeys)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "audit: 25 sends checked of 25 touches",
        "violations: cap 45, quiet_hours 25, consent 0",  # sms from the 3rd, global the 4th
        "  quiet_hours u1 j1/s1 #0: sms sent 2025-03-03T13:30:00Z, 21:30 Mon 2025-03-03 in "
        "Asia/Shanghai: outside send hours 08:00-21:00",
    ]
    assert lines[-1] == "  … and 50 more"
    assert len(lines) == 2 + 20 + 1


def test_recall_audit_reports_a_bad_policy(
    audit_cli: tuple[typer.Typer, Path], tmp_path: Path
) -> None:
    app, journeys = audit_cli
    (journeys / "policy.yaml").write_text("timezone: Mars/Olympus\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["audit", "--journeys", str(journeys)])
    assert result.exit_code == 1
    assert result.stderr.startswith("recall audit: ")
    assert "policy.yaml" in result.stderr
