"""``recall import users|events``: CSV and JSONL in the documented formats, in bulk.

``users.csv``: the header names every documented column (``REQUIRED``; values may be empty)
and then any attribute columns. The file is refused as a whole, with nothing written, when
the header lacks a required column or repeats one, when it is not UTF-8, or when it has no
``user_id`` column in any delimiter: a file separated by ``;``, tab or ``|`` (as spreadsheet
exports in some locales are) is read with that delimiter, and the report says so.

Row by row, bad rows are reported with their line number and reason and good rows are kept:
a row with more or fewer fields than the header, an empty ``user_id``, a bad flag or time
zone, a phone number that does not parse (numbers are stored in E.164; see
``orchestrator.audience.phones`` for the default region), an identity (OpenID, UnionID,
external_userid, phone) that another user already holds, or a ``user_id`` erased by
``recall forget``. One identity, one user: that is what makes caps per person hold across
identities, so a second user claiming a held identity is refused, never merged silently.

Both imports are idempotent (users upsert on ``user_id``, events skip known ``event_id``s).
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from orchestrator.audience.phones import to_e164
from orchestrator.engine.book import JourneyBook, upsert
from orchestrator.engine.ingest import ingest_events
from orchestrator.errors import InputError
from orchestrator.policy.consent import FORGOTTEN, hashed_identity, make_identity
from orchestrator.store.db import begin_write
from orchestrator.store.erase import pseudonym
from orchestrator.store.tables import OPT_OUTS, USERS

IDENTITY = ("openid", "unionid", "external_userid", "wecom_sender", "phone", "timezone")
CORE = ("user_id", *IDENTITY, "sms_opt_out", "wechat_followed")
REQUIRED = CORE
SHARED = ("openid", "unionid", "external_userid", "phone")  # one user each
DELIMITERS = (",", ";", "\t", "|")
CHUNK = 5_000
_IN = 2_000  # values per IN (...) list: inside every database's parameter limit
DEFAULT_REGION = "CN"
TRUE = {"1", "true", "yes", "y", "t"}
FALSE = {"0", "false", "no", "n", "f"}


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)
    notes: list[str] = field(default_factory=list)  # what the reader should know


def _flag(value: str, column: str) -> bool | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{column}: {value!r} is not a boolean (use true/false or 1/0)")


def user_row(raw: Mapping[str, str], now: datetime, region: str = DEFAULT_REGION
             ) -> dict[str, Any]:
    user_id = (raw.get("user_id") or "").strip()
    if not user_id:
        raise ValueError("user_id is empty")
    if len(user_id) > 128:
        raise ValueError("user_id is longer than 128 characters")
    row: dict[str, Any] = {k: (raw.get(k) or "").strip() or None for k in IDENTITY}
    if row["timezone"]:
        try:
            ZoneInfo(row["timezone"])
        except (KeyError, ValueError):
            raise ValueError(f"timezone: unknown zone {row['timezone']!r} (use e.g. "
                             "Asia/Shanghai)") from None
    if row["phone"]:
        row["phone"] = to_e164(row["phone"], region)
    for name in IDENTITY:
        if row[name] is not None and len(row[name]) > 128:
            raise ValueError(f"{name}: longer than 128 characters")
    row["user_id"] = user_id
    row["sms_opt_out"] = bool(_flag(raw.get("sms_opt_out") or "", "sms_opt_out"))
    row["wechat_followed"] = _flag(raw.get("wechat_followed") or "", "wechat_followed")
    row["attributes"] = {k: v for k, v in raw.items() if k and k not in CORE and v}
    row["erased"] = False
    row["created_at"] = row["updated_at"] = now
    return row


# ---------------------------------------------------------------- reading users.csv


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8 before anything is written (line of the first bad
    byte): spreadsheets in China often save GBK."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as fh:
        while True:
            block = fh.read(1 << 20)
            try:  # the last call (an empty block) also refuses a sequence cut off at the end
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                bad = line + block[: exc.start].count(b"\n")
                raise InputError(f"{path}:{bad}: the file is not UTF-8 text; save it as UTF-8 "
                                 "(Excel: \"CSV UTF-8\")") from None
            if not block:
                return
            line += block.count(b"\n")


def _header(path: Path, first_line: str) -> tuple[list[str], str]:
    """The header's column names and the delimiter that yields them."""
    for delimiter in DELIMITERS:
        names = [n.strip() for n in next(csv.reader([first_line], delimiter=delimiter), [])]
        if "user_id" in names:
            return names, delimiter
    shown = first_line.strip()[:80]
    raise InputError(f"{path}:1: the header has no user_id column (read {shown!r}); the first "
                     f"line must name the columns: {','.join(REQUIRED)}")


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(
            f"{path}:1: the header lacks the required column{'s' * (len(missing) > 1)} "
            f"{', '.join(missing)}; every users.csv names {','.join(REQUIRED)} (values may be "
            "empty), then any attribute columns"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or "" in names:
        what = f"repeats {', '.join(repeated)}" if repeated else "has an unnamed column"
        raise InputError(f"{path}:1: the header {what}; name each column once")


def _rows(path: Path, report: ImportReport) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(line, row) or (line, error) per data row, after the header was checked."""
    _check_utf8(path)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        names, delimiter = _header(path, first)
        _check_columns(path, names)
        if delimiter != ",":
            shown = {"\t": "tab"}.get(delimiter, repr(delimiter))
            report.notes.append(f"{path}: read as {shown}-separated (the header uses "
                                f"{shown}, not commas)")
        reader = csv.reader(fh, delimiter=delimiter)
        start = 2
        for fields in reader:
            line, start = start, reader.line_num + 2
            if not fields or fields == [""]:
                continue
            if len(fields) != len(names):
                yield line, _width_error(len(fields), len(names), delimiter)
                continue
            yield line, dict(zip(names, fields, strict=True))


def _width_error(got: int, want: int, delimiter: str) -> str:
    if got < want:
        return (f"{got} fields where the header has {want}: a short row (an empty value still "
                "needs its delimiter)")
    return (f"{got} fields where the header has {want}: quote values that contain "
            f"{delimiter!r}")


# ---------------------------------------------------------------- importing users


def import_users(engine: Engine, path: Path, *, now: datetime, region: str = DEFAULT_REGION,
                 progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import ``users.csv``; ``region`` reads phone numbers written without a country."""
    report = ImportReport()
    batch: list[tuple[int, dict[str, Any]]] = []
    for line, raw in _rows(path, report):
        if isinstance(raw, str):
            report.errors.append((line, raw))
            continue
        try:
            batch.append((line, user_row(raw, now, region)))
        except ValueError as exc:
            report.errors.append((line, str(exc)))
        if len(batch) >= CHUNK:
            _import_chunk(engine, batch, report, progress)
            batch = []
    _import_chunk(engine, batch, report, progress)
    report.errors.sort()
    return report


def _import_chunk(engine: Engine, batch: list[tuple[int, dict[str, Any]]],
                  report: ImportReport, progress: Callable[[int], None] | None) -> None:
    with begin_write(engine) as conn:
        kept = _without_conflicts(conn, batch, report)
        report.imported += _upsert_users(conn, [row for _, row in kept])
        report.notes += _forgotten_identities(conn, kept)
    if progress:
        progress(len(batch))


def _without_conflicts(conn: Connection, batch: list[tuple[int, dict[str, Any]]],
                       report: ImportReport) -> list[tuple[int, dict[str, Any]]]:
    """The rows whose user is not erased and whose identities no other user holds."""
    erased = _erased_ids(conn, [row["user_id"] for _, row in batch])
    held = _holders(conn, batch)
    kept: list[tuple[int, dict[str, Any]]] = []
    for line, row in batch:
        problem = _conflict(row, erased, held)
        if problem is None:
            kept.append((line, row))
            for kind in SHARED:  # later rows of this chunk see this one's identities
                if row[kind]:
                    held.setdefault((kind, row[kind]), (row["user_id"], line))
        else:
            report.errors.append((line, problem))
    return kept


def _conflict(row: dict[str, Any], erased: set[str],
              held: dict[tuple[str, str], tuple[str, int | None]]) -> str | None:
    if row["user_id"] in erased:
        return (f"user_id {row['user_id']!r} was erased by `recall forget`; not imported "
                "(the erasure stands: remove the row from the source)")
    for kind in SHARED:
        holder = held.get((kind, row[kind])) if row[kind] else None
        if holder is not None and holder[0] != row["user_id"]:
            where = f" (line {holder[1]})" if holder[1] is not None else ""
            return (f"{kind} {row[kind]!r} already belongs to user {holder[0]!r}{where}; one "
                    "identity, one user: merge the two rows or correct one")
    return None


def _erased_ids(conn: Connection, user_ids: Sequence[str]) -> set[str]:
    by_alias = {pseudonym(u): u for u in user_ids}
    found: set[str] = set()
    for chunk in _chunked(list(by_alias), _IN):
        found.update(by_alias[a] for a in conn.execute(
            sa.select(USERS.c.user_id).where(USERS.c.user_id.in_(chunk),
                                              USERS.c.erased.is_(True))).scalars())
    return found


def _holders(conn: Connection, batch: list[tuple[int, dict[str, Any]]]
             ) -> dict[tuple[str, str], tuple[str, int | None]]:
    """Who holds each identity of the chunk in the database (two queries per kind at most
    per 2,000 values), then, for identities repeated inside the chunk, its first row."""
    held: dict[tuple[str, str], tuple[str, int | None]] = {}
    for kind in SHARED:
        values = sorted({row[kind] for _, row in batch if row[kind]})
        column = USERS.c[kind]
        for chunk in _chunked(values, _IN):
            for user_id, value in conn.execute(sa.select(USERS.c.user_id, column)
                                               .where(column.in_(chunk))):
                held.setdefault((kind, value), (user_id, None))
    return held


def _forgotten_identities(conn: Connection, kept: list[tuple[int, dict[str, Any]]]
                          ) -> list[str]:
    """Notes for imported rows that carry an identity of a forgotten person."""
    by_hash: dict[str, tuple[int, str]] = {}
    for line, row in kept:
        for kind in SHARED:
            if row[kind]:
                by_hash[hashed_identity(make_identity(kind, row[kind]))] = (line, kind)
    notes = []
    for chunk in _chunked(sorted(by_hash), _IN):
        for identity in conn.execute(sa.select(OPT_OUTS.c.identity).distinct().where(
                OPT_OUTS.c.identity.in_(chunk), OPT_OUTS.c.reason == FORGOTTEN)).scalars():
            line, kind = by_hash[identity]
            notes.append(f"line {line}: the {kind} belongs to a person erased by `recall "
                         "forget`; imported, but never sent anything")
    return sorted(notes)


def _upsert_users(conn: Connection, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    unique = list({r["user_id"]: r for r in rows}.values())
    stmt = upsert(conn.engine)(USERS)
    updated = {c: stmt.excluded[c] for c in (*IDENTITY, "sms_opt_out", "wechat_followed",
                                                 "attributes", "updated_at")}
    conn.execute(stmt.on_conflict_do_update(index_elements=["user_id"], set_=updated), unique)
    return len(unique)


def _chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
