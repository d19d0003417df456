from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from orchestrator.tracking.callbacks import (
    apply_group_join,
    apply_mass_send_result,
    apply_sms_status,
    invite_state,
    set_wechat_followed,
    touch_id_from_state,
)
from tests.tracking.seed import BATCHES, T0, TOUCHES, USERS, Seeder

T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)


def sms_touch(seed: Seeder, sid: str = "SM1", **fields: object) -> int:
    enrollment = seed.enrollment(seed.user("u1", phone="+8613800138000"))
    return seed.touch(enrollment, provider_message_id=sid, **fields)


def status(engine: Engine, state: str, code: str | None = None, sid: str = "SM1") -> object:
    with engine.begin() as conn:
        return apply_sms_status(conn, message_id=sid, status=state, error_code=code, now=T2)


def test_delivered_stamps_delivery(db_engine: Engine, seed: Seeder) -> None:
    touch = sms_touch(seed)
    update = status(db_engine, "delivered")
    assert update.applied and not update.opted_out  # type: ignore[attr-defined]
    row = seed.row(TOUCHES, id=touch)
    assert (row["status"], row["delivered_at"], row["sent_at"]) == ("delivered", T2, T0)


def test_out_of_order_callbacks_never_move_a_touch_back(db_engine: Engine, seed: Seeder) -> None:
    touch = sms_touch(seed)
    status(db_engine, "delivered")
    assert not status(db_engine, "sent").applied  # type: ignore[attr-defined]
    assert not status(db_engine, "undelivered", "30003").applied  # type: ignore[attr-defined]
    assert seed.row(TOUCHES, id=touch)["status"] == "delivered"


@pytest.mark.parametrize(("state", "code", "reason"), [
    ("undelivered", "30003", "provider:30003"),
    ("failed", "21610", "provider:21610"),
    ("failed", None, "provider:failed"),
])
def test_failures_record_the_provider_reason(
    db_engine: Engine, seed: Seeder, state: str, code: str | None, reason: str
) -> None:
    touch = sms_touch(seed)
    update = status(db_engine, state, code)
    assert update.opted_out == (code == "21610")  # type: ignore[attr-defined]
    row = seed.row(TOUCHES, id=touch)
    assert (row["status"], row["reason"]) == ("failed", reason)


def test_sent_confirms_an_unknown_outcome(db_engine: Engine, seed: Seeder) -> None:
    touch = sms_touch(seed, status="unknown", sent_at=None)
    assert status(db_engine, "sent").applied  # type: ignore[attr-defined]
    assert seed.row(TOUCHES, id=touch)["status"] == "sent"
    assert seed.row(TOUCHES, id=touch)["sent_at"] == T2


def test_unknown_message_id(db_engine: Engine) -> None:
    assert status(db_engine, "delivered", sid="SMnope") is None


def test_mass_send_result_is_merged_into_the_batch(db_engine: Engine, seed: Seeder) -> None:
    seed.batch("b1", "1000001625", result={"msg_data_id": 7})
    with db_engine.begin() as conn:
        assert apply_mass_send_result(conn, msg_id="1000001625",
                                      counts={"sent_count": 2}) == "b1"
        assert apply_mass_send_result(conn, msg_id="999", counts={}) is None
    assert seed.row(BATCHES, id="b1")["result"] == {"msg_data_id": 7, "sent_count": 2}


def test_invite_state_round_trips() -> None:
    assert touch_id_from_state(invite_state(42)) == 42
    assert touch_id_from_state("recall:t7") == 7
    assert touch_id_from_state("campus-deals") is None
    assert touch_id_from_state(None) is None


def test_join_by_state_and_by_member(db_engine: Engine, seed: Seeder) -> None:
    e1 = seed.enrollment(seed.user("u1", external_userid="wm_u1"))
    e2 = seed.enrollment(seed.user("u2", external_userid="wm_u2"))
    by_state = seed.touch(e1, "invite", channel="wecom_group_invite")
    by_member = seed.touch(e2, "invite", channel="wecom_group_invite")
    with db_engine.begin() as conn:
        assert apply_group_join(conn, state=invite_state(by_state), external_userids=[],
                                now=T1) == [by_state]
        assert apply_group_join(conn, state=None, external_userids=["wm_u2", "wm_x"],
                                now=T2) == [by_member]
    assert seed.row(TOUCHES, id=by_state)["joined_at"] == T1
    assert seed.row(TOUCHES, id=by_state)["clicked_at"] == T1
    assert seed.row(TOUCHES, id=by_member)["joined_at"] == T2


def test_follow_state(db_engine: Engine, seed: Seeder) -> None:
    seed.user("u1", openid="o1", wechat_followed=True)
    with db_engine.begin() as conn:
        assert set_wechat_followed(conn, openid="o1", followed=False, now=T1) == ["u1"]
    assert seed.row(USERS, user_id="u1")["wechat_followed"] is False
