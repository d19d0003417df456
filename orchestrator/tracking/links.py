"""Short links: one unguessable code per touch (≥ 8 URL-safe chars), created in bulk.

A click (``GET /s/{code}``) is recorded with one write: the link's raw ``clicks`` count and
``first_clicked_at``; the touch's ``clicked_at`` is written on its first click only. The visitor is
sent on to the target with ``utm_source=recall&utm_medium=<channel>&utm_campaign=<journey>
&touch=<code>`` appended to the target's own query, which is kept byte for byte.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Connection, bindparam, func, insert, select, update

from orchestrator.store.tables import LINKS, TOUCHES
from orchestrator.store.types import UTCDateTime

CODE_BYTES = 8  # 11 URL-safe characters, 64 random bits: no enumeration
UTM_SOURCE = "recall"


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
            insert(LINKS),
            [
                {"code": codes[t], "touch_id": t, "target_url": url, "clicks": 0, "created_at": now}
                for t, url in rows
            ],
        )
    return codes


def with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` appended; keys the URL already has keep the URL's value.

    The existing query string is kept exactly as written (no re-encoding), and a fragment
    stays at the end where browsers expect it.
    """
    parts = urlsplit(url)
    present = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = urlencode({k: v for k, v in params.items() if k not in present})
    if not extra:
        return url
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def without_param(url: str, key: str) -> str:
    """``url`` without query parameter ``key`` (untouched when it has none)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if all(k != key for k, _ in pairs):
        return url
    return urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in pairs if k != key])))


def tracked_target(target_url: str, *, channel: str, journey_id: str, code: str | None) -> str:
    """The redirect target of a click: the target plus Recall's UTM and ``touch`` parameters.

    An operator's own ``utm_*`` in the target wins (they asked for it); ``touch`` is
    always this touch's code, because the landing page uses it to identify the click.
    """
    params = {"utm_source": UTM_SOURCE, "utm_medium": channel, "utm_campaign": journey_id}
    if code:
        target_url = without_param(target_url, "touch")
        params["touch"] = code
    return with_query(target_url, params)


@dataclass(frozen=True)
class Click:
    code: str
    target_url: str
    touch_id: int | None
    channel: str
    journey_id: str

    @property
    def redirect_url(self) -> str:
        return tracked_target(
            self.target_url, channel=self.channel, journey_id=self.journey_id, code=self.code
        )


def keep_first(column: Any, now: datetime) -> Any:
    """SQL for "the column's value if set, else ``now``": stamps a first occurrence once."""
    # The bound value goes through UTCDateTime (naive UTC on SQLite, aware on PostgreSQL).
    return func.coalesce(column, bindparam("now_", now, type_=UTCDateTime()))


def record_click(conn: Connection, code: str, *, now: datetime) -> Click | None:
    """Count one click on ``code`` and stamp the first one; ``None`` for an unknown code.

    One read, then one write (the link's count); the touch is written only on its first
    click, so a repeated click costs one UPDATE.
    """
    found = conn.execute(
        select(LINKS.c.target_url, LINKS.c.touch_id, TOUCHES.c.channel, TOUCHES.c.journey_id,
               TOUCHES.c.clicked_at)
        .select_from(LINKS.outerjoin(TOUCHES, TOUCHES.c.id == LINKS.c.touch_id))
        .where(LINKS.c.code == code)
    ).first()
    if found is None:
        return None
    conn.execute(
        update(LINKS)
        .where(LINKS.c.code == code)
        .values(clicks=LINKS.c.clicks + 1,
                first_clicked_at=keep_first(LINKS.c.first_clicked_at, now))
    )
    if found.touch_id is not None and found.clicked_at is None:
        conn.execute(
            update(TOUCHES)
            .where(TOUCHES.c.id == found.touch_id)
            .values(clicked_at=keep_first(TOUCHES.c.clicked_at, now))
        )
    return Click(code=code, target_url=found.target_url, touch_id=found.touch_id,
                 channel=found.channel or "unknown", journey_id=found.journey_id or "unknown")
