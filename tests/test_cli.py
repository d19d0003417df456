"""The `recall` command as a user meets it: help, version, and errors one per line when piped
(CliRunner's output is not a terminal, so rich would wrap at 80 columns)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import get_settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IDS = sorted(p.stem for p in (REPO / "journeys").glob("*.yaml") if p.stem != "policy")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("RECALL_DATABASE_URL", "RECALL_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECALL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(REPO / "journeys"))
    monkeypatch.setenv("RECALL_TEMPLATES_DIR", str(REPO / "templates"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def every_command() -> list[list[str]]:
    found = []
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        found.append([name])
        found += [[name, sub] for sub in getattr(command, "commands", {})]
    return found


def test_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"recall {version('recall-orchestrator')}\n")


@pytest.mark.parametrize("command", every_command(), ids=" ".join)
def test_help_shows_no_type_after_a_flag(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout


def test_simulate_help_describes_every_option() -> None:
    lines = CliRunner().invoke(app, ["simulate", "--help"]).stdout.splitlines()
    for option in ("--days", "--start", "--users", "--events", "--journeys", "--responses",
                   "--seed"):
        line = next(line for line in lines if line.strip().startswith(option))
        assert len(line.split()) > 2, f"{option} has no description: {line!r}"


def test_a_usage_error_is_one_line() -> None:
    result = CliRunner().invoke(app, ["simulate", "--days", "soon"])
    assert result.exit_code == 2
    assert ("Error: Invalid value for '--days': Input should be a valid number, unable to "
            "parse string as a number") in result.stderr.splitlines()


def test_pause_of_a_journey_that_does_not_exist_lists_the_journeys(env: Path) -> None:
    result = CliRunner().invoke(app, ["pause", "nope"])
    assert result.exit_code == 1
    assert result.stderr == f"error: no journey 'nope'; journeys: {', '.join(SAMPLE_IDS)}\n"


def test_pause_suggests_the_journey_meant(env: Path) -> None:
    result = CliRunner().invoke(app, ["stop", "winback-at-rsk"])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: no journey 'winback-at-rsk' (did you mean 'winback-at-risk'?); journeys: ")


def test_pause_of_a_journey_not_launched_yet_says_how_to_launch_it(env: Path) -> None:
    result = CliRunner().invoke(app, ["pause", "winback-at-risk"])
    assert result.exit_code == 1
    assert result.stderr == ("error: journey 'winback-at-risk' has never run here; nothing to "
                             "pause (launch it with `recall enroll winback-at-risk`)\n")


def test_pause_and_resume_a_journey_that_has_run(env: Path) -> None:
    from orchestrator.engine.book import JourneyBook
    from orchestrator.store.db import get_engine
    from orchestrator.store.migrate import upgrade

    settings = get_settings()
    engine = get_engine(settings)
    upgrade(engine)
    JourneyBook(settings.journeys_dir, settings.templates_dir, settings.state_dir,
                settings.timezone).sync(engine, now=_now())
    paused = CliRunner().invoke(app, ["pause", "winback-at-risk"])
    assert (paused.exit_code, paused.stdout) == (0, "winback-at-risk: pause done\n")
    resumed = CliRunner().invoke(app, ["resume", "winback-at-risk"])
    assert (resumed.exit_code, resumed.stdout) == (0, "winback-at-risk: resume done\n")


def _now() -> object:
    from datetime import UTC, datetime

    return datetime(2026, 3, 2, tzinfo=UTC)
