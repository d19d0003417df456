"""Renderers on edge cases: no control group (nothing to compare), escaping in HTML, the
standalone page being the dashboard's report sections."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from orchestrator.reports.render import CSV_COLUMNS, render


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "journey_id": "j", "journey_name": "<b>j</b>",
        "arms": {"control": {"enrolled": 0, "converted": 0, "rate": None, "revenue": 0.0,
                             "ci95": None},
                 "treatment": {"enrolled": 3, "converted": 1, "rate": 1 / 3, "revenue": 9.0,
                               "ci95": [0.06, 0.79]}},
        "uplift": {"absolute": None, "relative": None, "ci95": None, "p_value": None,
                   "significant": None, "warning": None},
        "steps": [{"step_id": "sms", "channel": "sms", "eligible": 0, "sent": 0,
                   "delivered": 0, "clicked": 0, "converted": 0, "suppressed": {},
                   "cost": 0.0}],
        "cost": 0.0, "revenue": None, "currency": "CNY", "roi": None,
        "sms_price_per_segment": 0.05, "wecom_senders": [],
        "period": {"from": "2026-03-02T02:00:00Z", "to": "2026-03-16T02:00:00Z"},
        "generated_at": "2026-03-17T08:30:00Z",
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


def test_page_states_period_and_time_made_and_renders_chinese() -> None:
    page = render(_report(), "html")
    assert "period 2026-03-02 → 2026-03-16 (UTC) · made 2026-03-17 08:30 UTC" in page
    assert '"PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC"' in page
    table = render(_report(), "table")
    assert "period 2026-03-02 → 2026-03-16 (UTC) · made 2026-03-17 08:30 UTC" in table


def test_uplift_chart_labels_its_axes_and_values() -> None:
    report = _report(
        arms={"control": {"enrolled": 100, "converted": 10, "rate": 0.1, "revenue": 0.0,
                          "ci95": [0.05, 0.17]},
              "treatment": {"enrolled": 100, "converted": 30, "rate": 0.3, "revenue": 0.0,
                            "ci95": [0.22, 0.4]}},
        uplift={"absolute": 0.2, "relative": 2.0, "ci95": [0.05, 0.35], "p_value": 0.002,
                "significant": True, "warning": None})
    page = render(report, "html")
    assert page.count("<svg") == 2
    assert "recall rate (% of enrolled)" in page
    assert "uplift, treatment − control (percentage points)" in page
    assert ">10.00%<" in page and ">30.00%<" in page and ">+20.00 pp<" in page
    assert "95% CI +5.00 pp to +35.00 pp" in page
    # 0 is on the scale even though the whole interval is above it: the leftmost tick.
    assert 'x1="90.0" y1="108" x2="90.0"' in page and ">+0.00 pp<" in page
    assert "p = 0.002 ** — significant at 5%" in page


def test_money_on_a_sample_too_small_to_judge_carries_the_warning_everywhere() -> None:
    """Incremental revenue and ROI compare the same arms as the uplift: when the uplift
    says the arms are too small to judge, the money says so too, in every format."""
    from orchestrator.reports.funnel import money_warning
    from orchestrator.reports.stats import ArmCount

    small = {"absolute": -0.113, "relative": -0.13, "ci95": [-0.30, 0.27], "p_value": 0.52,
             "significant": None,
             "warning": "too few users to judge (control 6/7, treatment 32/43)"}
    control, treatment = ArmCount(7, 6), ArmCount(43, 32)
    warning = money_warning(small, -341.12, control, treatment)
    assert warning == ("too few users to judge: the incremental revenue and ROI compare the "
                       "same arms as the recall uplift (control 6/7, treatment 32/43); read "
                       "them as unknown, neither a loss nor a gain")
    assert money_warning({**small, "warning": None}, -341.12, control, treatment) is None
    # No revenue figure (no holdout), nothing to warn about.
    assert money_warning(small, None, control, treatment) is None
    arms = {"control": {"enrolled": 7, "converted": 6, "rate": 6 / 7, "revenue": 150.0,
                        "ci95": [0.49, 0.97]},
            "treatment": {"enrolled": 43, "converted": 32, "rate": 32 / 43, "revenue": 950.0,
                          "ci95": [0.6, 0.85]}}
    report = _report(arms=arms, uplift=small, cost=1.71, revenue=-341.12, roi=-200.48,
                     money_warning=warning)
    table = render(report, "table")
    assert (f"cost 1.71 CNY · incremental revenue -341.12 CNY · ROI -200.48 — warning: "
            f"{warning}") in table
    total = list(csv.DictReader(io.StringIO(render(report, "csv"))))[-1]
    assert total["kind"] == "total" and total["roi"] == "-200.48"
    assert total["note"] == warning and total["warning"] == small["warning"]
    assert json.loads(render(report, "json"))["money_warning"] == warning
    page = render(report, "html")
    assert "ROI -200.48 (too few users)" in page
    assert "incremental revenue\n-341.12 CNY (too few users)" in page
    assert f"Small sample: {warning}" in page
    # A sample large enough to judge: the figures stand bare.
    judged = _report(arms=arms, uplift={**small, "warning": None}, cost=1.71,
                     revenue=-341.12, roi=-200.48, money_warning=None)
    assert "too few users" not in render(judged, "html")
    assert "warning" not in render(judged, "table").split("cost 1.71 CNY")[1].splitlines()[0]


def test_an_undefined_roi_says_why() -> None:
    free = _report(cost=0.0, revenue=120.0, roi=None)
    assert "ROI — (nothing spent: no return on cost)" in render(free, "table")
    assert "(nothing spent: no return on cost)" in render(free, "html")
    no_holdout = _report(cost=1.0, revenue=None, roi=None)
    assert "ROI — (no holdout to compare: no incremental revenue)" in render(no_holdout, "table")


def test_uplift_axis_labels_never_overprint() -> None:
    """An interval end close to 0 (here -1.33 pp beside 0 on a 20 pp axis) would print its
    label over 0's: the axis keeps 0, and the ends are written out under the chart."""
    from orchestrator.reports.charts import TICK_GAP, uplift_chart

    arms = {"control": {"enrolled": 62, "converted": 11, "rate": 0.1774, "revenue": 0.0,
                        "ci95": [0.10, 0.29]},
            "treatment": {"enrolled": 678, "converted": 191, "rate": 0.2817, "revenue": 0.0,
                          "ci95": [0.25, 0.32]}}
    uplift = {"absolute": 0.1043, "relative": 0.588, "ci95": [-0.0133, 0.1874],
              "p_value": 0.078, "significant": False, "warning": None}
    chart = uplift_chart(_report(arms=arms, uplift=uplift))
    assert chart is not None
    xs = [t["x"] for t in chart["ticks"]]
    assert [t["text"] for t in chart["ticks"]] == ["+0.00 pp", "+18.74 pp"]
    assert all(b - a >= TICK_GAP for a, b in zip(xs, xs[1:], strict=False))
    page = render(_report(arms=arms, uplift=uplift), "html")
    assert "95% CI -1.33 pp to +18.74 pp" in page


def test_a_rung_roi_says_why_it_is_missing_or_unsure() -> None:
    from orchestrator.reports.formatting import rung_roi

    judged = {"absolute": 0.1, "warning": None}
    assert rung_roi({"roi": None, "cost": 0.0, "uplift": judged}) == "— (no cost)"
    assert rung_roi({"roi": 31.54, "cost": 23.04, "uplift": judged}) == "31.54"
    small = {"absolute": 0.1, "warning": "too few users to judge (holdout 1/3, reached 2/9)"}
    assert rung_roi({"roi": 31.54, "cost": 23.04, "uplift": small}) == "31.54 (too few users)"
