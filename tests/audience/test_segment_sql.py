"""A segment said in SQL selects exactly whom the Python evaluation selects, including the
users Python drops because an expression raises on them (``None >= 0.6``)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from orchestrator.audience.segment_sql import segment_condition
from orchestrator.engine.segments import segment_members
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.tables import USERS

AT = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
TRANSLATED = [
    "True", "False", "none",
    "tier == 'at_risk'", "tier != 'at_risk'", "tier == none", "tier != none", "tier == 3",
    "churn_score >= 0.6", "not (churn_score < 0.5)", "churn_score > -1",
    "tier == 'at_risk' and churn_score >= 0.6",
    "churn_score >= 0.6 and tier == 'at_risk'",
    "churn_score >= 0.6 or tier == 'active'",  # raises on a None score before the or
    "tier == 'active' or churn_score >= 0.6",  # decided before the score for active users
    "not (tier == 'active' or churn_score >= 0.6)",
    "0.2 < churn_score <= 0.8", "0.9 < churn_score < 0.5",
    "tier in ['at_risk', 'churned']", "tier not in ['active']", "tier in []",
    "tier in ['at_risk', 3, none]", "phone", "not phone", "sms_opt_out",
    "not wechat_followed", "wechat_followed == false", "wechat_followed != true",
    "frequency != 3", "frequency == 3.0", "frequency and churn_score > 0.5",
    "recency_days <= frequency", "rfm_r >= rfm_f", "tier == openid",
    "user_id == 'p0007'", "sms_opt_out == true or phone == none",
]
NOT_TRANSLATED = [
    "attributes.campus == 'north'", "orders_30d > 1", "tier < 'b'", "tier >= 0.5",
    "churn_score >= none", "sms_opt_out == 1", "churn_score * 2 > 1", "tier | length > 3",
    "'risk' in tier", "features.orders_30d > 1", "churn_score > 0.5 > 'x'",
]


@pytest.fixture
def population(db_engine: Engine) -> Engine:
    tiers = [None, "active", "at_risk", "churned"]  # None: no features row at all
    scores = [None, 0.3, 0.6, 0.9]
    phones = [None, "", "+8613800000000"]
    followed = [None, True, False]
    users, features = [], []
    combos = itertools.product(tiers, scores, phones, followed, [False, True])
    for n, (tier, score, phone, follow, opt_out) in enumerate(combos):
        user_id = f"p{n:04d}"
        users.append({"user_id": user_id, "phone": phone, "openid": "at_risk" if n % 7 == 0
                      else f"o{n}", "sms_opt_out": opt_out, "wechat_followed": follow,
                      "attributes": {"campus": "north"}, "erased": n % 11 == 0})
        if tier is not None:
            features.append({"user_id": user_id, "computed_at": AT, "tier": tier,
                             "churn_score": score, "frequency": n % 4,
                             "recency_days": None if n % 5 == 0 else float(n % 9),
                             "rfm_r": n % 5, "rfm_f": (n // 5) % 5, "monetary": 1.0,
                             "features": {"orders_30d": n % 3}})
    with db_engine.begin() as conn:
        conn.execute(sa.insert(USERS), users)
        conn.execute(sa.insert(FEATURES), features)
    return db_engine


def in_sql(engine: Engine, source: str) -> list[str]:
    condition = segment_condition(source)
    assert condition is not None, source
    u, f = USERS.c, FEATURES.c
    query = (sa.select(u.user_id).select_from(USERS.outerjoin(FEATURES, u.user_id == f.user_id))
             .where(u.erased.is_(False), condition).order_by(u.user_id))
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def in_python(engine: Engine, source: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(segment_members(conn, source))


@pytest.mark.parametrize("source", TRANSLATED)
def test_sql_selects_whom_python_selects(population: Engine, source: str) -> None:
    assert in_sql(population, source) == in_python(population, source)


def test_the_population_tells_the_cases_apart(population: Engine) -> None:
    """Each tricky expression splits the users (none is trivially all or nothing)."""
    everyone = len(in_python(population, "True"))
    for source in ("churn_score >= 0.6 or tier == 'active'", "tier == 'active' or "
                   "churn_score >= 0.6", "not wechat_followed", "phone"):
        assert 0 < len(in_python(population, source)) < everyone, source
    assert in_python(population, "churn_score >= 0.6 or tier == 'active'") != \
        in_python(population, "tier == 'active' or churn_score >= 0.6")


@pytest.mark.parametrize("source", NOT_TRANSLATED)
def test_what_sql_cannot_say_exactly_is_left_to_python(source: str) -> None:
    assert segment_condition(source) is None
