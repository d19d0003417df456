"""A journey report (``funnel.journey_report``) as a terminal table, JSON, CSV or one
self-contained HTML page with inline SVG charts (no script, nothing fetched).

CSV layout (one header, one row per line, empty cells where a column does not apply):
``kind=arm`` rows (control, treatment), ``kind=retention`` and ``kind=retention_uplift``
rows, then ``kind=step`` rows (one per step and channel, in journey order), then
``kind=variant`` rows (per step and A/B variant: users in ``enrolled``, the rate and its
interval) each followed, but for a step's first variant, by a ``kind=variant_uplift`` row
(against the first), then one ``kind=total`` row (uplift, cost, revenue, ROI).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from orchestrator.reports import formatting as fmt
from orchestrator.reports.formatting import FUNNEL
from orchestrator.reports.html import report_page

Format = Literal["table", "json", "csv", "html"]
CSV_COLUMNS = (
    "kind", "name", "channel", "eligible", "sent", "delivered", "clicked", "converted",
    "suppressed", "suppressed_by_reason", "cost", "enrolled", "rate", "revenue",
    "uplift_absolute", "uplift_relative", "ci95_low", "ci95_high", "p_value", "significant",
    "warning", "roi", "currency", "note", "window", "retained", "rung_share", "rung_holdout",
    "rung_holdout_converted", "rung_treatment", "rung_treatment_converted",
    "incremental_conversions", "cost_per_incremental", "incremental_revenue", "variant", "at",
)


def render(report: dict[str, Any], fmt: Format) -> str:
    """The report as text in ``fmt``."""
    return {"table": to_table, "json": to_json, "csv": to_csv, "html": to_html}[fmt](report)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------ csv

def to_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    currency = report.get("currency")
    for arm, numbers in report["arms"].items():
        low, high = numbers.get("ci95") or (None, None)
        writer.writerow({"kind": "arm", "name": arm, "enrolled": numbers["enrolled"],
                         "converted": numbers["converted"], "rate": numbers["rate"],
                         "ci95_low": low, "ci95_high": high,
                         "revenue": numbers.get("revenue"), "currency": currency})
    for window in report.get("retention", []):
        for arm in ("control", "treatment"):
            numbers = window[arm]
            low, high = numbers.get("ci95") or (None, None)
            writer.writerow({"kind": "retention", "name": arm, "window": window["window"],
                             "eligible": numbers["eligible"], "retained": numbers["retained"],
                             "rate": numbers["rate"], "ci95_low": low, "ci95_high": high,
                             "note": window.get("note")})
        writer.writerow({"kind": "retention_uplift", "name": window["window"],
                         "window": window["window"], **_uplift_cells(window["uplift"]),
                         "note": window.get("note")})
    for step in report["steps"]:
        writer.writerow({
            "kind": "step", "name": step["step_id"],
            **{k: step[k] for k in ("channel", *FUNNEL, "cost")},
            "suppressed": sum(step["suppressed"].values()),
            "suppressed_by_reason": ";".join(f"{r}={n}" for r, n in step["suppressed"].items()),
            "currency": currency, "note": step.get("note"), **_rung_cells(step.get("rung")),
        })
    for v in report.get("variants", []):
        low, high = v.get("ci95") or (None, None)
        cells = {"name": v["step_id"], "variant": v["variant"], "at": v["at"]}
        writer.writerow({"kind": "variant", **cells, "enrolled": v["users"], "sent": v["sent"],
                         "clicked": v["clicked"], "converted": v["converted"],
                         "rate": v["rate"], "ci95_low": low, "ci95_high": high})
        if v["uplift"] is not None:
            writer.writerow({"kind": "variant_uplift", **cells, **_uplift_cells(v["uplift"])})
    writer.writerow(_total_row(report))
    return buffer.getvalue()


def _total_row(report: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "total", "name": report["journey_id"], "cost": report["cost"],
            "revenue": report["revenue"], "roi": report["roi"],
            "currency": report.get("currency"), **_uplift_cells(report["uplift"]),
            "note": report.get("money_warning")}


def _rung_cells(rung: dict[str, Any] | None) -> dict[str, Any]:
    """A step's rung holdout in its row: counts, increment, and the uplift columns."""
    if rung is None:
        return {}
    return {"rung_share": rung["share"], "rung_holdout": rung["holdout"],
            "rung_holdout_converted": rung["holdout_converted"],
            "rung_treatment": rung["treatment"],
            "rung_treatment_converted": rung["treatment_converted"],
            **{k: rung[k] for k in ("incremental_conversions", "cost_per_incremental",
                                    "incremental_revenue", "roi")},
            **_uplift_cells(rung["uplift"])}


