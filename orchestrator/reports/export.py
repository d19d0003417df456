"""``recall export touches|enrollments``: every row a report number is computed from.

Test sends (``recall send-test``, ``test_recipients``) are left out, as from every count.

Streamed in chunks (no full load into memory), times as ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any, Literal, TextIO

from sqlalchemy import Engine, Select, select

from orchestrator.store.models import Enrollment, Touch

TOUCHES = Touch.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]

TOUCH_COLUMNS = (
    "journey_id", "journey_version", "enrollment_id", "user_id", "arm", "variant", "step_id",
    "channel", "status", "reason", "due_at", "sent_at", "delivered_at", "clicked_at",
    "converted_at", "provider_message_id", "cost", "rung_arm",
)
ENROLLMENT_COLUMNS = (
    "journey_id", "enrollment_id", "user_id", "arm", "variant", "state", "entered_at",
    "exited_at", "exit_reason", "converted_at",
)
Kind = Literal["touches", "enrollments"]
CHUNK = 10_000


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def rows(engine: Engine, kind: Kind, journey_id: str | None = None) -> Iterator[dict[str, Any]]:
    query: Select[*tuple[Any, ...]]
    columns: tuple[str, ...]
    if kind == "touches":
        query = select(*[TOUCHES.c[c] for c in TOUCH_COLUMNS if c != "enrollment_id"],
                       TOUCHES.c.enrollment_id).where(TOUCHES.c.test.is_(False))\
            .order_by(TOUCHES.c.id)
        if journey_id:
            query = query.where(TOUCHES.c.journey_id == journey_id)
        columns = TOUCH_COLUMNS
    else:
        query = select(
            ENROLLMENTS.c.journey_id, ENROLLMENTS.c.id.label("enrollment_id"),
            ENROLLMENTS.c.user_id, ENROLLMENTS.c.arm, ENROLLMENTS.c.state,
            ENROLLMENTS.c.entered_at, ENROLLMENTS.c.exited_at, ENROLLMENTS.c.exit_reason,
            ENROLLMENTS.c.converted_at,
        ).order_by(ENROLLMENTS.c.id)
        if journey_id:
            query = query.where(ENROLLMENTS.c.journey_id == journey_id)
        columns = ENROLLMENT_COLUMNS
    with engine.connect() as conn, \
            conn.execute(query.execution_options(yield_per=CHUNK)) as result:
        variants = _variants(engine, journey_id) if kind == "enrollments" else None
        try:
            for row in result.mappings():
                data = dict(row)
                if variants is not None:
                    data["variant"] = variants.lookup(data["enrollment_id"])
                yield {c: _iso(data.get(c)) for c in columns}
        finally:
            if variants is not None:
                variants.close()


class _MergedVariants:
    """An enrollment's variants (``step=variant;…``) read from its touches, by merging a
    second stream ordered by enrollment id: no per-row query."""

    def __init__(self, stream: Generator[Any, None, None]) -> None:
        self._stream = stream
        self._head = next(stream, None)

    def lookup(self, enrollment_id: int) -> str | None:
        found = []
        while self._head is not None and self._head.enrollment_id <= enrollment_id:
            if self._head.enrollment_id == enrollment_id:
                found.append(f"{self._head.step_id}={self._head.variant}")
            self._head = next(self._stream, None)
        return ";".join(found) or None

    def close(self) -> None:
        """End the stream where it stands (touches of later enrollments may be left unread):
        its cursor and connection go back now, not when the garbage collector finds them."""
        self._stream.close()


def _variants(engine: Engine, journey_id: str | None) -> _MergedVariants:
    query = (
        select(TOUCHES.c.enrollment_id, TOUCHES.c.step_id, TOUCHES.c.variant)
        .where(TOUCHES.c.variant.is_not(None), TOUCHES.c.test.is_(False))
        .order_by(TOUCHES.c.enrollment_id, TOUCHES.c.id)
    )
    if journey_id:
        query = query.where(TOUCHES.c.journey_id == journey_id)

    def stream() -> Generator[Any, None, None]:
        with engine.connect() as conn, \
                conn.execute(query.execution_options(yield_per=CHUNK)) as result:
            yield from result

    return _MergedVariants(stream())


def write(engine: Engine, kind: Kind, out: TextIO, *, fmt: Literal["jsonl", "csv"],
          journey_id: str | None = None) -> int:
    columns = TOUCH_COLUMNS if kind == "touches" else ENROLLMENT_COLUMNS
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows(engine, kind, journey_id):
            writer.writerow(row)
            count += 1
    else:
        for row in rows(engine, kind, journey_id):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
