"""The sandbox's own record of every provider call it received, in order.

Benchmarks push 10,000-recipient mass sends and thousands of SMS a second through the
sandbox, so an entry keeps the request body as the raw bytes received (about the size of the
JSON, far smaller than the parsed list of strings) and parses it only when someone reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from orchestrator.sandbox.calls import BodyKind, Provider


@dataclass(slots=True)
class RecordEntry:
    seq: int
    provider: Provider
    method: str
    path: str
    at: datetime
    outcome: str  # accepted | duplicate | error:<code> | fault:<kind>
    raw: bytes  # request body as received (json/form)
    body_kind: BodyKind
    summary: dict[str, Any] | None  # the body for GET/multipart calls (raw is empty then)
    recipients_field: str | None
    excluded: dict[str, str] | None = None
    ref: str | None = None
    fault: str | None = None  # drop/timeout/latency: the call ran, the answer was disturbed

    def body(self) -> dict[str, Any]:
        """The parsed request body (JSON object or form fields)."""
        if self.summary is not None:
            return self.summary
        if not self.raw:
            return {}
        if self.body_kind == "form":
            return dict(parse_qsl(self.raw.decode("utf-8"), keep_blank_values=True))
        try:
            parsed = json.loads(self.raw)
        except ValueError:
            return {"_unparsed": self.raw.decode("utf-8", "replace")}
        return parsed if isinstance(parsed, dict) else {"_json": parsed}

    def recipients(self, body: dict[str, Any] | None = None) -> list[str]:
        if self.recipients_field is None:
            return []
        value = (body if body is not None else self.body()).get(self.recipients_field)
        if isinstance(value, list):
            return [str(v) for v in value]
        return [str(value)] if value not in (None, "") else []

    def as_json(self) -> dict[str, Any]:
        body = self.body()
        return {
            "seq": self.seq,
            "provider": self.provider,
            "method": self.method,
            "path": self.path,
            "body": body,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "recipients": self.recipients(body),
            "excluded": self.excluded or {},
            "ref": self.ref,
            "fault": self.fault,
        }


class Record:
    """Append-only list of entries; ``seq`` starts at 1 and never repeats until ``clear``."""

    def __init__(self) -> None:
        self._entries: list[RecordEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def next_seq(self) -> int:
        return len(self._entries) + 1

    def append(self, entry: RecordEntry) -> None:
        self._entries.append(entry)

    def clear(self) -> None:
        self._entries = []

    def select(
        self,
        provider: str | None = None,
        *,
        since: int = 0,
        outcome: str | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordEntry]:
        """Entries with ``seq > since``, oldest first, optionally of one provider/outcome."""
        taken = 0
        for entry in self._entries[since:]:
            if provider and entry.provider != provider:
                continue
            if outcome and entry.outcome != outcome:
                continue
            if limit is not None and taken >= limit:
                return
            taken += 1
            yield entry
