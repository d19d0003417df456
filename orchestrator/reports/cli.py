"""``recall report JOURNEY [--format table|json|csv|html] [--out FILE]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator import console
from orchestrator.config import get_settings
from orchestrator.errors import RecallError
from orchestrator.reports.render import Format, render

err = console.stderr()


def report_cmd(
    journey: Annotated[str, typer.Argument(help="Journey id, as in journeys/*.yaml.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = "table",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write to this file instead of standard output.")] = None,
) -> None:
    """Recall rate and retention by arm with uplift, 95% CI and p-value; funnel per step;
    cost and ROI."""
    from orchestrator.audience.config import load_audience_config
    from orchestrator.engine.book import JourneyBook
    from orchestrator.reports.funnel import journey_report
    from orchestrator.store.db import get_engine
    from orchestrator.store.migrate import upgrade

    settings = get_settings()
    try:
        book = JourneyBook(settings.journeys_dir, settings.templates_dir, settings.state_dir,
                           settings.timezone)
        found = book.latest(journey)
        engine = get_engine(settings)
        upgrade(engine)
        active = load_audience_config(settings=settings).activity_events
        text = render(journey_report(engine, found, book.policy_for(found),
                                     activity_events=active), fmt)
    except RecallError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    err.print(f"report written to {out}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
