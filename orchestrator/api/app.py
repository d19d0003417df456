"""The HTTP API: ``create_app`` builds it; ``recall api`` serves it with uvicorn.

Authentication: ``/v1/events``, ``/v1/journeys…`` and exports need ``Authorization: Bearer
<key>``; webhooks, callbacks and links are public and checked by their own signatures; the
dashboard (``/``, ``/journeys/…``) needs a key or a signed-in session, except on the
embedded stack on loopback (``orchestrator.api.session``).
Routes are in ``orchestrator.api.routes``; the reference is ``docs/api.md``.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import Engine

from orchestrator.api.deps import Services
from orchestrator.api.errors import install_error_handlers
from orchestrator.api.limits import MAX_BODY_BYTES, BodyLimit
from orchestrator.api.metrics import ApiMetrics
from orchestrator.api.ratelimit import RateLimiter
from orchestrator.api.routes import (
    callbacks,
    dashboard,
    events,
    exports,
    health,
    journeys,
    links,
    webhooks,
)
from orchestrator.clock import Clock, SystemClock
from orchestrator.config import Settings, get_settings
from orchestrator.logs import configure_logging

LOGIN_ATTEMPTS_PER_MIN = 10  # dashboard sign-in attempts per client address


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Clock | None = None,
    wall_clock: Clock | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    allow_sandbox_secrets: bool = False,
) -> FastAPI:
    """The API over ``engine`` (default: the configured database) and ``clock`` (default: the
    stored business clock, wall time unless ``recall simulate`` set a virtual one).

    ``wall_clock`` (default: the system clock) is real time, for callback timestamps and
    landing-token age. ``allow_sandbox_secrets`` lets the sandbox placeholder secrets verify
    webhooks, callbacks and landing tokens; only a server that listens on loopback for the
    embedded stack passes it (``orchestrator.api.exposure``). Fail closed by default.
    """
    from orchestrator.store.clock import StoredClock
    from orchestrator.store.db import get_engine

    configure_logging()  # masks personal data in every log record of this process
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
    app.state.services = Services(
        settings, engine, clock, ApiMetrics(engine, clock, refresh_s=settings.metrics_refresh_s),
        wall_clock=wall_clock or SystemClock(), allow_sandbox_secrets=allow_sandbox_secrets,
    )
    app.state.link_limiter = RateLimiter(settings.link_requests_per_min)
    app.state.login_limiter = RateLimiter(LOGIN_ATTEMPTS_PER_MIN)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
    for module in (events, journeys, exports, webhooks, callbacks, links, health, dashboard):
        app.include_router(module.router)
    return app
