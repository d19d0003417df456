"""Renderers on edge cases: no control group (nothing to compare), escaping in HTML."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from orchestrator.reports.render import CSV_COLUMNS, render


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "journey_id": "j", "journey_name": "<b>j</b>",
        "arms": {"control": {"enrolled": 0, "converted": 0, "rate": None, "revenue": 0.0},
                 "treatment": {"enrolled": 3, "converted": 1, "rate": 1 / 3, "revenue": 9.0}},
        "uplift": {"absolute": None, "relative": None, "ci95": None, "p_value": None},
        "steps": [{"step_id": "sms", "channel": "sms", "eligible": 0, "sent": 0,
                   "delivered": 0, "clicked": 0, "converted": 0, "suppressed": {},
                   "cost": 0.0}],
        "cost": 0.0, "revenue": None, "roi": None, "sms_price_per_segment": 0.05,
        "wecom_senders": [],
    }
    return report | changes


def test_undefined_numbers_render_as_blanks_and_dashes() -> None:
    report = _report()
    assert json.loads(render(report, "json")) == report
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[-1]["p_value"] == "" and rows[-1]["roi"] == ""
    table = render(report, "table")
    assert "95% CI —, p = —" in table
    page = render(report, "html")
    assert page.count("<svg") == 1  # no uplift chart without a control group
    assert "&lt;b&gt;j&lt;/b&gt;" in page and "<b>j</b>" not in page


def test_uplift_chart_always_shows_zero() -> None:
    report = _report(
        arms={"control": {"enrolled": 10, "converted": 1, "rate": 0.1, "revenue": 0.0},
              "treatment": {"enrolled": 10, "converted": 3, "rate": 0.3, "revenue": 0.0}},
        uplift={"absolute": 0.2, "relative": 2.0, "ci95": [0.05, 0.35], "p_value": 0.2})
    page = render(report, "html")
    assert page.count("<svg") == 2
    assert 'x1="40.0" y1="55" x2="40.0"' in page  # zero sits at the left edge of the scale
