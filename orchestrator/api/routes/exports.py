"""``GET /v1/exports/{touches|enrollments}``: the rows behind every report number, streamed.

Same columns and formats as ``recall export``; times are ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from orchestrator.api.deps import ApiKey, ServicesDep
from orchestrator.reports.export import ENROLLMENT_COLUMNS, TOUCH_COLUMNS, Kind, rows

router = APIRouter(prefix="/v1", tags=["exports"], dependencies=[ApiKey])
LINES_PER_CHUNK = 1_000
MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def _jsonl(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    lines: list[str] = []
    for record in records:
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if len(lines) >= LINES_PER_CHUNK:
            yield "".join(lines)
            lines.clear()
    yield "".join(lines)


def _csv(records: Iterator[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for n, record in enumerate(records, 1):
        writer.writerow(record)
        if n % LINES_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


@router.get("/exports/{kind}", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}})
def export(
    kind: Kind,
    services: ServicesDep,
    format: Literal["jsonl", "csv"] = "jsonl",
    journey_id: str | None = None,
) -> StreamingResponse:
    """Every touch or enrollment (optionally of one journey), as JSON lines or CSV."""
    records = rows(services.engine, kind, journey_id)
    columns = TOUCH_COLUMNS if kind == "touches" else ENROLLMENT_COLUMNS
    body = _jsonl(records) if format == "jsonl" else _csv(records, columns)
    filename = f"{kind}{'-' + journey_id if journey_id else ''}.{format}"
    return StreamingResponse(body, media_type=MEDIA[format],
                             headers={"Content-Disposition": attachment(filename)})


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` for ``filename`` whatever its characters (a journey id may
    be Chinese): an ASCII fallback, and the exact name in RFC 5987 form."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                       for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
