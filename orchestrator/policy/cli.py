"""``recall caps …``: look at and rebuild the frequency caps kept in Redis."""

from __future__ import annotations

import json
import sys

import typer

from orchestrator.errors import RecallError, RetryLater
from orchestrator.policy.caps import CapStore
from orchestrator.policy.rebuild import count_held, rebuild_from_store
from orchestrator.store.db import get_engine
from orchestrator.store.redis import get_redis

caps_app = typer.Typer(
    help="Frequency caps in Redis (rebuilt from SQL after a Redis restart).",
    no_args_is_help=True,
)


@caps_app.command("rebuild")
def rebuild(
    reset: bool = typer.Option(
        False,
        "--reset",
        help="Drop every reservation in Redis first (reserving refuses until the end).",
    ),
) -> None:
    """Load held touches' cap reservations from the database into Redis.

    Held: sending, unknown, sent or delivered. Reserving resumes when the load completes.
    """
    try:
        engine, store = get_engine(), CapStore(get_redis())
        total = count_held(engine)
        with typer.progressbar(length=total, label="rebuilding caps", file=sys.stderr) as bar:
            count = rebuild_from_store(engine, store, reset=reset, progress=bar.update)
    except (RecallError, RetryLater) as exc:
        typer.echo(f"recall caps rebuild: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"caps rebuilt: {count} held reservations loaded under {store.prefix}")


@caps_app.command("status")
def status() -> None:
    """Print the rebuild marker; exit 1 when Redis holds no caps (a rebuild is needed)."""
    try:
        store = CapStore(get_redis())
        marker = store.epoch()
    except RecallError as exc:
        typer.echo(f"recall caps status: {exc}", err=True)
        raise typer.Exit(1) from exc
    if marker is None:
        typer.echo(
            f"caps need a rebuild: {store.epoch_key} is missing; run `recall caps rebuild`",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(json.dumps(marker))


def register(app: typer.Typer) -> None:
    app.add_typer(caps_app, name="caps")


__all__ = ["register"]
