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
from sqlalchemy import Connection

from orchestrator.audience.segments import segment_query, segment_row
from orchestrator.journeys.expressions import compile_expression
from orchestrator.store.tables import USERS

CHUNK = 20_000


@lru_cache(maxsize=256)
def _compiled(source: str) -> Any:
    return compile_expression(source)


def segment_rows(
    conn: Connection, *, user_ids: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Rows of every (or the given) contactable user, streamed in chunks, on the caller's
    connection (the enrollment that follows sees the same snapshot). The row is the
    audience package's: one definition of what a segment expression sees."""
    query = segment_query()
    if user_ids is not None:
        query = query.where(USERS.c.user_id.in_(list(user_ids)))
    result = conn.execute(query.execution_options(yield_per=CHUNK))
    for row in result.mappings():
        yield segment_row(dict(row))


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
