"""``recall import users|events``: CSV and JSONL in the SPEC §8 formats, in bulk.

Bad rows are reported with their line number and reason; good rows are kept. Both imports
are idempotent (users upsert on ``user_id``, events skip known ``event_id``s).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from orchestrator.engine.book import JourneyBook, upsert
from orchestrator.engine.ingest import ingest_events
from orchestrator.store.db import begin_write
from orchestrator.store.tables import USERS

IDENTITY = ("openid", "unionid", "external_userid", "wecom_sender", "phone", "timezone")
CORE = ("user_id", *IDENTITY, "sms_opt_out", "wechat_followed")
CHUNK = 5_000
TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f"}


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


def _flag(value: str, column: str) -> bool | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{column}: {value!r} is not a boolean (use true/false or 1/0)")


def user_row(raw: Mapping[str, str], now: datetime) -> dict[str, Any]:
    user_id = (raw.get("user_id") or "").strip()
    if not user_id:
        raise ValueError("user_id is empty")
    row: dict[str, Any] = {k: (raw.get(k) or "").strip() or None for k in IDENTITY}
    if row["timezone"]:
        try:
            ZoneInfo(row["timezone"])
        except (KeyError, ValueError):
            raise ValueError(f"timezone: unknown zone {row['timezone']!r} (use e.g. "
                             "Asia/Shanghai)") from None
    row["user_id"] = user_id
    row["sms_opt_out"] = bool(_flag(raw.get("sms_opt_out") or "", "sms_opt_out"))
    row["wechat_followed"] = _flag(raw.get("wechat_followed") or "", "wechat_followed")
    row["attributes"] = {k: v for k, v in raw.items() if k and k not in CORE and v}
    row["erased"] = False
    row["created_at"] = row["updated_at"] = now
    return row


def import_users(engine: Engine, path: Path, *, now: datetime,
                 progress: Callable[[int], None] | None = None) -> ImportReport:
    report = ImportReport()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "user_id" not in reader.fieldnames:
            raise ValueError(f"{path}:1: the header must start with user_id (SPEC users.csv)")
        batch: list[dict[str, Any]] = []
        for raw in reader:
            try:
                batch.append(user_row(raw, now))
            except ValueError as exc:
                report.errors.append((reader.line_num, str(exc)))
            if len(batch) >= CHUNK:
                report.imported += _upsert_users(engine, batch)
                if progress:
                    progress(len(batch))
                batch = []
        report.imported += _upsert_users(engine, batch)
        if progress:
            progress(len(batch))
    return report


def _upsert_users(engine: Engine, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    unique = list({r["user_id"]: r for r in rows}.values())
    stmt = upsert(engine)(USERS)
    updated = {c: stmt.excluded[c] for c in (*IDENTITY, "sms_opt_out", "wechat_followed",
                                                 "attributes", "updated_at")}
    with begin_write(engine) as conn:
        conn.execute(stmt.on_conflict_do_update(index_elements=["user_id"], set_=updated), unique)
    return len(unique)


def read_events(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, event dict) or (line number, error) per non-empty line."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON: {exc.msg} at column {exc.colno}"
                continue
            yield number, value if isinstance(value, dict) else "not a JSON object"


def import_events(engine: Engine, path: Path, *, now: datetime,
                  journeys: JourneyBook | None = None,
                  progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import events; journeys are triggered only when ``journeys`` is given."""
    report = ImportReport()
    lines: list[int] = []
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        result = ingest_events(engine, batch, now=now, journeys=journeys)
        report.imported += result.accepted
        report.duplicates += result.duplicates
        report.errors += [(lines[r.index], r.error) for r in result.rejected]
        if progress:
            progress(len(batch))
        batch.clear()
        lines.clear()

    for number, item in read_events(path):
        if isinstance(item, str):
            report.errors.append((number, item))
            continue
        lines.append(number)
        batch.append(item)
        if len(batch) >= CHUNK:
            flush()
    if batch:
        flush()
    return report
