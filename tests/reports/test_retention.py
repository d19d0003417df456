"""Retention by arm: exact numbers on the hand-built journey (window edges, events before
entry and of other kinds, windows still open), and the same numbers recomputed from
``recall export enrollments`` and the events that were imported."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from orchestrator.reports.export import rows
from orchestrator.reports.funnel import journey_report
from orchestrator.reports.render import render
from orchestrator.reports.stats import ArmCount, compare
from tests.reports.conftest import (
    DAY,
    ENROLLMENTS,
    EVENT_ROWS,
    JOURNEY_ID,
    T0,
    Dataset,
    _enrollment,
    _event,
)

ACTIVITY = ("login", "session", "order_placed")


def test_retention_windows_follow_each_other(dataset: Dataset) -> None:
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=T0 + 40 * DAY)
    first, second = report["retention"]
    assert (first["window"], first["first_day"], first["last_day"]) == ("7d", 1, 7)
    assert (second["window"], second["first_day"], second["last_day"]) == ("30d", 8, 30)
    # control: c1, c2 active in days 1-7, c2 in days 8-30 (c3's login was before entry,
    # its payment_failed is no activity); treatment: t1 (at the window's very end), t4, t8
    # in days 1-7 (t3's login at the moment of entry is not after it); t1, t2, t5 in 8-30.
    assert _counts(first) == {"control": (4, 2), "treatment": (8, 3)}
    assert _counts(second) == {"control": (4, 1), "treatment": (8, 3)}
    assert first["control"]["rate"] == 0.5 and second["treatment"]["rate"] == 0.375
    assert first["uplift"] == compare(ArmCount(4, 2), ArmCount(8, 3)).as_dict()
    assert report["arms"]["control"]["retention"] == {"7d": 0.5, "30d": 0.25}
    assert report["arms"]["treatment"]["retention"] == {"7d": 0.375, "30d": 0.375}


def test_a_window_still_open_counts_nobody(dataset: Dataset) -> None:
    """At T0 + 20d the days 8-30 window has not passed for anyone: no rate yet. A user who
    entered at T0 + 15d has not finished days 1-7 either (even though active in them)."""
    with dataset.engine.begin() as conn:
        conn.execute(insert(ENROLLMENTS), [_enrollment(40, "t9", "treatment", T0 + 15 * DAY)])
        conn.execute(insert(ENROLLMENTS.metadata.tables["events"]),
                     [_event("t9", "login", T0 + 16 * DAY)])
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=T0 + 20 * DAY)
    first, second = report["retention"]
    assert _counts(first) == {"control": (4, 2), "treatment": (8, 3)}
    assert _counts(second) == {"control": (0, 0), "treatment": (0, 0)}
    assert second["control"]["rate"] is None and second["uplift"]["absolute"] is None
    assert report["arms"]["treatment"]["retention"] == {"7d": 0.375, "30d": None}
    later = journey_report(dataset.engine, dataset.journey, dataset.policy, now=T0 + 22 * DAY)
    assert _counts(later["retention"][0])["treatment"] == (9, 4)


def test_a_window_not_observable_yet_says_why_in_every_format(dataset: Dataset) -> None:
    """No bare dash: a window that no user's data covers yet reads ``not yet`` with the
    reason (it ends after the data) in the table, the CSV and the HTML page (the
    dashboard's journey page includes the same sections); a window that counts only the
    earlier entrants says how many wait."""
    with dataset.engine.begin() as conn:
        conn.execute(insert(ENROLLMENTS), [_enrollment(40, "t9", "treatment", T0 + 15 * DAY)])
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=T0 + 20 * DAY)
    first, second = report["retention"]
    assert second["pending"] == 13
    assert second["note"].startswith("not observable yet: the window (days 8–30 after entry) "
                                     "ends after the data")
    closes = f"{T0 + 30 * DAY:%Y-%m-%d %H:%M} UTC"
    assert second["note"].endswith(f"the earliest closes {closes}")
    assert first["pending"] == 1
    assert first["note"] == ("12 users counted; 1 who entered later are not counted yet "
                             "(their window, days 1–7 after entry, ends after the data)")
    table = render(report, "table")
    assert f"retention 30d: {second['note']}" in table
    assert "not yet" in table.split("retention by arm")[1]
    cells = [r for r in csv.DictReader(io.StringIO(render(report, "csv")))
             if r["window"] == "30d"]
    assert {r["note"] for r in cells} == {second["note"]}
    assert all(r["rate"] == "" for r in cells)
    page = render(report, "html")
    assert second["note"] in page and first["note"] in page
    assert page.count("<td>not yet</td>") == 4  # both arms, in the arms and retention tables


@pytest.mark.parametrize("days", [5, 7, 8, 29, 30, 31, 60])
def test_retention_is_recomputable_from_the_exports(dataset: Dataset, days: int) -> None:
    now = T0 + days * DAY
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=now)
    enrollments = list(rows(dataset.engine, "enrollments", JOURNEY_ID))
    expected = _recompute(enrollments, EVENT_ROWS, dataset.journey.retention, now)
    assert [_counts(w) for w in report["retention"]] == expected


def test_every_format_shows_retention(dataset: Dataset) -> None:
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=T0 + 40 * DAY)
    table = render(report, "table")
    assert "7d (days 1–7)" in table and "2/4 = 50.00%" in table
    assert "3/8 = 37.50%" in table
    assert "retention 7d: warning: too few users to judge (control 2/4, treatment 3/8)" in table
    retention_rows = [r for r in csv.DictReader(io.StringIO(render(report, "csv")))
                      if r["kind"].startswith("retention")]
    assert [(r["kind"], r["name"], r["window"], r["eligible"], r["retained"], r["rate"])
            for r in retention_rows] == [
        ("retention", "control", "7d", "4", "2", "0.5"),
        ("retention", "treatment", "7d", "8", "3", "0.375"),
        ("retention_uplift", "7d", "7d", "", "", ""),
        ("retention", "control", "30d", "4", "1", "0.25"),
        ("retention", "treatment", "30d", "8", "3", "0.375"),
        ("retention_uplift", "30d", "30d", "", "", ""),
    ]
    assert float(retention_rows[2]["uplift_absolute"]) == pytest.approx(-0.125)
    page = render(report, "html")
    assert "Retention (active again after entry)" in page
    assert "7d (days 1–7)" in page and "30d (days 8–30)" in page
    assert "2/4 = 50.00%" in page


def _counts(window: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {arm: (window[arm]["eligible"], window[arm]["retained"])
            for arm in ("control", "treatment")}


def _recompute(enrollments: list[dict[str, Any]], events: list[dict[str, Any]],
               windows: list[timedelta], now: datetime) -> list[dict[str, tuple[int, int]]]:
    """Each user's first enrollment from the export, their activity from the events."""
    first: dict[str, dict[str, Any]] = {}
    for e in sorted(enrollments, key=lambda e: (e["entered_at"], e["enrollment_id"])):
        first.setdefault(e["user_id"], e)
    result = []
    start = timedelta(0)
    for end in windows:
        counts = {"control": [0, 0], "treatment": [0, 0]}
        for user, e in first.items():
            entered = datetime.fromisoformat(e["entered_at"])
            if entered + end > now:
                continue
            counts[e["arm"]][0] += 1
            counts[e["arm"]][1] += any(
                ev["user_id"] == user and ev["name"] in ACTIVITY
                and entered + start < ev["ts"] <= entered + end for ev in events)
        result.append({arm: (n, k) for arm, (n, k) in counts.items()})
        start = end
    return result
