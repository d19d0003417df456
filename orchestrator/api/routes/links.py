"""Short links ``GET /s/{code}`` and fixed-link landing ``GET /l/{journey_id}?t=<token>``.

Public: the code (64 random bits) or the signed, expiring token is the credential. Both
answer a 302 with ``Cache-Control: no-store`` (every click must reach us to be counted) or a
small HTML page for people who follow a dead or forged link. Each client address is
rate-limited (``orchestrator.api.ratelimit``: 429 past the limit). Link previewers and
prefetches (``orchestrator.tracking.previews``, ``HEAD`` included) get the same redirect
without a click being counted, and without any write.
"""

from __future__ import annotations

import html
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from orchestrator.api.deps import Services, ServicesDep
from orchestrator.api.ratelimit import limit_links
from orchestrator.errors import SignatureError
from orchestrator.store.db import begin_write
from orchestrator.store.tables import LINKS, TOUCHES
from orchestrator.tracking.landing import SECRET_SETTING, read_landing_token, record_landing_click
from orchestrator.tracking.links import Click, record_click
from orchestrator.tracking.previews import is_preview

router = APIRouter(tags=["links"], dependencies=[Depends(limit_links)])
CODE_SHAPE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
NO_STORE = {"Cache-Control": "no-store"}


def html_page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        "<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{html.escape(title)}</title></head><body style=\"font-family:sans-serif;"
        f"text-align:center;padding:3em 1em\"><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=NO_STORE)


def not_found_page() -> HTMLResponse:
    return html_page(404, "链接无效 · Link not found",
                     "这个链接不存在或已失效。This link does not exist or has expired.")


def _click(services: Services, code: str) -> Click | None:
    with begin_write(services.engine) as conn:
        return record_click(conn, code, now=services.clock.now())


def _peek(services: Services, code: str) -> Click | None:
    """The click a GET would record, without recording it."""
    query = (
        select(LINKS.c.target_url, LINKS.c.touch_id, TOUCHES.c.channel, TOUCHES.c.journey_id)
        .select_from(LINKS.outerjoin(TOUCHES, TOUCHES.c.id == LINKS.c.touch_id))
        .where(LINKS.c.code == code)
    )
    with services.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return Click(code, row.target_url, row.touch_id, row.channel or "unknown",
                 row.journey_id or "unknown")


def _redirect(click: Click | None) -> Response:
    if click is None:
        return not_found_page()
    return RedirectResponse(click.redirect_url, status_code=302, headers=NO_STORE)


@router.get("/s/{code}", response_class=Response,
            responses={302: {"description": "to the target"}, 404: {}, 429: {}})
def short_link(code: str, request: Request, services: ServicesDep) -> Response:
    """Redirect to the touch's target with UTM parameters; the first click stamps the
    touch's ``clicked_at`` and the link's ``first_clicked_at``, every click counts. Preview
    crawlers get the redirect without a click."""
    if not CODE_SHAPE.match(code):
        return not_found_page()
    if is_preview(request.method, request.headers):
        return _redirect(_peek(services, code))
    click = _click(services, code)
    if click is not None:
        services.metrics.clicks.labels(kind="short_link").inc()
    return _redirect(click)


@router.head("/s/{code}", include_in_schema=False)
def short_link_head(code: str, services: ServicesDep) -> Response:
    """Link previewers ask with HEAD: same answer, no click counted."""
    return _redirect(_peek(services, code) if CODE_SHAPE.match(code) else None)


def _bad_token() -> HTMLResponse:
    return html_page(400, "链接无效 · Invalid link",
                     "这个链接已损坏或已过期。This link is damaged or has expired; please open "
                     "it again.")


@router.get("/l/{journey_id}", response_class=Response,
            responses={302: {"description": "to the target"}, 400: {}, 404: {}, 429: {}})
def landing(journey_id: str, t: str, request: Request, services: ServicesDep) -> Response:
    """Fixed-link mode: ``t`` (see ``orchestrator.tracking.landing``) names the user; the
    click goes on their latest sent touch of the journey. Tokens expire (one hour by
    default, ``RECALL_LANDING_TOKEN_TTL_S``)."""
    secret = services.inbound_secret(SECRET_SETTING)
    try:
        claim = read_landing_token(secret, t, journey_id=journey_id,
                                   now=services.wall_clock.now(),
                                   ttl_s=services.settings.landing_token_ttl_s)
    except SignatureError:
        services.metrics.webhook_rejections.labels(source="landing").inc()
        return _bad_token()
    if is_preview(request.method, request.headers):
        return _landing_preview(claim.to)
    with begin_write(services.engine) as conn:
        hit = record_landing_click(
            conn, journey_id=journey_id, user_id=claim.user_id, now=services.clock.now()
        )
    target = hit.redirect_url(journey_id, claim.to) if hit else claim.to
    if target is None:
        return not_found_page()
    services.metrics.clicks.labels(kind="landing").inc()
    return RedirectResponse(target, status_code=302, headers=NO_STORE)


def _landing_preview(to: str | None) -> Response:
    """A previewer on a landing link: the token's own target, or a neutral page; nothing is
    read about the user and nothing recorded."""
    if to is None:
        return html_page(200, "链接 · Link", "请在手机上打开。Open this link on your phone.")
    return RedirectResponse(to, status_code=302, headers=NO_STORE)
