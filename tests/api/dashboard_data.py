"""A dashboard over the hand-built report journey (``tests.reports.conftest``) with people
behind its touches: phones, OpenIDs and external_userids that must never appear in full."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine, insert, update

from orchestrator.api.app import create_app
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from orchestrator.store.tables import JOURNEY_STATES, USERS
from tests.reports.conftest import JOURNEY_ID, T0, seed, write_journeys

# One person per treatment user t1..t8 of the report dataset (and c1..c4 in control).
PEOPLE = [
    {"user_id": f"{arm}{i}", "phone": f"+861380013{8000 + i:04d}",
     "openid": f"o6_bmjrPTlm6_2sgVt7hMZOPfL{i:02d}{arm}",
     "external_userid": f"wmAbCdEfGhIjKlMnOpQrStUvWx{i:02d}{arm}"}
    for arm in ("t", "c") for i in range(1, 9)
]
SECRETS = [p[k] for p in PEOPLE for k in ("phone", "openid", "external_userid")]


def seed_dashboard(engine: Engine, root: Path) -> None:
    """The report dataset, the people behind it, and the journey files under ``root``."""
    write_journeys(root)
    seed(engine)
    with engine.begin() as conn:
        conn.execute(insert(USERS), [{**p, "attributes": {}} for p in PEOPLE])


def pause(engine: Engine, journey_id: str = JOURNEY_ID) -> None:
    with engine.begin() as conn:
        conn.execute(update(JOURNEY_STATES).where(JOURNEY_STATES.c.journey_id == journey_id)
                     .values(state="paused"))


def dashboard_app(settings: Settings, engine: Engine, *, local_only: bool) -> FastAPI:
    """The API as ``recall run`` builds it on loopback (``local_only``) or as an exposed
    deployment does (closed: a key or a session is needed)."""
    return create_app(settings, engine=engine, clock=ManualClock(T0.replace(day=20)),
                      allow_sandbox_secrets=local_only)
