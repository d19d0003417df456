"""``python -m orchestrator.chaos`` without the servers it needs: a loud skip, except under
``CI=true``, where a run that proves nothing must fail."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from orchestrator.chaos.__main__ import app
from orchestrator.engine.stack import free_port


@pytest.fixture
def nowhere() -> str:
    """A PostgreSQL URL nothing answers at (a port just found free)."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def test_without_postgresql_the_run_is_skipped_loudly(
    nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = CliRunner().invoke(app, ["--quick", "--postgres", nowhere])
    assert result.exit_code == 0
    assert "CHAOS RUN SKIPPED: no PostgreSQL at 127.0.0.1:" in result.output
    assert "Exactly-once under faults was NOT checked." in result.output


def test_under_ci_a_missing_server_fails_the_run(
    nowhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = CliRunner().invoke(app, ["--quick", "--postgres", nowhere])
    assert result.exit_code == 1
    assert "CHAOS RUN SKIPPED: no PostgreSQL" in result.output
    assert "CI=true requires them" in result.output
