"""``recall segment`` and ``recall churn train|score``."""

from __future__ import annotations

import csv
from datetime import date, datetime, time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from orchestrator import console
from orchestrator.audience.config import AudienceConfig, load_audience_config
from orchestrator.audience.features import refresh_features
from orchestrator.audience.segments import tier_summary
from orchestrator.clock import as_utc
from orchestrator.config import Settings, get_settings
from orchestrator.errors import RecallError
from orchestrator.journeys.durations import format_duration, parse_duration
from orchestrator.store.clock import StoredClock
from orchestrator.store.db import get_engine
from orchestrator.store.migrate import upgrade

if TYPE_CHECKING:  # scikit-learn loads only when a churn command runs
    from orchestrator.audience.churn import ChurnMetrics, TrainedModel

churn_app = typer.Typer(help="Train and apply the churn model.", no_args_is_help=True)
out = console.stdout()
err = console.stderr()


class ModelChoice(StrEnum):
    logreg = "logreg"
    gbm = "gbm"


class CalibrationChoice(StrEnum):
    isotonic = "isotonic"
    platt = "platt"


def parse_when(text: str, config: AudienceConfig) -> datetime:
    """``2026-03-01`` (local midnight in the policy timezone) or an ISO datetime (naive
    ones are local too) → aware UTC."""
    try:
        if len(text) == 10:
            return as_utc(datetime.combine(date.fromisoformat(text), time(0), config.zone))
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not a date: write 2026-03-01 or 2026-03-01T10:00+08:00"
        ) from exc
    return as_utc(moment if moment.tzinfo else moment.replace(tzinfo=config.zone))


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return text


def _store(settings: Settings) -> Engine:
    engine = get_engine(settings)
    upgrade(engine)
    return engine


def _fail(command: str, exc: Exception) -> typer.Exit:
    err.print(f"recall {command}: {exc}", markup=False, highlight=False)
    return typer.Exit(1)


def segment(
    at: Annotated[
        str | None,
        typer.Option("--at", help="Business time, e.g. 2026-03-01; default: the store's clock."),
    ] = None,
) -> None:
    """Recompute every user's features, RFM scores, tier and churn score, in bulk."""
    try:
        settings = get_settings()
        config = load_audience_config(settings=settings)
        engine = _store(settings)
        when = parse_when(at, config) if at else StoredClock(engine).now()
        with _progress() as progress:
            task = progress.add_task("segmenting users", total=None)
            written = refresh_features(
                engine, at=when, settings=settings, config=config,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        summary = tier_summary(engine, at=when)
    except RecallError as exc:
        raise _fail("segment", exc) from exc
    out.print(f"{written:,} users segmented at {when.astimezone(config.zone):%Y-%m-%d %H:%M %Z}")
    table = Table()
    table.add_column("tier")
    table.add_column("users", justify="right")
    table.add_column("mean churn score", justify="right")
    for tier, (count, mean_score) in summary.items():
        table.add_row(tier, f"{count:,}", f"{mean_score:.3f}" if mean_score is not None else "-")
    out.print(table)


@churn_app.command("train")
def churn_train(
    cutoff: Annotated[str, typer.Option("--cutoff", help="Features up to this date (local).")],
    horizon: Annotated[
        str,
        typer.Option("--horizon", callback=_duration, help="Label window, e.g. 14d."),
    ],
    model: Annotated[ModelChoice, typer.Option("--model", help="Model family.")] = (
        ModelChoice.logreg
    ),
    eval_cutoff: Annotated[
        str | None,
        typer.Option("--eval-cutoff", help="Held-out evaluation cutoff; default cutoff + horizon."),
    ] = None,
    calibration: Annotated[
        CalibrationChoice,
        typer.Option("--calibration", help="Calibrator fitted on the latest labelled window."),
    ] = CalibrationChoice.isotonic,
    origins: Annotated[
        int,
        typer.Option("--origins", min=1, help="Training windows stacked: the cutoff, then "
                     "a week earlier each."),
    ] = 4,
) -> None:
    """Train on windows at the cutoff and the weeks before it (labels up to cutoff +
    horizon), calibrate on the latest; report AUC, Brier, ECE, calibration and lift on a
    later held-out cutoff beside the recency rule; save a versioned model as the latest."""
    try:
        settings = get_settings()
        config = load_audience_config(settings=settings)
        engine = _store(settings)
        with err.status("training churn model"):
            from orchestrator.audience.churn import train

            trained = train(
                engine, cutoff=parse_when(cutoff, config), horizon=parse_duration(horizon),
                model=model.value, config=config, calibration=calibration.value,
                origins=origins,
                eval_cutoff=parse_when(eval_cutoff, config) if eval_cutoff else None,
            )
    except RecallError as exc:
        raise _fail("churn train", exc) from exc
    print_report(trained)


@churn_app.command("score")
def churn_score(
    at: Annotated[str, typer.Option("--at", help="Score as of this date (local).")],
    out_path: Annotated[Path, typer.Option("--out", help="CSV to write: user_id,churn_score.")],
    model_path: Annotated[
        Path | None,
        typer.Option("--model", help="A model file; default: the latest trained model."),
    ] = None,
) -> None:
    """Write every known user's churn score (the recency rule when no model exists)."""
    try:
        settings = get_settings()
        config = load_audience_config(settings=settings)
        engine = _store(settings)
        from orchestrator.audience.churn import score

        scores = score(
            engine, at=parse_when(at, config), model_path=model_path, config=config,
            models_dir=settings.state_dir / "models",
        )
    except RecallError as exc:
        raise _fail("churn score", exc) from exc
    with out_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "churn_score"])
        writer.writerows((uid, f"{value:.6f}") for uid, value in scores.items())
    err.print(f"wrote {len(scores):,} scores to {out_path}", highlight=False)


