"""``GET /v1/journeys/{id}/report`` on a real uvicorn: the JSON report, bearer auth, 404."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from orchestrator.api.app import create_app
from orchestrator.api.server import serve_in_thread
from orchestrator.clock import ManualClock
from orchestrator.config import Settings
from tests.reports.conftest import JOURNEY_ID, T0, Dataset

KEY = "report-key"


@pytest.fixture
def client(dataset: Dataset, journey_dirs: tuple[Path, Path],
           tmp_path: Path) -> Iterator[httpx.Client]:
    journeys, templates = journey_dirs
    settings = Settings(api_keys=KEY, state_dir=tmp_path / "state", journeys_dir=journeys,
                        templates_dir=templates)
    app = create_app(settings, engine=dataset.engine, clock=ManualClock(T0 + timedelta(days=40)))
    with serve_in_thread(app) as handle, httpx.Client(
        base_url=handle.base_url, trust_env=False, timeout=30
    ) as client:
        yield client


def test_the_report_needs_a_key(client: httpx.Client) -> None:
    response = client.get(f"/v1/journeys/{JOURNEY_ID}/report")
    assert response.status_code == 401
    wrong = client.get(f"/v1/journeys/{JOURNEY_ID}/report",
                       headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401


def test_the_report_is_the_json_report(client: httpx.Client) -> None:
    response = client.get(f"/v1/journeys/{JOURNEY_ID}/report",
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    report = response.json()
    assert report["journey_id"] == JOURNEY_ID
    assert report["arms"]["control"] | {"ci95": None} == {
        "enrolled": 4, "converted": 2, "rate": 0.5, "revenue": 30.0, "ci95": None,
        "retention": {"7d": 0.5, "30d": 0.25}}  # as of the API's business time, T0 + 40d
    assert report["period"]["to"] == "2026-04-11T02:00:00Z"
    assert report["currency"] == "CNY"
    assert report["uplift"]["absolute"] == pytest.approx(0.125)
    assert len(report["uplift"]["ci95"]) == 2
    assert report["revenue"] == pytest.approx(60.0)
    assert [w["sender"] for w in report["wecom_senders"]] == ["(default sender)", "alice", "bob"]


def test_an_unknown_journey_is_404(client: httpx.Client) -> None:
    response = client.get("/v1/journeys/nope/report", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404
    assert "no journey 'nope'" in response.text
