"""Rows that journey ``entry.segment`` expressions are evaluated over, read in bulk.

Each row is one contactable user (in the users table, not erased) with, by precedence:

1. the audience fields: ``user_id, tier, rfm_r, rfm_f, rfm_m, recency_days, frequency,
   monetary, churn_score`` and ``features_at`` (when they were computed);
2. the identity and consent fields: ``openid, unionid, external_userid, wecom_sender,
   phone, timezone, sms_opt_out, wechat_followed``;
3. every other stored feature (``activity_trend``, ``overdue_ratio``,
   ``payment_failures_30d``, ``orders_30d``, ...);
4. every user attribute (``campus``, ``grade``, ...).

The attributes and stored features are also kept whole under ``attributes`` and
``features``, so one named like a field above stays reachable.

A name defined at a higher level is never overwritten by a lower one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, and_, func, or_, select

from orchestrator.audience.config import AudienceConfig
from orchestrator.audience.features import refresh_features
from orchestrator.audience.rfm import TIERS
from orchestrator.clock import as_utc
from orchestrator.config import Settings
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.tables import USERS

AUDIENCE_FIELDS = (
    "user_id", "tier", "rfm_r", "rfm_f", "rfm_m", "recency_days", "frequency", "monetary",
    "churn_score",
)
IDENTITY_FIELDS = (
    "openid", "unionid", "external_userid", "wecom_sender", "phone", "timezone",
    "sms_opt_out", "wechat_followed",
)


def segment_rows(
    engine: Engine,
    *,
    at: datetime,
    chunk_size: int = 5_000,
    refresh: bool = True,
    max_age: timedelta = timedelta(days=1),
    settings: Settings | None = None,
    config: AudienceConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one dict per contactable user, ordered by user id, ``chunk_size`` per query.

    With ``refresh=True`` (default), features are first recomputed at ``at`` when any
    user has none, or has some computed after ``at`` (the future) or more than
    ``max_age`` before it.
    """
    at = as_utc(at)
    if refresh and stale_users(engine, at=at, max_age=max_age):
        refresh_features(engine, at=at, settings=settings, config=config)
    last: str | None = None
    while True:
        rows = _page(engine, after=last, limit=chunk_size)
        if not rows:
            return
        for row in rows:
            yield segment_row(row)
        last = rows[-1]["user_id"]


def stale_users(engine: Engine, *, at: datetime, max_age: timedelta) -> int:
    """How many contactable users lack features valid at ``at``."""
    f = FEATURES.c
    fresh = and_(f.computed_at <= at, f.computed_at >= at - max_age)
    stmt = (
        select(func.count())
        .select_from(USERS.outerjoin(FEATURES, USERS.c.user_id == f.user_id))
        .where(USERS.c.erased.is_(False))
        .where(or_(f.user_id.is_(None), ~fresh))
    )
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def segment_query() -> Select[Any]:
    """The columns a segment row is made of, for every contactable user, by user id."""
    u, f = USERS.c, FEATURES.c
    return (
        select(
            u.user_id, *(u[name] for name in IDENTITY_FIELDS), u.attributes,
            *(f[name] for name in AUDIENCE_FIELDS if name != "user_id"),
            f.computed_at, f.features,
        )
        .select_from(USERS.outerjoin(FEATURES, u.user_id == f.user_id))
        .where(u.erased.is_(False))
        .order_by(u.user_id)
    )


def _page(engine: Engine, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    stmt = segment_query().limit(limit)
    if after is not None:
        stmt = stmt.where(USERS.c.user_id > after)  # keyset paging: the database's order
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def segment_row(row: dict[str, Any]) -> dict[str, Any]:
    """One ``segment_query`` row as the fields an expression sees (precedence above)."""
    attributes = dict(row.pop("attributes") or {})
    features = row.pop("features") or {}
    out = {name: row[name] for name in AUDIENCE_FIELDS}
    out["features_at"] = row.pop("computed_at")
    out.update({name: row[name] for name in IDENTITY_FIELDS})
    for source in (features, attributes):
        for key, value in source.items():
            out.setdefault(key, value)
    out["attributes"] = attributes
    out["features"] = features
    return out


def tier_summary(engine: Engine, *, at: datetime) -> dict[str, tuple[int, float | None]]:
    """``{tier: (users, mean churn score)}`` of the features computed at ``at``, in tier
    order (active, low_frequency, at_risk, churned)."""
    f = FEATURES.c
    stmt = (
        select(f.tier, func.count(), func.avg(f.churn_score))
        .where(f.computed_at == as_utc(at))
        .group_by(f.tier)
    )
    with engine.connect() as conn:
        found = {tier: (int(n), None if avg is None else float(avg)) for tier, n, avg in
                 conn.execute(stmt)}
    return {tier: found.get(tier, (0, None)) for tier in TIERS}
