"""``recall api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer


def api(
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 for all).")] = "127.0.0.1",
    migrate: Annotated[
        bool, typer.Option(help="Upgrade the database schema before serving (idempotent).")
    ] = True,
) -> None:
    """Serve the HTTP API (events, webhooks, callbacks, short links; OpenAPI at /docs)."""
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.api.exposure import check_can_serve, sandbox_secrets_allowed
    from orchestrator.config import get_settings
    from orchestrator.errors import ConfigError
    from orchestrator.logs import configure_logging
    from orchestrator.store.db import get_engine

    settings = get_settings()
    try:
        check_can_serve(settings, host)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    configure_logging()
    engine = get_engine(settings)
    if migrate:
        from orchestrator.store.migrate import upgrade

        upgrade(engine)
    app = create_app(settings, engine=engine,
                     allow_sandbox_secrets=sandbox_secrets_allowed(settings, host))
    uvicorn.run(app, host=host, port=port, proxy_headers=True, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("api")(api)
