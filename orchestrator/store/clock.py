"""The virtual business clock kept in the database, shared by every process."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.clock import as_utc, utcnow
from orchestrator.store.tables import CLOCK_STATE as _TABLE


class StoredClock:
    """Business time: the virtual value in ``clock_state`` when one is set, else wall time.

    Only the simulate driver calls ``set``; everyone else only reads.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def now(self) -> datetime:
        with self._engine.connect() as conn:
            value = conn.execute(select(_TABLE.c.virtual_now).where(_TABLE.c.id == 1)).scalar()
        return as_utc(value) if value is not None else utcnow()

    def set(self, value: datetime | None) -> None:
        insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        stmt = insert(_TABLE).values(id=1, virtual_now=value)
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"virtual_now": value})
        with self._engine.begin() as conn:
            conn.execute(stmt)
