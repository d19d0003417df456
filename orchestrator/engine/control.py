"""``recall pause|resume|stop``: a journey's state, each change written to the audit log.

Pause holds due work (the dispatcher does not claim it); resume releases it; stop cancels
every touch not yet sent and ends the active enrollments. Measurement continues after stop:
goal events still convert enrollments inside their window.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert, select, update

from orchestrator.errors import InputError, NotFoundError
from orchestrator.journeys.suggest import did_you_mean
from orchestrator.store.db import begin_write
from orchestrator.store.tables import AUDIT_LOG as AUDIT
from orchestrator.store.tables import ENROLLMENTS, TOUCHES
from orchestrator.store.tables import JOURNEY_STATES as STATES

Action = Literal["pause", "resume", "stop"]
TARGET = {"pause": "paused", "resume": "active", "stop": "stopped"}


def audit(conn: Connection, *, at: datetime, actor: str, action: str, subject: str,
          detail: dict[str, Any] | None = None) -> None:
    conn.execute(insert(AUDIT).values(at=at, actor=actor, action=action, subject=subject,
                                      detail=detail or {}))


def change_state(engine: Engine, journey_id: str, action: Action, *, now: datetime,
                 actor: str = "cli", defined: Collection[str] = ()) -> dict[str, int]:
    """Pause, resume or stop a journey that has run here. ``defined``: the journey ids of the
    journeys folder, to tell a journey not launched yet from one that does not exist."""
    with begin_write(engine) as conn:
        current = conn.execute(select(STATES.c.state).where(STATES.c.journey_id == journey_id)
                               .with_for_update()).scalar()
        if current is None:
            raise _unknown(conn, journey_id, action, defined)
        if current == "stopped" and action != "stop":
            raise InputError(f"journey {journey_id!r} is stopped; a stopped journey cannot be "
                             f"{TARGET[action]} (change its id to run it again)")
        conn.execute(update(STATES).where(STATES.c.journey_id == journey_id)
                     .values(state=TARGET[action], updated_at=now))
        counts = {"cancelled_touches": 0, "ended_enrollments": 0}
        if action == "stop":
            counts["cancelled_touches"] = conn.execute(
                update(TOUCHES)
                .where(TOUCHES.c.journey_id == journey_id,
                       TOUCHES.c.status.in_(("scheduled", "claimed")))
                .values(status="cancelled", reason="stopped", claim_token=None)
            ).rowcount
            counts["ended_enrollments"] = conn.execute(
                update(ENROLLMENTS)
                .where(ENROLLMENTS.c.journey_id == journey_id, ENROLLMENTS.c.state == "active")
                .values(state="exited", exit_reason="stopped", exited_at=now, due_at=None)
            ).rowcount
        audit(conn, at=now, actor=actor, action=action, subject=f"journey:{journey_id}",
              detail={"from": current, "to": TARGET[action], **counts})
    return counts


def _unknown(conn: Connection, journey_id: str, action: Action,
             defined: Collection[str]) -> NotFoundError:
    if journey_id in defined:
        return NotFoundError(f"journey {journey_id!r} has never run here; nothing to {action} "
                             f"(launch it with `recall enroll {journey_id}`)")
    ids = sorted({*defined, *conn.execute(select(STATES.c.journey_id)).scalars()})
    return NotFoundError(f"no journey {journey_id!r}{did_you_mean(journey_id, ids)}; "
                         f"journeys: {', '.join(ids) or 'none'}")
