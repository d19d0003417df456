"""``recall report`` end to end on a SQLite store: json, csv, html, table; unknown journey."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import get_settings
from tests.reports.conftest import JOURNEY_ID, seed

runner = CliRunner()


@pytest.fixture
def store(sqlite_engine: Engine, journey_dirs: tuple[Path, Path], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    seed(sqlite_engine)
    journeys, templates = journey_dirs
    monkeypatch.setenv("RECALL_DATABASE_URL", sqlite_engine.url.render_as_string(False))
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(journeys))
    monkeypatch.setenv("RECALL_TEMPLATES_DIR", str(templates))
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_json(store: None) -> None:
    result = runner.invoke(app, ["report", JOURNEY_ID, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    treatment = report["arms"]["treatment"]
    assert (treatment["enrolled"], treatment["converted"], treatment["rate"],
            treatment["revenue"]) == (8, 5, 0.625, 120.0)
    assert [s["step_id"] for s in report["steps"]] == ["article", "invite", "sms", "sms"]


def test_csv_has_arm_step_and_total_rows(store: None) -> None:
    result = runner.invoke(app, ["report", JOURNEY_ID, "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["kind"], r["name"], r["channel"]) for r in table] == [
        ("arm", "control", ""), ("arm", "treatment", ""),
        *(row for window in ("7d", "30d") for row in (
            ("retention", "control", ""), ("retention", "treatment", ""),
            ("retention_uplift", window, ""))),
        ("step", "article", "wechat_article"), ("step", "invite", "wecom_group_invite"),
        ("step", "sms", "sms"), ("step", "sms", "wechat_article"), ("total", JOURNEY_ID, ""),
    ]
    article = table[8]
    assert (article["eligible"], article["sent"], article["suppressed"]) == ("9", "4", "3")
    assert article["suppressed_by_reason"] == "cap:wechat_article=2;no_consent=1"
    assert float(table[-1]["revenue"]) == pytest.approx(60.0)


def test_html_to_a_file(store: None, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo.html"
    result = runner.invoke(app, ["report", JOURNEY_ID, "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert page.count("<svg") == 5  # the uplift chart and one funnel per step row
    # The same sections as the dashboard's journey page: one implementation.
    assert 'aria-label="funnel article"' in page and "Small sample:" in page
    assert "not measured per touch (aggregate-only)" in page
    assert "0.22 CNY" in page and "60.0 min" in page
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "报告演示" in page


def test_table(store: None) -> None:
    result = runner.invoke(app, ["report", JOURNEY_ID])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "62.50%" in out and "cap:wechat_article 2" in out
    assert "alice" in out and "60.0 min" in out
    assert "0.22 CNY" in out and "60.00 CNY" in out  # SMS cost; incremental revenue
    assert "warning: too few users to judge (control 2/4, treatment 5/8)" in out
    assert "period 2026-03-02 →" in out
    assert "n/m" in out and "aggregate only" in out  # the article's delivered


def test_an_unknown_journey_is_a_clear_error(store: None) -> None:
    result = runner.invoke(app, ["report", "nope"])
    assert result.exit_code == 1
    assert "no journey 'nope'" in result.stderr
    assert f"known journeys: {JOURNEY_ID}" in result.stderr