def print_report(trained: TrainedModel) -> None:
    zone = trained.config.zone
    m = trained.metrics
    cutoffs = ", ".join(f"{c.astimezone(zone):%Y-%m-%d}" for c in trained.origins)
    out.print(
        f"churn model [bold]{trained.kind}[/]: trained at cutoff "
        f"{trained.cutoff.astimezone(zone):%Y-%m-%d %H:%M}, horizon "
        f"{format_duration(trained.horizon)}"
    )
    out.print(f"training windows: {cutoffs} ({trained.train_rows:,} rows)")
    out.print(
        f"{trained.calibration} calibration on the latest window: "
        f"{trained.calibration_rows:,} users"
    )
    out.print(
        f"held out at {trained.eval_cutoff.astimezone(zone):%Y-%m-%d %H:%M}: {m.n:,} users, "
        f"{m.positives:,} churned ({m.base_rate:.1%})"
    )
    out.print(metrics_table(trained, m))
    out.print(calibration_table(m))
    out.print(f"top-decile lift: {m.top_decile_lift:.2f}")
    if trained.path:
        out.print(f"saved {trained.path} (now the latest)", highlight=False)


def metrics_table(trained: TrainedModel, m: ChurnMetrics) -> Table:
    table = Table(title="held-out scores")
    for name, justify in (("score", "left"), ("AUC", "right"), ("Brier", "right"),
                          ("ECE", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_row(f"model ({trained.kind})", f"{m.auc:.4f}", f"{m.brier:.4f}", f"{m.ece:.4f}")
    churned = trained.config.tiers.churned_days
    table.add_row(
        f"recency rule: min(1, recency / {churned:g}d)", f"{m.recency_rule_auc:.4f}",
        f"{m.rule_brier:.4f}", "-",
    )
    table.add_row("recency in days", f"{m.recency_auc:.4f}", "-", "-")
    at_risk = trained.config.tiers.at_risk_days
    table.add_row(f"no activity for {at_risk:g}d (yes/no)", f"{m.rule_auc:.4f}", "-", "-")
    return table


def calibration_table(m: ChurnMetrics) -> Table:
    table = Table(title="calibration (deciles of predicted churn)")
    for name in ("decile", "users", "mean predicted", "observed"):
        table.add_column(name, justify="right")
    for row in m.calibration:
        table.add_row(
            str(row.decile), f"{row.n:,}", f"{row.mean_predicted:.3f}", f"{row.observed_rate:.3f}"
        )
    return table


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    )


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
    app.add_typer(churn_app, name="churn")


__all__ = ["parse_when", "register"]
