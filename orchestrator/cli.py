"""The ``recall`` command. Each area registers its own commands; this module only composes."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="recall",
    help="Recall: win back slipping users with YAML journeys over WeChat, WeCom and SMS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"recall {version('recall-orchestrator')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def _register_all() -> None:
    # One line per area; each module exposes ``register(app)``.
    from orchestrator.journeys.cli import register as _journeys; _journeys(app)  # noqa: E702, I001
    from orchestrator.engine.cli import register as _engine; _engine(app)  # noqa: E702, I001
    from orchestrator.policy.cli import register as _policy; _policy(app)  # noqa: E702, I001
    from orchestrator.policy.audit_cli import register as _audit; _audit(app)  # noqa: E702, I001
    from orchestrator.audience.cli import register as _audience; _audience(app)  # noqa: E702, I001
    from orchestrator.sandbox.cli import register as _sandbox; _sandbox(app)  # noqa: E702, I001
    from orchestrator.api.cli import register as _api; _api(app)  # noqa: E702, I001
    from orchestrator.reports.cli import register as _reports; _reports(app)  # noqa: E702, I001
    from orchestrator.demo.cli import register as _demo; _demo(app)  # noqa: E702, I001
    pass


_register_all()


def main() -> None:
    import atexit
    import gc

    from orchestrator.logs import configure_logging

    # The interpreter's last garbage collections walk every object the imports made (seconds
    # on a busy machine) only to free memory the exit frees anyway: skip them.
    atexit.register(gc.freeze)
    configure_logging()
    app()


if __name__ == "__main__":
    main()
