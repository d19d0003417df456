"""``POST /v1/events``: behaviour events in, enrollment from ``entry.event`` in the same call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from orchestrator.api.deps import ApiKey, ServicesDep

MAX_EVENTS = 10_000
router = APIRouter(prefix="/v1", tags=["events"], dependencies=[ApiKey])


class EventsIn(BaseModel):
    events: list[Any] = Field(
        max_length=MAX_EVENTS,
        description="Events in the documented format: event_id, user_id, name, ts (ISO 8601 with "
        "offset), value, props. At most 10,000 per request.",
    )


class RejectedOut(BaseModel):
    index: int
    error: str


class IngestOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedOut]


@router.post("/events", response_model=IngestOut)
def post_events(body: EventsIn, services: ServicesDep) -> IngestOut:
    """Ingest events idempotently (``event_id``): new ones are accepted, known ones are
    duplicates, invalid ones are rejected by index while the rest go in."""
    objects = [(i, e) for i, e in enumerate(body.events) if isinstance(e, Mapping)]
    rejected = [
        RejectedOut(index=i, error="event must be a JSON object")
        for i, e in enumerate(body.events)
        if not isinstance(e, Mapping)
    ]
    result = services.ingest([e for _, e in objects])
    rejected += [RejectedOut(index=objects[r.index][0], error=r.error) for r in result.rejected]
    return IngestOut(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=sorted(rejected, key=lambda r: r.index),
    )
