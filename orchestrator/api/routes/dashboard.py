"""The dashboard: ``GET /`` (every journey, its state and headline numbers) and ``GET
/journeys/{journey_id}`` (the journey's report, its state and its recent touches), plus
the sign-in form that guards them (``orchestrator.api.session``).

Server-rendered HTML (``orchestrator.reports.html``), no script: each page is one
document with inline SVG charts, sent with a Content-Security-Policy that lets it load
nothing from anywhere, so it works offline and nothing on it can call out.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from orchestrator.api import session
from orchestrator.api.deps import Services, ServicesDep
from orchestrator.clock import utcnow
from orchestrator.errors import NotFoundError
from orchestrator.reports.html import render_page

router = APIRouter(tags=["dashboard"])

# Nothing is fetched: no script, font, image or style from anywhere (styles are inline),
# forms post to this site only, and no other site may frame the pages.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # business figures stay out of shared caches
}


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render_page(template, **context), status_code=status,
                        headers=SECURITY_HEADERS)


def _signed_in(request: Request, services: Services) -> bool:
    """A valid session cookie, or ``Authorization: Bearer <key>`` (scripts, curl)."""
    keys = services.settings.api_key_list
    token = request.cookies.get(session.COOKIE)
    if token and session.is_valid(token, keys, now=services.wall_clock.now().timestamp()):
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and session.matching_key(credentials.strip(), keys)


def _gate(request: Request, services: Services) -> Response | None:
    """``None`` when the visitor may see the dashboard, else the way to the sign-in form."""
    if services.local_only or _signed_in(request, services):
        return None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _activity_events(services: Services) -> tuple[str, ...]:
    from orchestrator.audience.config import load_audience_config

    return load_audience_config(settings=services.settings).activity_events


def _frame(request: Request, services: Services) -> dict[str, Any]:
    return {"signed_in": not services.local_only and session.COOKIE in request.cookies,
            "generated_at": utcnow(), "now": services.clock.now()}


@router.get("/", response_class=HTMLResponse, summary="Dashboard: journeys")
def index(request: Request, services: ServicesDep) -> Response:
    """Every journey the engine knows: state and headline numbers (HTML)."""
    if (redirect := _gate(request, services)) is not None:
        return redirect
    from orchestrator.reports.charts import forest_chart
    from orchestrator.reports.overview import overview

    journeys = overview(services.engine, services.journeys.book(), services.clock.now(),
                        _activity_events(services))
    forest = forest_chart([
        {"label": j["journey_id"], "uplift": j["headline"]["uplift"]}
        for j in journeys if j["headline"]
    ])
    return _page("dashboard/index.html.j2", journeys=journeys, forest=forest,
                 **_frame(request, services))


@router.get("/journeys/{journey_id}", response_class=HTMLResponse,
            summary="Dashboard: one journey")
def journey_page(journey_id: str, request: Request, services: ServicesDep) -> Response:
    """The journey's report, state and most recent touches (identities masked), as HTML."""
    if (redirect := _gate(request, services)) is not None:
        return redirect
    from orchestrator.reports.overview import headline, journey_detail

    try:
        state, report, touches = journey_detail(services.engine, services.journeys.book(),
                                                journey_id, services.clock.now(),
                                                _activity_events(services))
    except NotFoundError as exc:
        return _page("dashboard/missing.html.j2", 404, message=str(exc),
                     **_frame(request, services))
    return _page("dashboard/journey.html.j2", j=state, r=report, h=headline(report),
                 touches=touches, **_frame(request, services))


@router.get("/login", response_class=HTMLResponse, summary="Dashboard: sign-in form")
def login_form(request: Request, services: ServicesDep, next: str = "/") -> Response:
    if services.local_only or _signed_in(request, services):
        return RedirectResponse(session.safe_next(next), status_code=303)
    return _login_page(request, services, next)


def _login_page(request: Request, services: Services, next_path: str,
                error: str | None = None, status: int = 200) -> HTMLResponse:
    return _page("dashboard/login.html.j2", status, next=session.safe_next(next_path),
                 error=error, keys_configured=bool(services.settings.api_key_list),
                 session_hours=session.SESSION_S // 3600,
                 **(_frame(request, services) | {"signed_in": False}))


@router.post("/login", response_class=HTMLResponse, summary="Dashboard: sign in")
def login(request: Request, services: ServicesDep, key: Annotated[str, Form(max_length=512)],
          next: Annotated[str, Form(max_length=2048)] = "/") -> Response:
    """Sign in with one of ``RECALL_API_KEYS``: sets the session cookie (not the key)."""
    client = request.client.host if request.client else "unknown"
    wait = request.app.state.login_limiter.acquire(client)
    if wait > 0:
        return _login_page(request, services, next, f"Too many attempts; wait {wait:.0f} s.",
                           429)
    if not session.matching_key(key, services.settings.api_key_list):
        return _login_page(request, services, next,
                           "That key is not one of the server's API keys (RECALL_API_KEYS).",
                           401)
    response = RedirectResponse(session.safe_next(next), status_code=303)
    response.set_cookie(
        session.COOKIE, session.issue(key, now=services.wall_clock.now().timestamp()),
        max_age=session.SESSION_S, path="/", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", summary="Dashboard: sign out")
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
