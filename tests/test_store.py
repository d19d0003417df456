from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlmodel import select

from orchestrator.store.clock import StoredClock
from orchestrator.store.db import session_scope
from orchestrator.store.models import Enrollment, Event
from orchestrator.store.tables import EVENTS
from orchestrator.store.types import among

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_times_round_trip_as_aware_utc(db_engine: Engine) -> None:
    with session_scope(db_engine) as s:
        s.add(Event(event_id="e1", user_id="u1", name="login", ts=T0))
    with session_scope(db_engine) as s:
        event = s.exec(select(Event)).one()
    assert event.ts == T0 and event.ts.tzinfo is not None


def test_naive_datetime_is_refused(db_engine: Engine) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        with session_scope(db_engine) as s:
            s.add(Event(event_id="e1", user_id="u1", name="login", ts=T0.replace(tzinfo=None)))


def test_one_active_enrollment_per_journey_and_user(db_engine: Engine) -> None:
    def enrollment(state: str) -> Enrollment:
        return Enrollment(
            journey_id="j", journey_version="v", user_id="u", arm="treatment",
            state=state, entered_at=T0,
        )

    with session_scope(db_engine) as s:
        s.add(enrollment("completed"))
        s.add(enrollment("active"))
    with pytest.raises(sa.exc.IntegrityError):
        with session_scope(db_engine) as s:
            s.add(enrollment("active"))


def test_stored_clock_is_shared_and_falls_back_to_wall_time(db_engine: Engine) -> None:
    clock = StoredClock(db_engine)
    before = datetime.now(UTC)
    assert clock.now() >= before
    clock.set(T0)
    assert StoredClock(db_engine).now() == T0
    clock.set(T0 + timedelta(days=1))
    assert StoredClock(db_engine).now() == T0 + timedelta(days=1)


LISTS = [[], ["e1"], ["e0", "e2", "e9", "nope"], [f"e{n}" for n in range(5000)]]


@pytest.mark.parametrize("values", LISTS)
def test_among_selects_what_in_selects_with_one_statement_text(db_engine: Engine,
                                                               values: list[str]) -> None:
    with db_engine.begin() as conn:
        conn.execute(sa.insert(EVENTS), [{"event_id": f"e{n}", "user_id": f"u{n % 3}",
                                          "name": "login", "ts": T0} for n in range(10)])
        query = sa.select(EVENTS.c.event_id).order_by(EVENTS.c.event_id)
        expected = conn.execute(query.where(EVENTS.c.event_id.in_(values))).scalars().all()
        found = conn.execute(query.where(among(EVENTS.c.event_id, values))).scalars().all()
        assert found == expected
        users = conn.execute(sa.select(sa.func.count()).where(
            among(EVENTS.c.user_id, {"u1", "u2"}))).scalar_one()
        assert users == 6
    one, many = (str(query.where(among(EVENTS.c.event_id, v)).compile(db_engine))
                 for v in (["a"], values + ["b"]))
    assert one == many  # the list is one parameter: the statement never grows with it


def test_migrations_build_exactly_the_models(db_engine: Engine) -> None:
    """The alembic chain (linear, run by the fixture) and the SQLModel tables agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with db_engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
