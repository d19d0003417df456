"""``GET /v1/journeys``: every journey the engine knows, its state and enrollment counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from orchestrator.api.deps import ApiKey, ServicesDep

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
    from orchestrator.reports.overview import journey_states

    with services.engine.connect() as conn:
        return JourneysOut(journeys=[JourneyOut(**row) for row in journey_states(conn)])


@router.get("/journeys/{journey_id}/report")
def journey_report(journey_id: str, services: ServicesDep) -> dict[str, Any]:
    """The journey's report as JSON (definitions in docs/reports.md); 404 if unknown."""
    from orchestrator.audience.config import load_audience_config
    from orchestrator.errors import NotFoundError
    from orchestrator.reports.funnel import journey_report as build_report

    book = services.journeys.book()
    if book is None:
        raise NotFoundError(f"no journeys folder at {services.settings.journeys_dir}; "
                            "set RECALL_JOURNEYS_DIR")
    journey = book.latest(journey_id)
    return build_report(services.engine, journey, book.policy_for(journey),
                        now=services.clock.now(),
                        activity_events=load_audience_config(
                            settings=services.settings).activity_events)
