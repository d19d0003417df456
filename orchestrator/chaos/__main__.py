"""``python -m orchestrator.chaos [--quick]``: prove exactly-once delivery under faults.

``make chaos`` runs the full size, ``make chaos-quick`` the quick one (``make test`` ends
with it). Prints one JSON line per count and per kind of weather, exits 1 when any count
is not zero or the run did not settle. Without PostgreSQL or a ``redis-server`` it skips
with a loud notice, except under ``CI=true``, where that fails. See docs/chaos.md.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer

from orchestrator.chaos.plan import Options

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    quick: Annotated[bool, typer.Option("--quick", help="≈2,000 users, a few minutes")] = False,
    users: Annotated[int | None, typer.Option(help="population size")] = None,
    workers: Annotated[int | None, typer.Option(help="`recall worker` processes (≥ 3)")] = None,
    seed: Annotated[int | None, typer.Option(help="the faults' schedule")] = None,
    workdir: Annotated[Path | None, typer.Option("--dir", help="logs, record, exports")] = None,
    keep_db: Annotated[bool, typer.Option("--keep-db", help="do not drop the database")] = False,
    postgres: Annotated[str, typer.Option(
        envvar="RECALL_CHAOS_POSTGRES_URL",
        help="a PostgreSQL server's admin database; the run creates and drops its own",
    )] = DEFAULT_POSTGRES,
) -> None:
    """A chaos run: prove that every touch reaches its person exactly once under faults."""
    from orchestrator.chaos.run import run
    from orchestrator.chaos.services import reachable, redis_binary

    changes = {"users": users, "workers": workers, "seed": seed}
    options = Options.quick(**changes) if quick else Options.full(**changes)
    binary = redis_binary()
    url = sa.engine.make_url(postgres)
    missing = [what for what, there in (
        ("a redis-server binary", binary is not None),
        (f"PostgreSQL at {url.host}:{url.port or 5432}",
         reachable(url.host or "127.0.0.1", url.port or 5432)),
    ) if not there]
    if missing:
        _skip(missing)
    assert binary is not None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = workdir or Path(".recall") / "chaos" / f"{'quick' if quick else 'full'}-{stamp}"
    typer.echo(f"chaos run in {target}", err=True)
    ok = run(options, target.resolve(), postgres, binary, sys.stdout, keep_db=keep_db)
    raise typer.Exit(0 if ok else 1)


def _skip(missing: list[str]) -> None:
    bar = "!" * 78
    message = f"CHAOS RUN SKIPPED: no {' and no '.join(missing)}."
    if os.environ.get("CI", "").lower() == "true":
        typer.echo(f"{bar}\n{message} CI=true requires them (.ci/run starts them).\n{bar}",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"{bar}\n{message} Exactly-once under faults was NOT checked.\n{bar}", err=True)
    raise typer.Exit(0)


if __name__ == "__main__":
    app()
