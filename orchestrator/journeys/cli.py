"""``recall validate``, ``recall schema`` and ``recall preview``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator import console
from orchestrator.config import get_settings
from orchestrator.errors import InputError, RecallError
from orchestrator.journeys.assign import arm_for, variant_for
from orchestrator.journeys.loader import check_paths, find_journey
from orchestrator.journeys.model import Journey, Policy
from orchestrator.journeys.preview import (
    TouchPreview,
    preview_journey,
    read_user_csv,
    read_user_from_store,
)
from orchestrator.journeys.schema import write_schemas

TemplatesOption = Annotated[
    Path | None, typer.Option(help="Templates folder (default: RECALL_TEMPLATES_DIR).")
]


def register(app: typer.Typer) -> None:
    """Add the journey commands to the ``recall`` app."""
    app.command("validate")(validate)
    app.command("schema")(schema)
    app.command("preview")(preview)


def _out() -> Console:
    return console.stdout()


def _err() -> Console:
    return console.stderr()


def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Journey files or folders (default: RECALL_JOURNEYS_DIR)."),
    ] = None,
    templates: TemplatesOption = None,
) -> None:
    """Check journeys, the policy and templates; print every problem as FILE:LINE:COL, then
    how each send step will be sent (shared mass send, per-recipient or fixed-link landing)."""
    settings = get_settings()
    report = check_paths(paths or [settings.journeys_dir], templates or settings.templates_dir)
    err = _err()
    for problem in [*report.errors, *report.warnings]:
        err.print(escape(str(problem)))
    if report.errors:
        err.print(escape(report.summary()))
        raise typer.Exit(1)
    out = _out()
    for line in report.modes:
        out.print(escape(line))
    out.print(escape(report.summary()))


def schema(
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to write to (default: the schemas folder of the journeys)."),
    ] = None,
) -> None:
    """Write journey.schema.json and policy.schema.json (JSON Schema) for editors."""
    for path in write_schemas(out or get_settings().journeys_dir / "schemas"):
        _out().print(f"wrote {escape(str(path))}")


def preview(
    journey: Annotated[str, typer.Argument(help="Journey id, or the path of a journey file.")],
    user: Annotated[str, typer.Option("--user", help="The user_id to render for.")],
    users: Annotated[
        Path | None,
        typer.Option("--users", help="users.csv to read the user from (else the database)."),
    ] = None,
    event_props: Annotated[
        str | None,
        typer.Option(help="JSON props of the entry event, e.g. '{\"amount\": 23.5}'."),
    ] = None,
    templates: TemplatesOption = None,
) -> None:
    """Render every send step of JOURNEY for one user, as it would be sent."""
    settings = get_settings()
    templates_dir = templates or settings.templates_dir
    try:
        loaded, policy = find_journey(settings.journeys_dir, journey, templates_dir)
        person = read_user_csv(users, user) if users else read_user_from_store(user)
        props = _json_object(event_props) if event_props else None
        touches = preview_journey(
            loaded, policy, person, templates_dir=templates_dir, event_props=props,
            public_base_url=settings.public_base_url,
        )
        times = _best_hours(loaded, policy, person)
    except RecallError as exc:
        _err().print(escape(f"error: {exc}"))
        raise typer.Exit(1) from None
    out = _out()
    arm = arm_for(loaded.id, user, loaded.holdout)
    out.print(
        f"[bold]{escape(loaded.id)}[/bold] {escape(loaded.name)} · version {loaded.version} · "
        f"user {escape(user)} · arm {arm}"
    )
    if arm == "control":
        out.print("[yellow]this user is in the holdout: no touch would be sent[/yellow]")
    for touch in touches:
        _print_touch(out, touch, times.get(touch.step_id))


def _best_hours(journey: Journey, policy: Policy, user: dict[str, Any]) -> dict[str, str]:
    """``at: best_hour`` steps: when each would go if it came due now (business time),
    from the user's activity in the store; a line saying why not without a store."""
    steps = [s.id for s in journey.send_steps()
             if s.at_for(variant_for(journey.id, s, user["user_id"])) == "best_hour"]
    if not steps:
        return {}
    try:
        from orchestrator.audience.config import load_audience_config
        from orchestrator.engine.besthour import preview_times
        from orchestrator.store.clock import StoredClock
        from orchestrator.store.db import get_engine

        settings = get_settings()
        db = get_engine(settings)
        now = StoredClock(db).now()
        activity = load_audience_config(settings=settings).activity_events
        found = preview_times(db, journey, policy, user, now=now, activity_events=activity)
    except Exception as exc:  # no store, or not migrated: the text preview still stands
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
        return {s: f"best hour (unknown without the activity store: {reason})" for s in steps}
    return {
        step: (
            f"best hour: {at.astimezone(tz):%Y-%m-%d %H:%M %Z} if due now "
            f"({now.astimezone(tz):%Y-%m-%d %H:%M %Z}); profile: {source}"
        )
        for step, (at, tz, source) in found.items()
    }


def _print_touch(out: Console, preview: TouchPreview, send_at: str | None = None) -> None:
    touch = preview.touch
    out.rule(f"step {preview.step_id} · {touch.channel}")
    if send_at is not None:
        out.print(f"send at:  {escape(send_at)}")
    out.print(f"template: {escape(touch.template)}")
    out.print(f"variant:  {escape(touch.variant or '-')}")
    if touch.title is not None:
        out.print(f"title:    {escape(touch.title)}")
    if preview.sms_text is not None:
        out.print(f"sms:      {escape(preview.sms_text)}")
        out.print(f"segments: {preview.segments} · cost {preview.cost:.3f}")
    else:
        out.print("text:")
        out.print(escape(touch.text))
    if preview.link_target and touch.link:
        out.print(f"link:     {escape(touch.link)} -> {escape(preview.link_target)} "
                  "(a new code for each touch)")
    elif touch.link:
        out.print(f"landing:  {escape(touch.link)} (the same for everyone)")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--event-props is not JSON: {exc}", field="--event-props") from exc
    if not isinstance(value, dict):
        raise InputError("--event-props must be a JSON object", field="--event-props")
    return value
