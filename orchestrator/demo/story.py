"""What the demo tells: the population by tier, the churn model, then per journey the
recall rate per arm with its interval, the funnel of every touch, the A/B variants against
each other, each channel's own increment (rung holdouts), what caps and quiet hours held
back, cost and ROI. In the terminal (``tell``) and as one HTML page (``write_html``).

Every number comes from the journeys' reports (``reports.funnel``) or from the store, so
the story, ``recall report`` and ``recall export`` agree.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.clock import as_utc, utcnow
from orchestrator.demo.run import DemoResult
from orchestrator.reports import formatting as fmt

FUNNEL = fmt.FUNNEL
SENT = ("sent", "delivered")


def tell(result: DemoResult, console: Console) -> None:
    """The story in the terminal."""
    o = result.options
    console.print(f"\n[bold]Recall demo[/]: {result.users:,} students of a synthetic campus, "
                  f"{o.days} virtual days from {result.start:%Y-%m-%d} (seed {o.seed}); "
                  f"providers: {_providers(result)}", highlight=False)
    console.print(_tiers_table(result))
    c = result.churn
    console.print(f"churn model {c['model']}: held-out AUC {c['auc']:.3f} (recency rule "
                  f"{c['recency_auc']:.3f}), Brier {c['brier']:.3f}, ECE {c['ece']:.3f}, "
                  f"top-decile lift "
                  f"{c['lift']:.2f} on {c['n']:,} users", highlight=False)
    console.print(churn_reading(c), highlight=False, soft_wrap=True)
    sim = result.simulated
    console.print(f"simulated {o.days} days in {sim.seconds:.1f}s: "
                  f"{sim.events_replayed:,} events replayed "
                  f"({result.future_events['payment_failed']:,} payment failures), "
                  f"{sum(sim.actions.values()):,} simulated responses", highlight=False)
    console.print(_journeys_table(result))
    for line in money_warnings(result):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(_arms_table(result))
    for line in retention_notes(result):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(_uplift_table(result))
    console.print(_funnel_table(result))
    if any(r.get("variants") for r in result.reports):
        console.print(_variants_table(result))
        for report in result.reports:
            for v in report.get("variants") or []:
                if (v["uplift"] or {}).get("warning"):
                    console.print(f"A/B {report['journey_id']}/{v['step_id']} {v['variant']}: "
                                  f"{v['uplift']['warning']}", highlight=False)
    if any(step.get("rung") for r in result.reports for step in r["steps"]):
        console.print(_rungs_table(result))
        console.print(_rung_money_table(result))
        for report in result.reports:
            for step in report["steps"]:
                if step.get("rung") and step["rung"]["uplift"].get("warning"):
                    console.print(f"rung {report['journey_id']}/{step['step_id']}: "
                                  f"{step['rung']['uplift']['warning']} (its incremental "
                                  "conversions, cost per incremental and ROI likewise)",
                                  highlight=False, soft_wrap=True)
    for report in result.reports:
        for step in report["steps"]:
            if step.get("note") and step["sent"]:
                console.print(f"{fmt.NOT_MEASURED} {report['journey_id']}/{step['step_id']}: "
                              f"{step['note']}", highlight=False)
    for line in pacing_lines(result):
        console.print(line, highlight=False)
    console.print(_money_line(result), highlight=False)


def churn_reading(c: dict[str, Any]) -> str:
    """How the model was trained, and what its ECE means on a sample this size."""
    floor = c["ece_floor"]
    verdict = ("within what chance alone gives: the sample, not the calibration, limits it"
               if c["ece"] <= 1.5 * floor else "more than chance alone explains")
    return (f"  trained as `recall churn train` does: {c['windows']} weekly windows "
            f"({c['train_rows']:,} rows), {c['calibration']} calibration on the latest "
            f"({c['calibration_rows']:,} users); ECE {c['ece']:.3f} against "
            f"{floor:.3f} that a perfectly calibrated model would show on {c['n']:,} users, "
            f"{verdict}")


def _providers(result: DemoResult) -> str:
    return ", ".join(f"{name} {where}" for name, where in result.providers.items())


def _tiers_table(result: DemoResult) -> Table:
    table = Table(title=f"population by tier at {result.start:%Y-%m-%d}")
    for column in ("tier", "users", "share", "mean churn score"):
        table.add_column(column, justify="left" if column == "tier" else "right")
    total = sum(n for n, _ in result.tiers.values()) or 1
    for tier, (n, score) in result.tiers.items():
        table.add_row(tier, f"{n:,}", fmt.pct(n / total), fmt.num(score, 3))
    return table


def journey_figures(result: DemoResult, report: dict[str, Any]) -> dict[str, Any]:
    """The per-journey counts the story prints (each can be recounted from the exports)."""
    steps = report["steps"]
    rows = result.counts.get(report["journey_id"], {})
    return {
        "enrollments": rows.get("enrollments", 0),
        "touches": rows.get("touches", 0),
        "sent": sum(step["sent"] for step in steps),
        "converted": {arm: n["converted"] for arm, n in report["arms"].items()},
    }


def _journeys_table(result: DemoResult) -> Table:
    table = Table(title="journeys")
    for column in ("journey", "enrollments", "touches", "sent", "cost", "incremental revenue",
                   "ROI"):
        table.add_column(column, justify="left" if column == "journey" else "right",
                         no_wrap=True)
    for report in result.reports:
        currency = report.get("currency", "")
        figures = journey_figures(result, report)
        table.add_row(report["journey_id"], _count(figures["enrollments"]),
                      _count(figures["touches"]), f"{figures['sent']:,}",
                      fmt.money(report["cost"], currency),
                      fmt.unjudged(fmt.money(report["revenue"], currency), report),
                      fmt.unjudged(fmt.num(report["roi"]), report))
    return table


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _arms_table(result: DemoResult) -> Table:
    retention = _window_labels(result)
    table = Table(title="recall rate by arm (each user once, first entry)")
    for column in ("journey", "arm", "users", "converted", "recall rate", "95% CI",
                   *(f"retained {w}" for w in retention)):
        table.add_column(column, justify="left" if column in ("journey", "arm") else "right",
                         no_wrap=True)
    for report in result.reports:
        windows = {w["window"]: w for w in report.get("retention") or []}
        for arm, n in report["arms"].items():
            treated = arm == "treatment"
            table.add_row(
                report["journey_id"] if not treated else "", arm, f"{n['enrolled']:,}",
                f"{n['converted']:,}", fmt.pct(n["rate"]), _interval(n.get("ci95")),
                *(fmt.retention_rate(windows[w], arm) if w in windows else "not measured"
                  for w in retention),
                end_section=treated)
    return table


def retention_notes(result: DemoResult) -> list[str]:
    """Why a retention cell reads ``not yet``, and whom a rate counts: one line per window
    (the reports' notes, said once for all journeys)."""
    lines = []
    for label in _window_labels(result):
        windows = [(r["journey_id"], w) for r in result.reports
                   for w in r.get("retention") or [] if w["window"] == label]
        unseen = [(j, w) for j, w in windows if w.get("note") and _nobody(w)]
        partial = [(j, w) for j, w in windows if w.get("note") and not _nobody(w)]
        if unseen:
            first = min(_first_entry(result, j) for j, _ in unseen)
            _, w = unseen[0]
            who = ("every journey" if len(unseen) == len(windows)
                   else ", ".join(j for j, _ in unseen))
            closes = first + timedelta(days=w["last_day"])
            lines.append(f"{fmt.NOT_YET}: retained {label} (days {w['first_day']}–"
                         f"{w['last_day']} after entry) is not observable in this run: the "
                         f"window ends after the data, which ends {_end(result)}; the earliest "
                         f"closes {closes:%Y-%m-%d} ({who})")
        if partial:
            counted = ", ".join(
                f"{j} {_counted(w):,} of {_counted(w) + w['pending']:,}" for j, w in partial)
            _, w = partial[0]
            lines.append(f"retained {label} counts the users whose days {w['first_day']}–"
                         f"{w['last_day']} ended by {_end(result)}: {counted}")
    return lines


def _window_labels(result: DemoResult) -> list[str]:
    """The retention windows of all journeys, shortest first (7d before 30d)."""
    last = {w["window"]: w["last_day"] for r in result.reports for w in r.get("retention") or []}
    return sorted(last, key=lambda label: last[label])


def _nobody(window: dict[str, Any]) -> bool:
    return all(window[arm]["rate"] is None for arm in ("control", "treatment"))


def _counted(window: dict[str, Any]) -> int:
    return int(window["control"]["eligible"] + window["treatment"]["eligible"])


def _first_entry(result: DemoResult, journey_id: str) -> datetime:
    report = next(r for r in result.reports if r["journey_id"] == journey_id)
    return as_utc(datetime.fromisoformat(report["period"]["from"].replace("Z", "+00:00")))


def _end(result: DemoResult) -> str:
    return f"{result.end:%Y-%m-%d %H:%M} (UTC{result.end:%z})".replace("+0800", "+08:00")


def _interval(ci: Any) -> str:
    return "—" if not ci else f"[{fmt.pct(ci[0])}, {fmt.pct(ci[1])}]"


def _uplift_table(result: DemoResult) -> Table:
    table = Table(title="uplift: treatment against the holdout")
    for column in ("journey", "uplift", "95% CI", "p", "reading"):
        table.add_column(column, justify="left" if column in ("journey", "reading") else "right",
                         no_wrap=column != "reading")
    for report in result.reports:
        uplift = report["uplift"]
        reading = ("too few users to judge: read the interval" if uplift.get("warning") else
                   "—" if uplift.get("p_value") is None else fmt.verdict(uplift))
        table.add_row(report["journey_id"], fmt.pp(uplift["absolute"]), fmt.interval(uplift),
                      f"{fmt.p_value(uplift['p_value'])} {fmt.stars(uplift)}".strip(), reading)
    return table


def _funnel_table(result: DemoResult) -> Table:
    table = Table(title="funnel per touch (treatment)")
    for column in ("journey", "step", "channel", *FUNNEL, "suppressed"):
        left = column in ("journey", "step", "channel", "suppressed")
        table.add_column(column, justify="left" if left else "right",
                         no_wrap=column != "suppressed")
    for report in result.reports:
        for i, step in enumerate(report["steps"]):
            suppressed = ", ".join(f"{r} {n:,}" for r, n in step["suppressed"].items()) or "—"
            last = i == len(report["steps"]) - 1
            table.add_row(report["journey_id"] if i == 0 else "", step["step_id"],
                          step["channel"], *(fmt.count(step[k]) for k in FUNNEL), suppressed,
                          end_section=last)
    return table


def _variants_table(result: DemoResult) -> Table:
    table = Table(title="A/B variants: users who reached the step, converted; each variant "
                        "against the step's first")
    for column in ("step", "variant (sent at)", "sent", "converted", "uplift", "95% CI", "p"):
        table.add_column(column, justify="left" if column in ("step", "variant (sent at)")
                         else "right", no_wrap=True)
    for report in result.reports:
        rows = report.get("variants") or []
        for i, v in enumerate(rows):
            up = v["uplift"]
            table.add_row(
                f"{report['journey_id']}/{v['step_id']}" if i == 0 or
                rows[i - 1]["step_id"] != v["step_id"] else "",
                f"{v['variant']} ({v['at'] or 'when due'})", f"{v['sent']:,}",
                f"{v['converted']:,}/{v['users']:,} = {fmt.pct(v['rate'])}",
                fmt.pp(up["absolute"]) if up else "reference", fmt.interval(up) if up else "",
                f"{fmt.p_value(up['p_value'])} {fmt.stars(up)}".strip() if up else "",
                end_section=i == len(rows) - 1)
    return table


def _rung_steps(result: DemoResult) -> list[tuple[str, dict[str, Any], str]]:
    """``(journey/step (share), step row, currency)`` of every step with a rung holdout."""
    return [(f"{r['journey_id']}/{step['step_id']}"
             + (f" ({step['rung']['share'] * 100:g}%)" if step["rung"]["share"] else ""),
             step, r.get("currency", ""))
            for r in result.reports for step in r["steps"] if step.get("rung")]


def _rungs_table(result: DemoResult) -> Table:
    table = Table(title="each channel's own increment: users who reached the step, held out "
                        "of it (rung holdout) or not")
    for column in ("step (holdout)", "channel", "held out", "reached", "uplift", "95% CI", "p"):
        table.add_column(column, justify="left" if column in ("step (holdout)", "channel")
                         else "right", no_wrap=True)
    for name, step, _ in _rung_steps(result):
        rung = step["rung"]
        up = rung["uplift"]
        table.add_row(
            name, step["channel"],
            f"{rung['holdout_converted']:,}/{rung['holdout']:,} = {fmt.pct(rung['holdout_rate'])}",
            f"{rung['treatment_converted']:,}/{rung['treatment']:,} = "
            f"{fmt.pct(rung['treatment_rate'])}",
            fmt.pp(up["absolute"]), fmt.interval(up),
            f"{fmt.p_value(up['p_value'])} {fmt.stars(up)}".strip())
    return table


def _rung_money_table(result: DemoResult) -> Table:
    table = Table(title="each channel's incremental return (against its rung holdout)")
    # Short headers: the table stays inside a 150-column terminal with "— (no cost)".
    for column in ("step (holdout)", "channel", "incr. conversions", "cost",
                   "cost per incremental", "incr. revenue", "ROI"):
        table.add_column(column, justify="left" if column in ("step (holdout)", "channel")
                         else "right", no_wrap=True)
    for name, step, currency in _rung_steps(result):
        rung = step["rung"]
        table.add_row(
            name, step["channel"],
            "—" if rung["incremental_conversions"] is None
            else f"{rung['incremental_conversions']:+,.1f}",
            fmt.money(rung["cost"], currency), fmt.money(rung["cost_per_incremental"], currency),
            fmt.money(rung["incremental_revenue"], currency), fmt.rung_roi(rung, mark=False))
    return table


def pacing_lines(result: DemoResult) -> list[str]:
    capped, deferred = result.pacing["capped"], result.pacing["deferred"]
    audit = result.audit
    kinds = audit.by_kind()
    return [
        "caps: " + (", ".join(f"{n:,} skipped by {r.removeprefix('capped:')}"
                              for r, n in sorted(capped.items())) or "no touch capped"),
        "deferred, then sent (quiet hours or a cap slot): " + (
            ", ".join(f"{c} {n:,}" for c, n in sorted(deferred.items())) or "none"),
        f"policy audit of {audit.sends:,} sends: " + ", ".join(
            f"{n:,} {kind.replace('_', '-')} violations" for kind, n in kinds.items()),
    ]


def money_warnings(result: DemoResult) -> list[str]:
    """Why a journey's incremental revenue and ROI read ``(too few users)``, or its ROI
    ``—``."""
    return [f"{report['journey_id']}: {report['money_warning']}"
            for report in result.reports if report.get("money_warning")] + [
        f"{report['journey_id']}: ROI —{fmt.roi_reason(report)}"
        for report in result.reports if fmt.roi_reason(report)]


def _money_line(result: DemoResult) -> str:
    currency = str(next((r["currency"] for r in result.reports if r.get("currency")), ""))
    cost = sum(r["cost"] for r in result.reports)
    revenue = sum(r["revenue"] or 0.0 for r in result.reports)
    roi = (revenue - cost) / cost if cost > 0 else None
    unjudged = [r["journey_id"] for r in result.reports if r.get("money_warning")]
    caveat = (f" (includes {', '.join(unjudged)}: {fmt.TOO_FEW} to judge)" if unjudged
              else "")
    return (f"all journeys: cost {fmt.money(cost, currency)} · incremental revenue "
            f"{fmt.money(revenue, currency)} · ROI {fmt.num(roi)}{caveat}")


def write_html(result: DemoResult, path: Path) -> None:
    """The story as one self-contained page: the population, then every journey's report."""
    from orchestrator.reports.html import render_page

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(
        "demo.html.j2", result=result, reports=result.reports, tiers=result.tiers,
        figures={r["journey_id"]: journey_figures(result, r) for r in result.reports},
        pacing=pacing_lines(result), money=_money_line(result), generated_at=utcnow(),
        churn_reading=churn_reading(result.churn).strip(),
    ), encoding="utf-8")