def _uplift_cells(uplift: dict[str, Any]) -> dict[str, Any]:
    low, high = uplift["ci95"] or (None, None)
    return {"uplift_absolute": uplift["absolute"], "uplift_relative": uplift["relative"],
            "ci95_low": low, "ci95_high": high, "p_value": uplift["p_value"],
            "significant": uplift.get("significant"), "warning": uplift.get("warning")}


# ---------------------------------------------------------------------------- table

def to_table(report: dict[str, Any], width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)

    def line(text: str) -> None:  # one line, never wrapped: a reader may grep it
        console.print(text, highlight=False, soft_wrap=True)

    line(f"{report['journey_id']}: {fmt.period_line(report)}")
    console.print(_arms_table(report))
    line(fmt.uplift_line(report["uplift"], "recall uplift"))
    if report.get("retention"):
        console.print(_retention_table(report))
        for window in report["retention"]:
            if window.get("note"):
                line(f"retention {window['window']}: {window['note']}")
            if window["uplift"].get("warning"):
                line(f"retention {window['window']}: warning: {window['uplift']['warning']}")
    console.print(_steps_table(report))
    for step in report["steps"]:
        if step.get("note"):
            line(f"{step['step_id']} ({step['channel']}): {step['note']}")
    rungs = [step for step in report["steps"] if step.get("rung")]
    if rungs:
        console.print(_rungs_table(report, rungs))
        for step in rungs:
            if step["rung"]["uplift"].get("warning"):
                line(f"rung {step['step_id']}: warning: {step['rung']['uplift']['warning']} "
                     "(its incremental conversions, cost per incremental and ROI likewise)")
    if report.get("variants"):
        console.print(_variants_table(report["variants"]))
        for v in report["variants"]:
            if (v["uplift"] or {}).get("warning"):
                line(f"variant {v['step_id']}/{v['variant']}: warning: {v['uplift']['warning']}")
    line(_money_line(report))
    if report.get("wecom_senders"):
        console.print(_senders_table(report))
    return console.export_text()


def _money(report: dict[str, Any], value: float | None) -> str:
    return fmt.money(value, report.get("currency") or "")


def _money_line(report: dict[str, Any]) -> str:
    return fmt.money_line(report)


