"""Chart geometry for the HTML views (the report page and the dashboard): pure functions
from report numbers to the coordinates and labels the SVG macros in
``templates/charts.html.j2`` draw. One implementation serves every page, so a chart reads
the same wherever it appears: every axis is drawn, labelled with its unit, and every bar or
point carries its value as text.
"""

from __future__ import annotations

from typing import Any

from orchestrator.reports.formatting import FUNNEL, count, pct, pp

BAR_WIDTH = 420  # px of the longest bar
ROW_HEIGHT = 20
AXIS_LEFT = 90  # px left of the bars for their labels
FOREST_LEFT = 190  # px left of the forest plot's axis, for journey names


def funnel_chart(step: dict[str, Any]) -> dict[str, Any]:
    """Bar geometry for one step: widths relative to its eligible count; a count that is
    not measured per touch gets no bar and says so."""
    top = max(step["eligible"], step["sent"], 1)
    bars = []
    for i, k in enumerate(FUNNEL):
        value = step[k]
        bars.append({"label": k, "value": count(value), "measured": value is not None,
                     "y": i * ROW_HEIGHT,
                     "width": round(BAR_WIDTH * (value or 0) / top, 1)})
    return {"step": step, "bars": bars, "height": len(FUNNEL) * ROW_HEIGHT + 34,
            "axis_y": len(FUNNEL) * ROW_HEIGHT, "top": f"{top:,}",
            "left": AXIS_LEFT, "bar_width": BAR_WIDTH, "row_height": ROW_HEIGHT}


def _scale(low: float, high: float, left: float, width: float) -> Any:
    """``x(value)`` over ``[min(low, 0), max(high, 0)]``: the axis always shows 0."""
    lo, hi = min(low, 0.0), max(high, 0.0)
    span = (hi - lo) or 1.0

    def x(value: float) -> float:
        return round(left + width * (float(value) - lo) / span, 1)

    return x, sorted({lo, 0.0, hi})


TICK_GAP = 60.0  # px: a tick label is about this wide; closer ticks would overprint


def _spaced(ticks: list[float], x: Any) -> list[dict[str, Any]]:
    """The axis ticks as labels, 0 always kept, an end dropped when its label would
    overprint 0's (the interval's own ends are written out beside the chart)."""
    kept = [{"x": x(0.0), "text": pp(0.0)}]
    for t in ticks:
        if t != 0.0 and all(abs(x(t) - k["x"]) >= TICK_GAP for k in kept):
            kept.append({"x": x(t), "text": pp(t)})
    return sorted(kept, key=lambda k: k["x"])


def uplift_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    """The arms' rates as bars on a 0–100% axis, and the uplift as a point with its CI
    whisker on a percentage-point axis that always shows 0."""
    uplift = report["uplift"]
    if uplift["absolute"] is None or uplift["ci95"] is None:
        return None
    low, high = (float(v) for v in uplift["ci95"])
    x, ticks = _scale(low, high, AXIS_LEFT, 400.0)
    rates = [{"arm": arm, "rate": n["rate"] or 0.0, "text": pct(n["rate"]),
              "width": round(400 * (n["rate"] or 0.0), 1)} for arm, n in report["arms"].items()]
    return {"zero": x(0.0), "low": x(low), "high": x(high), "point": x(uplift["absolute"]),
            "rates": rates, "uplift": uplift, "low_text": pp(low), "high_text": pp(high),
            "point_text": pp(uplift["absolute"]), "left": AXIS_LEFT,
            "ticks": _spaced(ticks, x),
            "rate_ticks": [{"x": AXIS_LEFT + 400 * t / 100, "text": f"{t}%"}
                           for t in (0, 25, 50, 75, 100)]}


def forest_chart(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each journey's recall uplift with its 95% CI on one shared percentage-point axis
    (``rows``: ``{"label", "uplift"}``); journeys without an interval are listed as such."""
    defined = [r for r in rows if r["uplift"].get("ci95") and r["uplift"]["absolute"] is not None]
    if not defined:
        return None
    low = min(float(r["uplift"]["ci95"][0]) for r in defined)
    high = max(float(r["uplift"]["ci95"][1]) for r in defined)
    x, ticks = _scale(low, high, FOREST_LEFT, 360.0)
    items = []
    for i, row in enumerate(rows):
        up = row["uplift"]
        y = 28 + i * 26
        item = {"label": row["label"], "y": y, "warning": bool(up.get("warning"))}
        if row in defined:
            item |= {"low": x(up["ci95"][0]), "high": x(up["ci95"][1]),
                     "point": x(up["absolute"]), "text": pp(up["absolute"])}
        items.append(item)
    axis_y = 28 + len(rows) * 26
    return {"rows": items, "zero": x(0.0), "left": FOREST_LEFT, "right": FOREST_LEFT + 360,
            "axis_y": axis_y, "height": axis_y + 40,
            "ticks": _spaced(ticks, x)}
