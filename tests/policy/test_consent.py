"""Consent: every opt-out path suppresses the right users, in bulk; SMS replies parsed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, event

from orchestrator.errors import InputError
from orchestrator.policy.consent import (
    clear_opt_out,
    normalize_phone,
    parse_sms_opt_out,
    record_opt_out,
    sms_opt_out_keyword,
    suppressions,
    suppressions_of,
)
from orchestrator.store.models import OptOut, User
from orchestrator.store.tables import USERS

AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


def user(user_id: str, **fields: Any) -> dict[str, Any]:
    row = dict(
        user_id=user_id, openid=f"o-{user_id}", unionid=None, external_userid=f"wm-{user_id}",
        phone=None, sms_opt_out=False, wechat_followed=True, erased=False, attributes={},
    )  # fmt: skip
    return row | fields


def insert_users(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(User.__table__), rows)  # type: ignore[attr-defined]


def opt_out_rows(engine: Engine) -> list[tuple[str, str, str | None, str]]:
    t = OptOut.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        query = sa.select(t.c.channel, t.c.identity, t.c.user_id, t.c.reason).order_by(t.c.id)
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


@contextmanager
def counting_selects(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def people(db_engine: Engine) -> Engine:
    insert_users(db_engine, [
        user("ok", phone="+8613800000000"),
        user("sms_flag", phone="+8613800000001", sms_opt_out=True),
        user("by_user", phone="+8613800000002"),
        user("by_phone", phone="13800000003"),  # stored without +86
        user("by_openid", phone="+8613800000004"),
        user("unfollowed", phone="+8613800000005", wechat_followed=False),
        user("unfollow_event", phone="+8613800000006"),
        user("all", phone="+8613800000007"),
        user("erased", phone=None, openid=None, external_userid=None, erased=True),
        user("no_contact", phone=None, openid=None, external_userid=None, wechat_followed=None),
        user("late_phone", phone="+8613800000009"),
    ])  # fmt: skip
    record_opt_out(db_engine, channel="sms", user_id="by_user", reason="operator", at=AT)
    record_opt_out(
        db_engine, channel="sms", identity="phone:+86 138-0000-0003", reason="sms_reply:TD", at=AT
    )
    record_opt_out(
        db_engine,
        channel="wechat_article",
        identity="openid:o-by_openid",
        reason="unsubscribe",
        at=AT,
    )
    record_opt_out(
        db_engine,
        channel="wechat_article",
        identity="openid:o-unfollow_event",
        reason="unfollow",
        at=AT,
    )
    record_opt_out(db_engine, channel="all", user_id="all", reason="unsubscribe", at=AT)
    return db_engine


EVERYONE = ["ok", "sms_flag", "by_user", "by_phone", "by_openid", "unfollowed", "unfollow_event",
            "all", "erased", "no_contact", "late_phone", "ghost"]  # fmt: skip


def test_sms_suppressions_give_each_reason(people: Engine) -> None:
    assert suppressions(people, EVERYONE, "sms") == {
        "sms_flag": "opted_out:sms",
        "by_user": "opted_out:sms",
        "by_phone": "opted_out:sms",
        "all": "unsubscribed",
        "erased": "erased",
        "no_contact": "no_phone",
        "ghost": "unknown_user",
    }


def test_article_suppressions_give_each_reason(people: Engine) -> None:
    assert suppressions(people, EVERYONE, "wechat_article") == {
        "by_openid": "opted_out:wechat_article",
        "unfollowed": "not_following",
        "unfollow_event": "not_following",
        "all": "unsubscribed",
        "erased": "erased",
        "no_contact": "no_openid",
        "ghost": "unknown_user",
    }


def test_invite_suppressions_ignore_other_channels_opt_outs(people: Engine) -> None:
    assert suppressions(people, EVERYONE, "wecom_group_invite") == {
        "all": "unsubscribed",
        "erased": "erased",
        "no_contact": "no_external_userid",
        "ghost": "unknown_user",
    }


def test_a_phone_that_opted_out_before_it_was_known_is_suppressed(people: Engine) -> None:
    record_opt_out(
        people, channel="sms", identity="phone:+8613900000000", reason="sms_reply:R", at=AT
    )
    assert opt_out_rows(people)[-1] == ("sms", "phone:+8613900000000", None, "sms_reply:R")
    insert_users(people, [user("newcomer", phone="13900000000")])
    assert suppressions(people, ["newcomer"], "sms") == {"newcomer": "opted_out:sms"}


def test_suppressions_take_two_queries_per_batch(people: Engine) -> None:
    insert_users(people, [user(f"bulk{n}", phone=f"+86139{n:08d}") for n in range(500)])
    ids = [f"bulk{n}" for n in range(500)] + EVERYONE
    with counting_selects(people) as selects:
        found = suppressions(people, ids, "sms")
    assert len(selects) == 2
    assert len(found) == 7


def test_suppressions_of_loaded_users_read_only_the_opt_outs(people: Engine) -> None:
    """The send pipeline has the users' rows already: the same answer, one query."""
    with people.connect() as conn:
        rows = conn.execute(sa.select(USERS).where(USERS.c.user_id.in_(EVERYONE))
                            ).mappings().all()
    for channel in ("sms", "wechat_article", "wecom_group_invite"):
        with counting_selects(people) as selects:
            found = suppressions_of(people, EVERYONE, rows, channel)
        assert len(selects) == 1
        assert found == suppressions(people, EVERYONE, channel)