def _arms_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['journey_id']}: recall rate by arm (ITT, one per user)")
    for column in ("arm", "enrolled", "converted", "rate", "95% CI", "revenue"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, n in report["arms"].items():
        ci = n.get("ci95")
        table.add_row(arm, fmt.count(n["enrolled"]), fmt.count(n["converted"]),
                      fmt.pct(n["rate"]),
                      f"[{fmt.pct(ci[0])}, {fmt.pct(ci[1])}]" if ci else "—",
                      _money(report, n.get("revenue")))
    return table


def _retention_table(report: dict[str, Any]) -> Table:
    table = Table(title="retention by arm: active again in the window after entry (ITT, "
                        "first entry, users whose window has passed)")
    for column in ("window", "control", "treatment", "uplift", "95% CI", "p"):
        table.add_column(column, justify="left" if column == "window" else "right")
    for w in report["retention"]:
        up = w["uplift"]
        mark = fmt.stars(up)
        table.add_row(fmt.window_label(w),
                      *(fmt.retention_share(w, arm) for arm in ("control", "treatment")),
                      fmt.pp(up["absolute"]), fmt.interval(up),
                      fmt.p_value(up["p_value"]) + (f" {mark}" if mark else ""))
    return table


def _share(numbers: dict[str, Any]) -> str:
    return f"{numbers['retained']:,}/{numbers['eligible']:,} = {fmt.pct(numbers['rate'])}"


def _steps_table(report: dict[str, Any]) -> Table:
    table = Table(title="funnel by step (treatment)")
    for column in ("step", "channel", *FUNNEL, "suppressed", "cost"):
        table.add_column(column, justify="left" if column in ("step", "channel",
                                                             "suppressed") else "right")
    for step in report["steps"]:
        suppressed = ", ".join(f"{r} {n:,}" for r, n in step["suppressed"].items()) or "—"
        table.add_row(step["step_id"], step["channel"], *(fmt.count(step[k]) for k in FUNNEL),
                      suppressed, _money(report, step["cost"]))
    return table


def _rungs_table(report: dict[str, Any], steps: list[dict[str, Any]]) -> Table:
    table = Table(title="each step's own increment (rung holdouts): treatment users who "
                        "reached the step, held out of it or not")
    for column in ("step", "held out", "reached", "incremental conversions", "cost",
                   "cost per incremental", "ROI", "95% CI", "p"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in steps:
        rung = step["rung"]
        up = rung["uplift"]
        mark = fmt.stars(up)
        table.add_row(
            f"{step['step_id']} ({rung['share'] * 100:g}%)" if rung["share"]
            else f"{step['step_id']} (holdout removed)",
            _share({"retained": rung["holdout_converted"], "eligible": rung["holdout"],
                    "rate": rung["holdout_rate"]}),
            _share({"retained": rung["treatment_converted"], "eligible": rung["treatment"],
                    "rate": rung["treatment_rate"]}),
            "—" if rung["incremental_conversions"] is None
            else f"{rung['incremental_conversions']:+,.2f}",
            _money(report, rung["cost"]), _money(report, rung["cost_per_incremental"]),
            fmt.rung_roi(rung, mark=False), fmt.interval(up),
            fmt.p_value(up["p_value"]) + (f" {mark}" if mark else ""))
    return table


def _variants_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="A/B variants: treatment users who reached the step (each once), "
                        "converted; each variant against the step's first")
    for column in ("step", "variant (sent at)", "converted", "95% CI", "uplift",
                   "uplift 95% CI", "p"):
        table.add_column(column, justify="left" if column in ("step", "variant (sent at)")
                         else "right", no_wrap=True)
    for v in rows:
        up = v["uplift"]
        ci = v["ci95"]
        mark = fmt.stars(up) if up else ""
        table.add_row(
            v["step_id"], f"{v['variant']} ({v['at'] or 'when due'})",
            _share({"retained": v["converted"], "eligible": v["users"], "rate": v["rate"]}),
            f"[{fmt.pct(ci[0])}, {fmt.pct(ci[1])}]" if ci else "—",
            fmt.pp(up["absolute"]) if up else "reference", fmt.interval(up) if up else "",
            (fmt.p_value(up["p_value"]) + (f" {mark}" if mark else "")) if up else "")
    return table


def _senders_table(report: dict[str, Any]) -> Table:
    table = Table(title="WeCom tasks by staff sender")
    for column in ("sender", "created", "confirmed", "timed out", "pending",
                   "median confirmation delay"):
        table.add_column(column, justify="left" if column == "sender" else "right")
    for s in report["wecom_senders"]:
        table.add_row(s["sender"], *(fmt.count(s[k]) for k in ("created", "confirmed",
                                                               "timed_out", "pending")),
                      fmt.minutes(s["median_confirmation_s"]))
    return table


# ----------------------------------------------------------------------------- html

def to_html(report: dict[str, Any]) -> str:
    """The dashboard's journey report sections as one standalone page (same templates)."""
    return report_page(report)
