"""``GET /v1/journeys``: every journey the engine knows, its state and enrollment counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from orchestrator.api.deps import ApiKey, ServicesDep
from orchestrator.store.tables import ENROLLMENTS
from orchestrator.store.tables import JOURNEY_STATES as STATES

router = APIRouter(prefix="/v1", tags=["journeys"], dependencies=[ApiKey])


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


@router.get("/journeys/{journey_id}/report")
def journey_report(journey_id: str, services: ServicesDep) -> dict[str, Any]:
    """The journey's report: SPEC §8 JSON (definitions in docs/reports.md); 404 if unknown."""
    from orchestrator.errors import NotFoundError
    from orchestrator.reports.funnel import journey_report as build_report

    book = services.journeys.book()
    if book is None:
        raise NotFoundError(f"no journeys folder at {services.settings.journeys_dir}; "
                            "set RECALL_JOURNEYS_DIR")
    journey = book.latest(journey_id)
    return build_report(services.engine, journey, book.policy_for(journey))
