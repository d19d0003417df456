"""Segment expressions evaluated over per-user rows, in bulk.

A row is the user's identity fields and attributes plus the derived fields that
``recall segment`` stores in ``user_features`` (tier, RFM scores, churn_score, …). A user
never scored has ``tier = None`` and ``churn_score = None``; comparing those is false.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2.exceptions import UndefinedError
from sqlalchemy import Connection, select

from orchestrator.journeys.expressions import compile_expression
from orchestrator.store.tables import USER_FEATURES as FEATURES
from orchestrator.store.tables import USERS

DERIVED = ("tier", "recency_days", "frequency", "monetary", "rfm_r", "rfm_f", "rfm_m",
           "churn_score")
CHUNK = 20_000


@lru_cache(maxsize=256)
def _compiled(source: str) -> Any:
    return compile_expression(source)


def segment_rows(
    conn: Connection, *, user_ids: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of every (or the given) non-erased user, streamed in chunks."""
    query = (
        select(USERS, *[FEATURES.c[name] for name in DERIVED], FEATURES.c.features)
        .select_from(USERS.outerjoin(FEATURES, FEATURES.c.user_id == USERS.c.user_id))
        .where(USERS.c.erased.is_(False))
        .order_by(USERS.c.user_id)
    )
    if user_ids is not None:
        query = query.where(USERS.c.user_id.in_(list(user_ids)))
    result = conn.execute(query.execution_options(yield_per=CHUNK))
    for row in result.mappings():
        yield to_context(row)


def to_context(row: Any) -> dict[str, Any]:
    data = dict(row)
    attributes = data.pop("attributes") or {}
    extra = data.pop("features") or {}
    return {**extra, **attributes, **data, "attributes": attributes}


def matches(source: str, row: dict[str, Any]) -> bool:
    try:
        return bool(_compiled(source).evaluate(row))
    except (TypeError, UndefinedError):
        return False  # e.g. None >= 0.6 for a user never scored: not in the segment


def passes_segment(conn: Connection, source: str, user_id: str, now: datetime) -> bool:
    rows = list(segment_rows(conn, user_ids=[user_id]))
    return bool(rows) and matches(source, rows[0])


def segment_members(conn: Connection, source: str) -> Iterator[str]:
    for row in segment_rows(conn):
        if matches(source, row):
            yield row["user_id"]
