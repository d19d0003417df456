"""The HTTP API (SPEC §8): ``create_app`` builds it; ``recall api`` serves it with uvicorn.

Authentication: ``/v1/events``, ``/v1/journeys…`` and exports need ``Authorization: Bearer
<key>``; webhooks, callbacks and links are public and checked by their own signatures.
Routes are in ``orchestrator.api.routes``; the reference is ``docs/api.md``.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from orchestrator.api.deps import Services
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.limits import MAX_BODY_BYTES, BodyLimit
from orchestrator.api.metrics import ApiMetrics
from orchestrator.api.routes import (
    callbacks,
    events,
    exports,
    health,
    journeys,
    links,
    webhooks,
)
from orchestrator.clock import Clock
from orchestrator.config import Settings, get_settings


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over ``engine`` (default: the configured database) and ``clock`` (default: the
    stored business clock, wall time unless ``recall simulate`` set a virtual one)."""
    from orchestrator.store.clock import StoredClock
    from orchestrator.store.db import get_engine

    settings = settings or get_settings()
    engine = engine or get_engine(settings)
    clock = clock or StoredClock(engine)
    app = FastAPI(
        title="Recall",
        summary="Multi-channel user-recall campaign orchestrator",
        version="1.0",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.services = Services(settings, engine, clock, ApiMetrics(engine, clock))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    for module in (events, journeys, exports, webhooks, callbacks, links, health):
        app.include_router(module.router)
    return app
