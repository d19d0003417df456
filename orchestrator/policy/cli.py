"""``recall caps …``: look at and rebuild the frequency caps kept in Redis."""

from __future__ import annotations

import json
import sys

import typer
from redis import RedisError

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
    """Whether caps can be granted now: ready (prints the rebuild marker), rebuilding, or a
    rebuild pending (the worker rebuilds them from SQL before it grants any reservation).

    Exit 1 only for a real problem: Redis does not answer, or it may evict reservations.
    """
    try:
        store = CapStore(get_redis())
        state, marker, rebuilding = store.check(), store.epoch(), store.rebuilding()
    except (RecallError, RedisError) as exc:
        typer.echo(f"recall caps status: {exc}", err=True)
        raise typer.Exit(1) from exc
    if state == "ok":
        typer.echo(f"caps ready: {json.dumps(marker)}")
    elif rebuilding:
        typer.echo("caps rebuilding: reservations are being loaded from SQL; none is granted "
                   "until the load completes")
    else:
        why = ("Redis holds no caps yet (it started empty, restarted or was flushed)"
               if marker is None else
               "the rebuild marker names another Redis server (restored from a snapshot, "
               "or failed over), so reservations made since may be missing")
        typer.echo(f"caps rebuild pending: {why}; the worker rebuilds them from SQL before it "
                   "grants any reservation, and touches wait until then (`recall caps "
                   "rebuild` does it now)")


def register(app: typer.Typer) -> None:
    app.add_typer(caps_app, name="caps")


__all__ = ["register"]
