"""``GET /v1/journeys``: every journey the engine knows, its state and enrollment counts."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from orchestrator.api.deps import ApiKey, ServicesDep
from orchestrator.store.models import Enrollment, JourneyState

router = APIRouter(prefix="/v1", tags=["journeys"], dependencies=[ApiKey])
STATES = JourneyState.__table__  # type: ignore[attr-defined]
ENROLLMENTS = Enrollment.__table__  # type: ignore[attr-defined]


class JourneyOut(BaseModel):
    journey_id: str
    version: str
    state: str  # active | paused | stopped
    priority: int
    last_schedule_run_at: datetime | None
    updated_at: datetime | None
    enrollments: dict[str, int]  # by enrollment state: active, completed, exited


class JourneysOut(BaseModel):
    journeys: list[JourneyOut]


@router.get("/journeys", response_model=JourneysOut)
def list_journeys(services: ServicesDep) -> JourneysOut:
    with services.engine.connect() as conn:
        states = conn.execute(select(STATES).order_by(STATES.c.journey_id)).mappings().all()
        counts = conn.execute(
            select(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.state, func.count())
            .group_by(ENROLLMENTS.c.journey_id, ENROLLMENTS.c.state)
        ).all()
    by_journey: dict[str, dict[str, int]] = {}
    for journey_id, state, n in counts:
        by_journey.setdefault(journey_id, {})[state] = n
    return JourneysOut(journeys=[
        JourneyOut(**row, enrollments=by_journey.get(row["journey_id"], {})) for row in states
    ])
