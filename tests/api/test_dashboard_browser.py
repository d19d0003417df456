"""The dashboard in a real headless Chromium (Playwright driving the system's browser): the
pages load with no console error and fetch nothing from elsewhere, the charts are laid out
with titled axes, Chinese is drawn with a CJK font, and signing in works as a person does it.

One browser for the module; each test gets a fresh context (its own cookies). Without
Chromium or Playwright the module is skipped with a loud notice (a failure under CI=true).
Set ``RECALL_TEST_SCREENSHOT_DIR`` to keep a screenshot of each page.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from orchestrator.config import Settings
from tests.api.conftest import API_KEYS, Swappable
from tests.api.dashboard_data import SECRETS, dashboard_app, seed_dashboard
from tests.reports.conftest import JOURNEY_ID
from tests.support import require_chromium

CJK_FONTS = ("Noto Sans CJK", "Source Han Sans", "PingFang", "Microsoft YaHei")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


@pytest.fixture
def seeded(sqlite_engine: Engine, tmp_path: Path) -> Engine:
    seed_dashboard(sqlite_engine, tmp_path)
    return sqlite_engine


def _serve(app: FastAPI, api_server: tuple[Swappable, str]) -> Iterator[str]:
    swappable, url = api_server
    swappable.app = app
    yield url
    swappable.app = None


@pytest.fixture
def local_url(settings: Settings, seeded: Engine,
              api_server: tuple[Swappable, str]) -> Iterator[str]:
    yield from _serve(dashboard_app(settings, seeded, local_only=True), api_server)


@pytest.fixture
def exposed_url(settings: Settings, seeded: Engine,
                api_server: tuple[Swappable, str]) -> Iterator[str]:
    yield from _serve(dashboard_app(settings, seeded, local_only=False), api_server)


class Watched:
    """A page whose console errors, page errors, failed requests and requests to any other
    origin are all collected: each one is a defect of the page."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900},
                                           locale="zh-CN")
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: None if r.url.startswith((base_url, "data:"))
                     else self.problems.append(f"fetched elsewhere: {r.url}"))

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def open(self, url: str) -> Any:
        response = self.page.goto(url, wait_until="load")
        self.page.evaluate("document.fonts.ready")  # fonts settled before measuring
        return response

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[Any]:
    pages: list[Watched] = []

    def make(base_url: str) -> Watched:
        pages.append(Watched(browser, base_url))
        return pages[-1]

    yield make
    for page in pages:
        page.close()


def _charts(page: Any) -> list[dict[str, Any]]:
    """Every chart on the page with its laid-out size and axis titles."""
    charts: list[dict[str, Any]] = page.eval_on_selector_all("svg.chart", """svgs => svgs.map(
      s => ({
        label: s.getAttribute('aria-label'),
        width: s.getBoundingClientRect().width,
        height: s.getBoundingClientRect().height,
        axisTitles: [...s.querySelectorAll('text.axis-title')].map(t => t.textContent),
        ticks: s.querySelectorAll('text.tick').length,
        marks: s.querySelectorAll('rect, circle').length,
    }))""")
    return charts


def _fonts_of(page: Any, selector: str) -> list[dict[str, Any]]:
    """The fonts Chromium really drew ``selector``'s text with (DevTools protocol)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts: list[dict[str, Any]] = cdp.send("CSS.getPlatformFontsForNode",
                                           {"nodeId": node})["fonts"]
    cdp.detach()
    return fonts


def _keep_screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("RECALL_TEST_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_journey_page_in_a_browser(watched: Any, local_url: str) -> None:
    view = watched(local_url)
    response = view.open(f"{local_url}/journeys/{JOURNEY_ID}")
    assert response.status == 200
    page = view.page
    assert page.title() == "Recall · 报告演示"
    charts = _charts(page)
    labels = [c["label"] for c in charts]
    assert labels == ["recall rate by arm and uplift with its 95% CI", "funnel article",
                      "funnel invite", "funnel sms", "funnel sms"]
    for chart in charts:
        assert chart["width"] > 300 and chart["height"] > 100, chart
        assert chart["axisTitles"] and chart["ticks"] >= 2 and chart["marks"] >= 2, chart
    assert charts[0]["axisTitles"] == ["recall rate (% of enrolled)",
                                       "uplift, treatment − control (percentage points)"]
    fonts = _fonts_of(page, "h1")
    assert any(f["familyName"].startswith(CJK_FONTS) and f["glyphCount"] >= 4
               for f in fonts), fonts
    rows = page.locator("table.touches tr").count()
    assert rows == 1 + 20
    body = page.content()
    assert [s for s in SECRETS if s in body] == []
    _keep_screenshot(page, "dashboard-journey")
    assert view.problems == []


def test_front_page_in_a_browser_leads_to_the_journey(watched: Any, local_url: str) -> None:
    view = watched(local_url)
    assert view.open(f"{local_url}/").status == 200
    page = view.page
    charts = _charts(page)
    assert [c["label"] for c in charts] == ["recall uplift by journey with 95% CI"]
    assert charts[0]["axisTitles"][-1] == "uplift, treatment − control (percentage points)"
    assert page.locator("span.state").inner_text() == "active"
    _keep_screenshot(page, "dashboard-index")
    page.click("text=报告演示")
    page.wait_for_url(f"{local_url}/journeys/{JOURNEY_ID}")
    assert page.locator("h2", has_text="Recent touches").count() == 1
    assert view.problems == []


def test_signing_in_with_the_form(watched: Any, exposed_url: str) -> None:
    view = watched(exposed_url)
    view.open(f"{exposed_url}/journeys/{JOURNEY_ID}")
    page = view.page
    assert page.url == f"{exposed_url}/login?next=%2Fjourneys%2F{JOURNEY_ID}"
    page.fill("#key", "wrong key")
    page.click("button[type=submit]")
    assert "not one of the server's API keys" in page.locator("p.error").inner_text()
    page.fill("#key", API_KEYS[0])
    page.click("button[type=submit]")
    page.wait_for_url(f"{exposed_url}/journeys/{JOURNEY_ID}")
    assert page.locator("h2", has_text="Funnel by step").count() == 1
    (cookie,) = view.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert API_KEYS[0] not in cookie["value"]
    page.click("text=Sign out")
    page.wait_for_url(f"{exposed_url}/login")
    assert view.context.cookies() == []
    # The wrong key's 401 is the form answering, not a page error.
    assert [p for p in view.problems if "401" not in p] == []