def test_record_opt_out_is_idempotent_and_resolves_the_user(people: Engine) -> None:
    before = len(opt_out_rows(people))
    for _ in range(2):
        record_opt_out(
            people, channel="sms", identity="phone:13800000000", reason="sms_reply:TD", at=AT
        )
    rows = opt_out_rows(people)
    assert len(rows) == before + 1
    assert rows[-1] == ("sms", "phone:+8613800000000", "ok", "sms_reply:TD")
    assert suppressions(people, ["ok"], "sms") == {"ok": "opted_out:sms"}


def test_following_again_clears_the_unfollow(people: Engine) -> None:
    assert clear_opt_out(people, channel="wechat_article", identity="openid:o-unfollow_event") == 1
    assert suppressions(people, ["unfollow_event"], "wechat_article") == {}


def test_bad_opt_out_calls_say_what_to_give(people: Engine) -> None:
    with pytest.raises(InputError, match="needs an identity"):
        record_opt_out(people, channel="sms", reason="x", at=AT)
    with pytest.raises(InputError, match=r"bad identity '13800000000': write KIND:VALUE"):
        record_opt_out(people, channel="sms", identity="13800000000", reason="x", at=AT)
    with pytest.raises(InputError, match="unknown channel 'email'"):
        suppressions(people, ["ok"], "email")


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("13800138000", "+8613800138000"), ("+86 138-0013-8000", "+8613800138000"),
     ("008613800138000", "+8613800138000"), ("+1 (415) 555-0100", "+14155550100")],
)  # fmt: skip
def test_normalize_phone(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == e164


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("R", "r"), ("r", "r"), (" TD ", "td"), ("td", "td"), ("T", "t"), ("N", "n"),
        ("STOP", "stop"), ("Stop", "stop"), ("退订", "退订"), ("退订。", "退订"),
        ("ＴＤ", "td"), ("Ｒ", "r"), ("\u3000退订\u3000", "退订"), ("T D", "td"),
        ("unsubscribe", "unsubscribe"), ("R!", "r"), ("拒收", "拒收"),
        ("Thanks", None), ("test", None), ("好的", None), ("STOP IT NOW", None),
        ("不要退订", None), ("", None), ("RR", None), ("TD123", None), ("yes", None),
    ],
)  # fmt: skip
def test_sms_opt_out_replies(body: str, keyword: str | None) -> None:
    assert sms_opt_out_keyword(body) == keyword
    assert parse_sms_opt_out(body) is (keyword is not None)
