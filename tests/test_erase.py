"""``recall forget``: no personal data left anywhere, anonymous counts unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from redis import Redis
from sqlalchemy import Engine, func, insert, select
from sqlmodel import SQLModel

from orchestrator.channels.ledger import SendLedger
from orchestrator.engine.importer import import_users
from orchestrator.errors import NotFoundError
from orchestrator.policy.caps import CapStore
from orchestrator.policy.consent import suppressions
from orchestrator.policy.rules import CapRule
from orchestrator.store.erase import forget
from orchestrator.store.models import (
    AuditLog,
    Conversion,
    Enrollment,
    Event,
    Link,
    OptOut,
    SendBatch,
    Touch,
    User,
    UserFeatures,
)

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
SECRETS = ("u-secret-42", "+8613912345678", "o-openid-secret", "un-union-secret",
           "wm-external-secret", "小明同学", "COUPON-XYZ", "staff-zhang")


def table(model: type[SQLModel]) -> object:
    return model.__table__  # type: ignore[attr-defined]


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table(User)).values(
            user_id="u-secret-42", phone="+8613912345678", openid="o-openid-secret",
            unionid="un-union-secret", external_userid="wm-external-secret",
            wecom_sender="staff-zhang", timezone="Asia/Shanghai", sms_opt_out=False,
            attributes={"nickname": "小明同学"}, erased=False, created_at=T0))
        conn.execute(insert(table(User)).values(user_id="u-other", phone="+8613900000000",
                                                attributes={}, erased=False))
        conn.execute(insert(table(Event)).values(event_id="e1", user_id="u-secret-42",
                                                 name="order_placed", ts=T0, value=20.0,
                                                 props={"address": "小明同学 宿舍"}))
        conn.execute(insert(table(Enrollment)).values(
            id=1, journey_id="j", journey_version="v", user_id="u-secret-42", arm="treatment",
            state="active", entered_at=T0, cursor=0, data={"coupon_code": "COUPON-XYZ"}))
        conn.execute(insert(table(SendBatch)).values(
            id="b1", channel="sms", journey_id="j", step_id="sms", state="sent", attempts=1,
            payload={"messages": [{"touch_id": 1, "key": "1:sms", "text": "小明同学 COUPON-XYZ",
                                   "title": None, "link": "https://r.example/s/abc",
                                   "recipient": {"user_id": "u-secret-42",
                                                 "phone": "+8613912345678"}}]}))
        conn.execute(insert(table(Touch)).values(
            id=1, enrollment_id=1, journey_id="j", journey_version="v", user_id="u-secret-42",
            arm="treatment", step_id="sms", channel="sms", status="sent", due_at=T0,
            sent_at=T0, batch_id="b1", cost=0.09))
        conn.execute(insert(table(Link)).values(
            code="abc", touch_id=1, target_url="https://m.example.com/c?u=u-secret-42#x",
            clicks=0))
        conn.execute(insert(table(Conversion)).values(
            enrollment_id=1, journey_id="j", user_id="u-secret-42", arm="treatment",
            event_id="e1", converted_at=T0, value=20.0, touch_id=1))
        conn.execute(insert(table(OptOut)).values(channel="sms", identity="phone:+8613912345678",
                                                  user_id="u-secret-42", reason="sms_reply:TD"))
        conn.execute(insert(table(UserFeatures)).values(user_id="u-secret-42", computed_at=T0,
                                                        tier="at_risk", features={}))


def everything(engine: Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(str(row) for t in SQLModel.metadata.sorted_tables
                         for row in conn.execute(select(t)).all())


def count(engine: Engine, model: type[SQLModel]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table(model))).scalar_one())


def test_forget_leaves_no_personal_data_and_keeps_the_counts(db_engine: Engine) -> None:
    seed(db_engine)
    before = {m.__name__: count(db_engine, m) for m in (Event, Enrollment, Touch, Conversion)}
    assert all(secret in everything(db_engine) for secret in SECRETS)

    erasure = forget(db_engine, "u-secret-42", now=T0)

    dump = everything(db_engine)
    assert [s for s in SECRETS if s in dump] == []
    assert "+8613900000000" in dump  # nobody else was touched
    assert {m.__name__: count(db_engine, m) for m in (Event, Enrollment, Touch, Conversion)} \
        == before
    assert count(db_engine, UserFeatures) == 0
    with db_engine.connect() as conn:
        audit = conn.execute(select(table(AuditLog))).mappings().one()
        target = conn.execute(select(table(Link).c.target_url)).scalar_one()
    assert (audit["action"], audit["subject"]) == ("forget", f"user:{erasure.pseudonym}")
    assert target == "https://m.example.com/c"
    # whatever remains of the person is never sent anything again
    assert suppressions(db_engine, [erasure.pseudonym], "sms") == {erasure.pseudonym: "erased"}


def test_forgetting_an_unknown_user_changes_nothing(db_engine: Engine) -> None:
    seed(db_engine)
    before = everything(db_engine)
    with pytest.raises(NotFoundError, match="no user 'nobody' to forget"):
        forget(db_engine, "nobody", now=T0)
    assert everything(db_engine) == before


# ------------------------------------------------------------------ Redis, free text, enrollments


def test_forget_clears_redis_free_texts_and_active_enrollments(
    db_engine: Engine, redis_server_url: str
) -> None:
    seed(db_engine)
    with db_engine.begin() as conn:
        conn.execute(insert(table(OptOut)).values(channel="all", identity="user:u-secret-42",
                                                  user_id="u-secret-42",
                                                  reason="sms_reply:退订谢谢小明同学"))
        conn.execute(insert(table(Touch)).values(
            id=2, enrollment_id=1, journey_id="j", journey_version="v", user_id="u-secret-42",
            arm="treatment", step_id="later", channel="sms", status="scheduled", due_at=T0))
    redis = Redis.from_url(redis_server_url)
    caps = CapStore(redis)
    caps.rebuild([])
    rule = CapRule.per("sms", "sms", 3, "7d")
    tz = ZoneInfo("Asia/Shanghai")
    assert caps.reserve(person="u-secret-42", channel="sms", key="1:sms", now=T0, rules=[rule],
                        tz=tz).ok
    assert caps.reserve(person="u-other", channel="sms", key="9:sms", now=T0, rules=[rule],
                        tz=tz).ok
    SendLedger(redis, prefix="recall", channel="wechat_article").record(
        "b1", {"excluded": {"o-openid-secret": "not_following", "o-someone": "not_following"}})

    erasure = forget(db_engine, "u-secret-42", now=T0, redis=redis)

    keys = [k.decode() for k in redis.scan_iter(count=1000)]
    assert not [k for k in keys if "u-secret-42" in k]
    assert caps.held("u-other")  # nobody else's caps went
    excluded = json.loads(redis.hget("recall:ledger:wechat_article:b1", "excluded") or "{}")
    assert excluded == {"o-someone": "not_following"}
    dump = everything(db_engine)
    assert "退订" not in dump and "小明同学" not in dump
    with db_engine.connect() as conn:
        enrollment = conn.execute(select(table(Enrollment))).mappings().one()
        touches = {t.id: (t.status, t.reason) for t in conn.execute(select(table(Touch)))}
        reasons = set(conn.execute(select(table(OptOut).c.reason)).scalars())
    assert (enrollment["state"], enrollment["exit_reason"]) == ("exited", "erased")
    assert enrollment["due_at"] is None
    assert touches == {1: ("sent", None), 2: ("cancelled", "erased")}
    assert reasons == {"sms_reply", "forgotten"}
    assert (erasure.rows["enrollments_ended"], erasure.rows["touches_cancelled"]) == (1, 1)


USERS_CSV = ("user_id,openid,unionid,external_userid,wecom_sender,phone,timezone,sms_opt_out,"
             "wechat_followed\n")


def test_a_forgotten_person_stays_suppressed_when_imported_again(
    db_engine: Engine, tmp_path: Path
) -> None:
    first = tmp_path / "users.csv"
    first.write_text(USERS_CSV + "u1,o-u1-openid,,,,13912345678,,false,true\n"
                     "u2,o-u2-openid,,,,13912345679,,false,true\n", encoding="utf-8")
    assert import_users(db_engine, first, now=T0).errors == []
    forget(db_engine, "u1", now=T0)

    again = import_users(db_engine, first, now=T0)
    assert [line for line, _ in again.errors] == [2]
    assert "erased by `recall forget`" in again.errors[0][1]
    assert "13912345678" not in everything(db_engine)
    assert suppressions(db_engine, ["u1"], "sms") == {"u1": "unknown_user"}

    # The same phone and OpenID under a new user id: imported, never sent to.
    other = tmp_path / "later.csv"
    other.write_text(USERS_CSV + "u9,o-u1-openid,,,,+86 139 1234 5678,,false,true\n",
                     encoding="utf-8")
    report = import_users(db_engine, other, now=T0)
    assert report.errors == [] and report.imported == 1
    assert [n.split(":")[0] for n in report.notes] == ["line 2", "line 2"]
    for channel in ("sms", "wechat_article"):
        assert suppressions(db_engine, ["u9", "u2"], channel) == {"u9": "erased"}


def test_forgetting_twice_is_a_clear_error(db_engine: Engine) -> None:
    seed(db_engine)
    forget(db_engine, "u-secret-42", now=T0)
    with pytest.raises(NotFoundError, match="already forgotten"):
        forget(db_engine, "u-secret-42", now=T0)
