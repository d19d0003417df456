"""``GET /healthz`` (database and Redis answer) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from orchestrator.api.deps import Services, ServicesDep
from orchestrator.store.redis import get_redis

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


def _check_db(services: Services) -> str:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not healthy"; the log says why
        log.warning("healthz: database: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"


def _check_redis(services: Services) -> str:
    try:
        get_redis(services.settings).ping()
    except Exception as exc:  # ConfigError (no Redis configured) or a connection error
        log.warning("healthz: redis: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/healthz")
def healthz(services: ServicesDep) -> JSONResponse:
    """200 when the database and Redis answer, else 503 naming the one that does not."""
    checks = {"db": _check_db(services), "redis": _check_redis(services)}
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if healthy else "unavailable", **checks},
                        status_code=200 if healthy else 503)


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus text format (see ``orchestrator.api.metrics`` for the series)."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
