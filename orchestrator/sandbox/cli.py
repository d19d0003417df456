"""``recall sandbox``: the provider sandbox as its own process."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("sandbox")(sandbox)


def sandbox(
    port: int = typer.Option(8081, "--port", "-p", help="Port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
) -> None:
    """Serve the WeChat OA / WeCom / Twilio sandbox (set RECALL_*_API_BASE to its URL)."""
    from orchestrator.sandbox.server import serve

    typer.echo(
        f"Recall sandbox on http://{host}:{port}  (control API: /_sandbox, docs: /docs)", err=True
    )
    serve(host=host, port=port)
