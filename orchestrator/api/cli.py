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
    from orchestrator.config import get_settings
    from orchestrator.store.db import get_engine

    settings = get_settings()
    engine = get_engine(settings)
    if migrate:
        from orchestrator.store.migrate import upgrade

        upgrade(engine)
    uvicorn.run(create_app(settings, engine=engine), host=host, port=port,
                proxy_headers=True, log_level="info")


def register(app: typer.Typer) -> None:
    app.command("api")(api)
