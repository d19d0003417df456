from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, update

from orchestrator.audience.features import USERS, refresh_features
from orchestrator.audience.segments import (
    AUDIENCE_FIELDS,
    IDENTITY_FIELDS,
    segment_rows,
    stale_users,
    tier_summary,
)
from orchestrator.config import get_settings
from tests.audience.helpers import T, add_events, add_users, days_ago, ev


@pytest.fixture
def people(db_engine: Engine, isolated_settings: None) -> Engine:
    add_users(db_engine, [
        {"user_id": "u1", "openid": "o-u1", "phone": "+8613800000001", "timezone":
         "Asia/Shanghai", "sms_opt_out": False, "wechat_followed": True,
         "campus": "north", "grade": "senior", "tier": "an attribute named tier"},
        {"user_id": "u2", "openid": "o-u2", "sms_opt_out": True},
        {"user_id": "u3", "external_userid": "wm-u3", "wecom_sender": "staff-01",
         "sms_opt_out": False},
    ])
    with db_engine.begin() as conn:
        conn.execute(update(USERS).where(USERS.c.user_id == "u2").values(erased=True))
    add_events(db_engine, [
        *(ev("u1", "login", days_ago(k, hours=2)) for k in (8, 9, 11, 15)),
        ev("u1", "order_placed", days_ago(8, hours=2), 42.0),
        ev("u2", "login", days_ago(1)),
        ev("outsider", "login", days_ago(1)),  # events but no users row: not contactable
    ])
    return db_engine


def test_rows_carry_audience_identity_feature_and_attribute_fields(people: Engine) -> None:
    rows = list(segment_rows(people, at=T))
    assert [r["user_id"] for r in rows] == ["u1", "u3"]  # erased and unknown users left out
    u1, u3 = rows
    assert set(AUDIENCE_FIELDS) | set(IDENTITY_FIELDS) <= set(u1)
    assert u1["tier"] == "at_risk" and u1["recency_days"] == pytest.approx(8 + 2 / 24)
    assert (u1["frequency"], u1["monetary"]) == (1, 42.0)
    assert u1["churn_score"] == pytest.approx((8 + 2 / 24) / 30)
    # Ranked among u1, u3 and the outsider (erased u2 is not scored at all).
    assert (u1["rfm_r"], u1["rfm_f"], u1["rfm_m"]) == (2, 4, 4)
    assert u1["features_at"] == T
    assert u1["openid"] == "o-u1" and u1["phone"] == "+8613800000001"
    assert u1["sms_opt_out"] is False and u1["wechat_followed"] is True
    assert u1["campus"] == "north" and u1["grade"] == "senior"
    assert u1["attributes"]["tier"] == "an attribute named tier"  # never overrides a field
    assert u1["active_days_30d"] == 4 and u1["features"]["active_days_30d"] == 4
    assert u3["tier"] == "churned" and u3["recency_days"] is None and u3["churn_score"] == 1.0
    assert u3["external_userid"] == "wm-u3" and u3["wecom_sender"] == "staff-01"


def test_rows_come_in_chunks_in_user_order(people: Engine) -> None:
    whole = list(segment_rows(people, at=T))
    assert list(segment_rows(people, at=T, chunk_size=1)) == whole


def test_stale_features_are_refreshed_first(people: Engine) -> None:
    refresh_features(people, at=T, settings=get_settings())
    assert stale_users(people, at=T + timedelta(hours=2), max_age=timedelta(days=1)) == 0
    assert stale_users(people, at=T + timedelta(days=2), max_age=timedelta(days=1)) == 2
    assert stale_users(people, at=T - timedelta(hours=1), max_age=timedelta(days=1)) == 2
    rows = list(segment_rows(people, at=T + timedelta(days=2)))
    assert rows[0]["features_at"] == T + timedelta(days=2)
    assert rows[0]["recency_days"] == pytest.approx(10 + 2 / 24)


def test_without_refresh_unscored_users_have_no_tier(people: Engine) -> None:
    rows = list(segment_rows(people, at=T, refresh=False))
    assert [(r["user_id"], r["tier"], r["churn_score"]) for r in rows] == [
        ("u1", None, None), ("u3", None, None),
    ]
    assert rows[0]["campus"] == "north"


def test_tier_summary(people: Engine) -> None:
    refresh_features(people, at=T, settings=get_settings())
    summary = tier_summary(people, at=T)
    assert list(summary) == ["active", "low_frequency", "at_risk", "churned"]
    assert summary == {
        "active": (0, None),
        "low_frequency": (1, pytest.approx(1 / 30)),  # the outsider: one login, a day ago
        "at_risk": (1, pytest.approx((8 + 2 / 24) / 30)),  # u1
        "churned": (1, 1.0),  # u3; erased u2 is not scored
    }
