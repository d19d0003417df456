"""The dashboard over HTTP: what the pages show, that no identity appears in full, and who
may see them (open on the embedded loopback stack, a key or a session everywhere else)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from orchestrator.api import session
from orchestrator.api.app import LOGIN_ATTEMPTS_PER_MIN
from orchestrator.api.ratelimit import RateLimiter
from orchestrator.config import Settings
from tests.api.conftest import API_KEYS, Swappable
from tests.api.dashboard_data import SECRETS, dashboard_app, pause, seed_dashboard
from tests.reports.conftest import JOURNEY_ID


@pytest.fixture
def seeded(db_engine: Engine, tmp_path: Path) -> Engine:
    seed_dashboard(db_engine, tmp_path)
    return db_engine


def _serve(app: FastAPI, api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    swappable, url = api_server
    swappable.app = app
    with httpx.Client(base_url=url, trust_env=False, timeout=30,
                      follow_redirects=False) as client:
        yield client
    swappable.app = None


@pytest.fixture
def local(settings: Settings, seeded: Engine,
          api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    """The dashboard of the embedded stack on loopback."""
    yield from _serve(dashboard_app(settings, seeded, local_only=True), api_server)


@pytest.fixture
def exposed(settings: Settings, seeded: Engine,
            api_server: tuple[Swappable, str]) -> Iterator[httpx.Client]:
    """The dashboard of an API other machines can reach."""
    yield from _serve(dashboard_app(settings, seeded, local_only=False), api_server)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_front_page_lists_journeys_with_state_and_headline_numbers(
    local: httpx.Client,
) -> None:
    page = local.get("/")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    text = _text(page.text)
    # Report dataset: control 2 of 4 users, treatment 5 of 8; sent counts 4 + 2 + 4 (+1
    # fallback article) across the steps.
    assert "报告演示" in text and f"/journeys/{JOURNEY_ID}" in page.text
    assert "active" in text
    assert "12" in text  # enrolled users, both arms
    assert "50.00%" in text and "62.50%" in text
    assert "+12.50 pp" in text
    assert "0.22" in text  # SMS cost 0.225 (4 + 1 segments at 0.045), to the cent
    assert '<svg class="chart"' in page.text and "percentage points" in page.text


def test_front_page_shows_a_paused_journey_as_paused(local: httpx.Client,
                                                     seeded: Engine) -> None:
    local.get("/")  # the first request records the journeys (state active)
    pause(seeded)
    assert 'state-paused">paused<' in local.get("/").text


def test_journey_page_shows_report_sections_and_masked_touches(local: httpx.Client) -> None:
    page = local.get(f"/journeys/{JOURNEY_ID}")
    assert page.status_code == 200, page.text
    text = _text(page.text)
    for heading in ("Recall rate by arm", "Retention (active again after entry)",
                    "Funnel by step", "Cost and return", "WeCom tasks by staff sender",
                    "Recent touches"):
        assert heading in text
    # Business time is T0 + 18 days: days 1-7 are over for everyone, days 8-30 for nobody.
    assert "7d (days 1–7) 2/4 = 50.00% 3/8 = 37.50%" in text
    assert "30d (days 8–30) not yet not yet" in text  # with the reason, no bare dash
    assert ("not observable yet: the window (days 8–30 after entry) ends after the data"
            in text)
    assert "0.22 CNY" in text and "n/m" not in text  # the chart says it in words
    # 4 against 8 users: the ROI carries the uplift's small-sample warning, with the reason.
    assert "(too few users)" in text and "read them as unknown" in text
    assert "not measured per touch (aggregate-only)" in text
    assert page.text.count('aria-label="funnel ') == 4  # article, invite, sms, sms→article
    for sender in ("alice", "bob"):
        assert f"<td>{sender}</td>" in page.text
    assert "+86" in text and "8001" in text  # t1's phone, masked to its last four digits
    assert "o6_b***" in text and "wmAb***" in text
    leaked = [secret for secret in SECRETS if secret in page.text]
    assert leaked == []


def test_pages_load_nothing_from_elsewhere(local: httpx.Client) -> None:
    for path in ("/", f"/journeys/{JOURNEY_ID}"):
        page = local.get(path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script" not in csp
        assert page.headers["cache-control"] == "no-store"
        assert not re.search(r"<script|https?://(?!www\.w3\.org/2000/svg)|@import|url\(",
                             page.text)


def test_unknown_journey_is_a_404_page_naming_the_known_ones(local: httpx.Client) -> None:
    page = local.get("/journeys/nope")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert f"no journey &#39;nope&#39;; known journeys: {JOURNEY_ID}" in page.text


def test_a_journey_id_is_escaped(local: httpx.Client) -> None:
    page = local.get("/journeys/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
    assert page.status_code == 404
    assert "<img" not in page.text and "&lt;img src=x" in page.text


def test_local_stack_needs_no_sign_in(local: httpx.Client) -> None:
    assert local.get("/").status_code == 200
    assert local.get("/login?next=/journeys/x").headers["location"] == "/journeys/x"


@pytest.mark.sqlite_only
@pytest.mark.parametrize("path", ["/", f"/journeys/{JOURNEY_ID}?tab=1"])
def test_exposed_dashboard_sends_visitors_to_sign_in(exposed: httpx.Client, path: str) -> None:
    answer = exposed.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=" + quote(path, safe="")
    assert "报告演示" not in answer.text


@pytest.mark.sqlite_only
def test_sign_in_sets_a_session_cookie_that_is_not_the_key(exposed: httpx.Client) -> None:
    form = exposed.get("/login?next=%2Fjourneys%2Freport-demo")
    assert form.status_code == 200 and 'type="password"' in form.text
    assert 'value="/journeys/report-demo"' in form.text
    answer = exposed.post("/login", data={"key": API_KEYS[0], "next": "/journeys/report-demo"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/journeys/report-demo"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{session.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert f"Max-Age={session.SESSION_S}" in cookie
    assert "Secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    assert API_KEYS[0] not in cookie
    page = exposed.get("/journeys/report-demo")  # httpx keeps the cookie
    assert page.status_code == 200 and "Recent touches" in page.text
    assert "Sign out" in page.text
    out = exposed.post("/logout")
    assert out.status_code == 303 and 'recall_dashboard=""' in out.headers["set-cookie"]
    assert exposed.get("/").status_code == 303


@pytest.mark.sqlite_only
@pytest.mark.parametrize("key", ["wrong", "", API_KEYS[0] + "x", API_KEYS[0][:-1]])
def test_a_wrong_key_is_refused_without_a_cookie(exposed: httpx.Client, key: str) -> None:
    answer = exposed.post("/login", data={"key": key, "next": "/"})
    assert answer.status_code in (401, 422)
    assert "set-cookie" not in answer.headers
    assert exposed.get("/").status_code == 303


@pytest.mark.sqlite_only
@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil",
                                    "javascript:alert(1)"])
def test_sign_in_never_sends_people_elsewhere(exposed: httpx.Client, target: str) -> None:
    answer = exposed.post("/login", data={"key": API_KEYS[1], "next": target})
    assert answer.headers["location"] == "/"


@pytest.mark.sqlite_only
def test_bearer_key_opens_the_dashboard_for_scripts(exposed: httpx.Client) -> None:
    assert exposed.get("/", headers={"Authorization": f"Bearer {API_KEYS[1]}"}
                       ).status_code == 200
    assert exposed.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 303


@pytest.mark.sqlite_only
def test_forged_expired_or_revoked_sessions_are_refused(
    settings: Settings, seeded: Engine, api_server: tuple[Swappable, str], exposed: httpx.Client
) -> None:
    import time

    now = time.time()
    good = session.issue(API_KEYS[0], now=now)
    expired = session.issue(API_KEYS[0], now=now - session.SESSION_S - 1)
    forged = session.issue("not-a-key", now=now)
    stretched = f"{int(now) + 10 * session.SESSION_S}.{good.partition('.')[2]}"
    for token, status in ((good, 200), (expired, 303), (forged, 303), (stretched, 303),
                          ("garbage", 303), ("1.2.3", 303)):
        exposed.cookies.set(session.COOKIE, token)
        assert exposed.get("/").status_code == status, token
    # Removing the key from RECALL_API_KEYS ends the sessions it opened.
    revoked = settings.model_copy(update={"api_keys": API_KEYS[1]})
    for client in _serve(dashboard_app(revoked, seeded, local_only=False), api_server):
        client.cookies.set(session.COOKIE, good)
        assert client.get("/").status_code == 303


@pytest.mark.sqlite_only
def test_exposed_without_keys_says_it_cannot_be_opened(
    settings: Settings, seeded: Engine, api_server: tuple[Swappable, str]
) -> None:
    keyless = settings.model_copy(update={"api_keys": ""})
    for client in _serve(dashboard_app(keyless, seeded, local_only=False), api_server):
        form = client.get("/login")
        assert "no API key is configured" in form.text and "<form" not in form.text
        assert client.post("/login", data={"key": "anything"}).status_code == 401


@pytest.mark.sqlite_only
def test_sign_in_attempts_are_rate_limited(
    settings: Settings, seeded: Engine, api_server: tuple[Swappable, str]
) -> None:
    app = dashboard_app(settings, seeded, local_only=False)
    app.state.login_limiter = RateLimiter(LOGIN_ATTEMPTS_PER_MIN, clock=lambda: 0.0)
    for client in _serve(app, api_server):
        answers = [client.post("/login", data={"key": "guess"}).status_code
                   for _ in range(LOGIN_ATTEMPTS_PER_MIN + 2)]
        assert answers == [401] * LOGIN_ATTEMPTS_PER_MIN + [429, 429]
        right = client.post("/login", data={"key": API_KEYS[0]})
        assert right.status_code == 429 and "set-cookie" not in right.headers
