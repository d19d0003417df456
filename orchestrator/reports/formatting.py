"""How every view writes a report's numbers (terminal table, CSV cells, HTML report,
dashboard): one function per kind of number, so a delay, an amount or a rate reads the
same everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.clock import as_utc

FUNNEL = ("eligible", "sent", "delivered", "clicked", "converted")
NOT_MEASURED = "n/m"  # not measured per touch (aggregate-only)
NOT_YET = "not yet"  # a retention window that no user's data covers yet


def pct(value: float | None) -> str:
    """A rate: ``0.1234`` → ``12.34%``; undefined → ``—``."""
    return "—" if value is None else f"{value:.2%}"


def pp(value: float | None) -> str:
    """A difference of rates in percentage points: ``0.05`` → ``+5.00 pp``."""
    return "—" if value is None else f"{value * 100:+.2f} pp"


def num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def count(value: int | None) -> str:
    """A count; ``None`` is a count that is not measured per touch."""
    return NOT_MEASURED if value is None else f"{value:,}"


def money(value: float | None, currency: str) -> str:
    """An amount with its currency: ``52.2, "CNY"`` → ``52.20 CNY``."""
    return "—" if value is None else f"{value:,.2f} {currency}"


def minutes(seconds: float | None) -> str:
    """A delay, always in minutes (terminal and HTML alike)."""
    return "—" if seconds is None else f"{seconds / 60:,.1f} min"


def p_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def stars(uplift: dict[str, Any]) -> str:
    """``*``/``**``/``***`` for p below 0.05/0.01/0.001, only when a verdict is given."""
    p = uplift.get("p_value")
    if p is None or uplift.get("warning") or not uplift.get("significant"):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


def verdict(uplift: dict[str, Any]) -> str:
    """The plain reading of an uplift: significant or not at 5%, or the warning."""
    if uplift.get("warning"):
        return f"warning: {uplift['warning']}"
    return "significant at 5%" if uplift.get("significant") else "not significant at 5%"


def interval(uplift: dict[str, Any]) -> str:
    """``[-1.20, +3.40] pp``; ``—`` when undefined."""
    ci = uplift.get("ci95")
    return f"[{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}] pp" if ci else "—"


def uplift_line(uplift: dict[str, Any], label: str = "uplift") -> str:
    relative = uplift.get("relative")
    rel = "" if relative is None else f" (relative {relative:+.1%})"
    mark = stars(uplift)
    return (f"{label} {pp(uplift.get('absolute'))}{rel}, 95% CI {interval(uplift)}, "
            f"p = {p_value(uplift.get('p_value'))}{' ' + mark if mark else ''} — "
            f"{verdict(uplift)}")


def period_line(report: dict[str, Any]) -> str:
    period = report.get("period") or {}
    return (f"period {_day(period.get('from'))} → {_day(period.get('to'))} (UTC) · made "
            f"{minute(report.get('generated_at'))} UTC")


def _day(stamp: str | None) -> str:
    return "—" if not stamp else stamp[:10]


def minute(value: datetime | str | None) -> str:
    """A time to the minute in UTC: ``2026-03-02 10:00``; ``—`` when there is none."""
    if not value:
        return "—"
    if isinstance(value, datetime):
        value = as_utc(value).isoformat()
    return value[:16].replace("T", " ")


def window_label(window: dict[str, Any]) -> str:
    return f"{window['window']} (days {window['first_day']}–{window['last_day']})"





def retention_rate(window: dict[str, Any], arm: str) -> str:
    """An arm's rate in a retention window; ``not yet`` when no user's window has closed
    within the data (the window's ``note`` says why)."""
    numbers = window[arm]
    if numbers["rate"] is None and window.get("pending"):
        return NOT_YET
    return pct(numbers["rate"])


def retention_share(window: dict[str, Any], arm: str) -> str:
    """``retained/eligible = rate``, or ``not yet``."""
    numbers = window[arm]
    if numbers["rate"] is None and window.get("pending"):
        return NOT_YET
    return f"{numbers['retained']:,}/{numbers['eligible']:,} = {pct(numbers['rate'])}"


TOO_FEW = "too few users"  # beside a sum of money whose comparison is too small to judge


def unjudged(text: str, report: dict[str, Any]) -> str:
    """A money figure of the report (incremental revenue, ROI), marked when the arms are
    too small to judge it (the report's ``money_warning`` says why)."""
    return f"{text} ({TOO_FEW})" if report.get("money_warning") and text != "—" else text


def roi_reason(report: dict[str, Any]) -> str:
    """Why a report's ROI is undefined (`` (…)``), or nothing when it is a number."""
    if report.get("roi") is not None:
        return ""
    if report.get("revenue") is None:
        return " (no holdout to compare: no incremental revenue)"
    return " (nothing spent: no return on cost)" if not report.get("cost") else ""


def money_line(report: dict[str, Any]) -> str:
    """Cost, incremental revenue and ROI in one line, with the warning when there is one."""
    currency = report.get("currency") or ""
    text = (f"cost {money(report['cost'], currency)} · incremental revenue "
            f"{money(report['revenue'], currency)} · ROI {num(report['roi'])}"
            f"{roi_reason(report)}")
    warning = report.get("money_warning")
    return f"{text} — warning: {warning}" if warning else text


def rung_roi(rung: dict[str, Any], *, mark: bool = True) -> str:
    """A rung's ROI: ``— (no cost)`` for a free channel, marked ``(too few users)`` when its
    own comparison carries the small-sample warning (``mark=False`` where the warning is
    written beside the table instead)."""
    if rung.get("roi") is None:
        return "— (no cost)" if not rung.get("cost") else "—"
    text = num(rung["roi"])
    warned = (rung.get("uplift") or {}).get("warning")
    return f"{text} ({TOO_FEW})" if warned and mark else text
