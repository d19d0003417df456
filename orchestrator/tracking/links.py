"""Short links: one unguessable code per touch (≥ 8 URL-safe chars), created in bulk."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, insert

from orchestrator.store.models import Link

CODE_BYTES = 8  # 11 URL-safe characters, 64 random bits: no enumeration


def new_code() -> str:
    return secrets.token_urlsafe(CODE_BYTES)


def short_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/s/{code}"


def create_links(
    conn: Connection, rows: Sequence[tuple[int, str]], *, now: datetime
) -> dict[int, str]:
    """Create one link per ``(touch_id, target_url)``; returns ``{touch_id: code}``."""
    codes = {touch_id: new_code() for touch_id, _ in rows}
    if rows:
        conn.execute(
            insert(Link.__table__),  # type: ignore[attr-defined]
            [
                {"code": codes[t], "touch_id": t, "target_url": url, "clicks": 0, "created_at": now}
                for t, url in rows
            ],
        )
    return codes
