"""A journey report (``funnel.journey_report``) as a terminal table, JSON, CSV or one
self-contained HTML page with inline SVG charts (no script, nothing fetched).

CSV layout (one header, one row per line, empty cells where a column does not apply):
``kind=arm`` rows (control, treatment), then ``kind=step`` rows (one per step and channel,
in journey order), then one ``kind=total`` row (uplift, cost, revenue, ROI).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Literal

from jinja2 import Environment
from rich.console import Console
from rich.table import Table

Format = Literal["table", "json", "csv", "html"]
FUNNEL = ("eligible", "sent", "delivered", "clicked", "converted")
CSV_COLUMNS = (
    "kind", "name", "channel", "eligible", "sent", "delivered", "clicked", "converted",
    "suppressed", "suppressed_by_reason", "cost", "enrolled", "rate", "revenue",
    "uplift_absolute", "uplift_relative", "ci95_low", "ci95_high", "p_value", "roi",
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
    for arm, numbers in report["arms"].items():
        writer.writerow({"kind": "arm", "name": arm, "enrolled": numbers["enrolled"],
                         "converted": numbers["converted"], "rate": numbers["rate"],
                         "revenue": numbers.get("revenue")})
    for step in report["steps"]:
        writer.writerow({
            "kind": "step", "name": step["step_id"],
            **{k: step[k] for k in ("channel", *FUNNEL, "cost")},
            "suppressed": sum(step["suppressed"].values()),
            "suppressed_by_reason": ";".join(f"{r}={n}" for r, n in step["suppressed"].items()),
        })
    writer.writerow(_total_row(report))
    return buffer.getvalue()


def _total_row(report: dict[str, Any]) -> dict[str, Any]:
    uplift = report["uplift"]
    low, high = uplift["ci95"] or (None, None)
    return {"kind": "total", "name": report["journey_id"], "cost": report["cost"],
            "revenue": report["revenue"], "uplift_absolute": uplift["absolute"],
            "uplift_relative": uplift["relative"], "ci95_low": low, "ci95_high": high,
            "p_value": uplift["p_value"], "roi": report["roi"]}


# ---------------------------------------------------------------------------- table

def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def to_table(report: dict[str, Any], width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(_arms_table(report))
    console.print(_uplift_line(report))
    console.print(_steps_table(report))
    console.print(f"cost {_num(report['cost'])} · incremental revenue "
                  f"{_num(report['revenue'])} · ROI {_num(report['roi'])}")
    if report.get("wecom_senders"):
        console.print(_senders_table(report))
    return console.export_text()


def _arms_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['journey_id']}: recall rate by arm (ITT, one per user)")
    for column in ("arm", "enrolled", "converted", "rate", "revenue"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, n in report["arms"].items():
        table.add_row(arm, f"{n['enrolled']:,}", f"{n['converted']:,}", _pct(n["rate"]),
                      _num(n.get("revenue")))
    return table


def _uplift_line(report: dict[str, Any]) -> str:
    uplift = report["uplift"]
    ci = uplift["ci95"]
    ci_text = f"[{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "—"
    p_value = "—" if uplift["p_value"] is None else f"{uplift['p_value']:.4g}"
    return (f"uplift {_pct(uplift['absolute'])} (relative {_pct(uplift['relative'])}), "
            f"95% CI {ci_text}, p = {p_value}")


def _steps_table(report: dict[str, Any]) -> Table:
    table = Table(title="funnel by step (treatment)")
    for column in ("step", "channel", *FUNNEL, "suppressed", "cost"):
        table.add_column(column, justify="left" if column in ("step", "channel",
                                                             "suppressed") else "right")
    for step in report["steps"]:
        suppressed = ", ".join(f"{r} {n:,}" for r, n in step["suppressed"].items()) or "—"
        table.add_row(step["step_id"], step["channel"], *(f"{step[k]:,}" for k in FUNNEL),
                      suppressed, _num(step["cost"]))
    return table


def _senders_table(report: dict[str, Any]) -> Table:
    table = Table(title="WeCom tasks by staff sender")
    for column in ("sender", "created", "confirmed", "timed out", "pending", "median delay"):
        table.add_column(column, justify="left" if column == "sender" else "right")
    for s in report["wecom_senders"]:
        delay = s["median_confirmation_s"]
        table.add_row(s["sender"], *(f"{s[k]:,}" for k in ("created", "confirmed",
                                                           "timed_out", "pending")),
                      "—" if delay is None else f"{delay / 60:,.1f} min")
    return table


# ----------------------------------------------------------------------------- html

BAR_WIDTH = 420  # px of the longest funnel bar
ROW_HEIGHT = 18


def _funnel_chart(step: dict[str, Any]) -> dict[str, Any]:
    """Bar geometry for one step: widths relative to its eligible count."""
    top = max(step["eligible"], step["sent"], 1)
    bars = [{"label": k, "value": step[k], "y": i * ROW_HEIGHT,
             "width": round(BAR_WIDTH * step[k] / top, 1)} for i, k in enumerate(FUNNEL)]
    return {"step": step, "bars": bars, "height": len(FUNNEL) * ROW_HEIGHT}


def _uplift_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    """The arms' rates as bars and the uplift as a point with its CI whisker, on one scale
    that always shows 0."""
    uplift = report["uplift"]
    if uplift["absolute"] is None or uplift["ci95"] is None:
        return None
    low, high = (float(v) for v in uplift["ci95"])
    lo, hi = min(low, 0.0), max(high, 0.0)
    span = (hi - lo) or 1.0

    def x(value: float) -> float:
        return round(40.0 + 400.0 * (float(value) - lo) / span, 1)

    rates = [{"arm": arm, "rate": n["rate"] or 0.0,
              "width": round(400 * (n["rate"] or 0.0), 1)} for arm, n in report["arms"].items()]
    absolute: float = uplift["absolute"]
    return {"zero": x(0.0), "low": x(low), "high": x(high), "point": x(absolute),
            "rates": rates, "uplift": uplift}


def to_html(report: dict[str, Any]) -> str:
    template = _ENV.from_string(_PAGE)
    return template.render(
        r=report, pct=_pct, num=_num, funnels=[_funnel_chart(s) for s in report["steps"]],
        uplift=_uplift_chart(report), uplift_text=_uplift_line(report),
        bar_width=BAR_WIDTH, row_height=ROW_HEIGHT,
    )


_ENV = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Recall report: {{ r.journey_id }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.bar { fill: #4a7bd0; } .control { fill: #999; } .ci { stroke: #c33; stroke-width: 2; }
svg text { font-size: 12px; }
</style></head><body>
<h1>{{ r.journey_name or r.journey_id }} <small>({{ r.journey_id }})</small></h1>
<h2>Recall rate by arm</h2>
<table><tr><th>arm</th><th>enrolled</th><th>converted</th><th>rate</th><th>revenue</th></tr>
{% for arm, n in r.arms.items() %}
<tr><td>{{ arm }}</td><td>{{ n.enrolled }}</td><td>{{ n.converted }}</td>
<td>{{ pct(n.rate) }}</td><td>{{ num(n.revenue) }}</td></tr>
{% endfor %}
</table>
<p>{{ uplift_text }}</p>
{% if uplift %}
<svg role="img" aria-label="uplift" width="480" height="120" xmlns="http://www.w3.org/2000/svg">
{% for rate in uplift.rates %}
<rect class="{{ 'control' if rate.arm == 'control' else 'bar' }}" x="80" y="{{ loop.index0 * 22 }}"
 width="{{ rate.width }}" height="16"/>
<text x="0" y="{{ loop.index0 * 22 + 12 }}">{{ rate.arm }} {{ pct(rate.rate) }}</text>
{% endfor %}
<line x1="{{ uplift.zero }}" y1="55" x2="{{ uplift.zero }}" y2="115" stroke="#000"/>
<line class="ci" x1="{{ uplift.low }}" y1="85" x2="{{ uplift.high }}" y2="85"/>
<line class="ci" x1="{{ uplift.low }}" y1="78" x2="{{ uplift.low }}" y2="92"/>
<line class="ci" x1="{{ uplift.high }}" y1="78" x2="{{ uplift.high }}" y2="92"/>
<circle cx="{{ uplift.point }}" cy="85" r="5" fill="#c33"/>
<text x="{{ uplift.zero + 4 }}" y="112">0</text>
</svg>
{% endif %}
<h2>Funnel by step</h2>
{% for f in funnels %}
<h3>{{ f.step.step_id }} · {{ f.step.channel }} · cost {{ num(f.step.cost) }}</h3>
<svg role="img" aria-label="funnel {{ f.step.step_id }}" width="{{ bar_width + 200 }}"
 height="{{ f.height }}" xmlns="http://www.w3.org/2000/svg">
{% for b in f.bars %}
<rect class="bar" x="90" y="{{ b.y }}" width="{{ b.width }}" height="{{ row_height - 4 }}"/>
<text x="0" y="{{ b.y + 12 }}">{{ b.label }}</text>
<text x="{{ 95 + b.width }}" y="{{ b.y + 12 }}">{{ b.value }}</text>
{% endfor %}
</svg>
{% if f.step.suppressed %}
<p>suppressed:
{% for reason, n in f.step.suppressed.items() %}{{ reason }} {{ n }}{{ ", " if not loop.last }}
{% endfor %}</p>
{% endif %}
{% endfor %}
<p>cost {{ num(r.cost) }} · incremental revenue {{ num(r.revenue) }} · ROI {{ num(r.roi) }}</p>
{% if r.wecom_senders %}
<h2>WeCom tasks by staff sender</h2>
<table><tr><th>sender</th><th>created</th><th>confirmed</th><th>timed out</th><th>pending</th>
<th>median delay (s)</th></tr>
{% for s in r.wecom_senders %}
<tr><td>{{ s.sender }}</td><td>{{ s.created }}</td><td>{{ s.confirmed }}</td>
<td>{{ s.timed_out }}</td><td>{{ s.pending }}</td>
<td>{{ num(s.median_confirmation_s, 0) }}</td></tr>
{% endfor %}
</table>
{% endif %}
</body></html>
"""
