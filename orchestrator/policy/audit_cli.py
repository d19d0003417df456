"""``recall audit``: check a run's sends against caps, quiet hours and consent (exit 1 if any
broke them), recomputed from the touches, users and opt-outs without the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator import console
from orchestrator.errors import RecallError
from orchestrator.policy.audit import AuditReport, iter_violation_lines

SHOWN = 20  # violations printed; the rest are counted


def audit_cmd(
    journeys: Annotated[
        Path | None,
        typer.Option(
            "--journeys",
            file_okay=False,
            exists=True,
            help="journeys folder with policy.yaml (default: RECALL_JOURNEYS_DIR)",
        ),
    ] = None,
) -> None:
    """Audit every send in the database: caps, quiet hours, consent. Exit 1 on a violation.

    Sends are touches sent, delivered, sending, unknown, or failed as unknown_outcome
    (docs/policy.md, "Auditing a run").
    """
    err = console.stderr()
    try:
        with err.status("auditing touches"):
            report = _run(journeys)
    except RecallError as exc:
        typer.echo(f"recall audit: {exc}", err=True)
        raise typer.Exit(1) from exc
    _print(report)
    if report.violations:
        raise typer.Exit(1)


def _run(journeys: Path | None) -> AuditReport:
    from orchestrator.config import get_settings
    from orchestrator.journeys.loader import load_all
    from orchestrator.policy.audit import audit_store_report
    from orchestrator.store.db import get_engine
    from orchestrator.store.migrate import upgrade

    settings = get_settings()
    loaded, policy = load_all(journeys or settings.journeys_dir, settings.templates_dir)
    journey_policies = {journey.id: policy.tightened_by(journey.policy) for journey in loaded}
    engine = get_engine(settings)
    upgrade(engine)
    return audit_store_report(engine, policy=policy, journey_policies=journey_policies)


def _print(report: AuditReport) -> None:
    counts = report.by_kind()
    typer.echo(f"audit: {report.sends:,} sends checked of {report.touches:,} touches")
    typer.echo("violations: " + ", ".join(f"{kind} {n:,}" for kind, n in counts.items()))
    if not report.violations:
        typer.echo("no cap, quiet-hour or consent violation")
        return
    for line in iter_violation_lines(report.violations[:SHOWN]):
        typer.echo(f"  {line}")
    hidden = len(report.violations) - SHOWN
    if hidden > 0:
        typer.echo(f"  … and {hidden:,} more")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)


__all__ = ["audit_cmd", "register"]
