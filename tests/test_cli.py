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


# --- recall send-test -----------------------------------------------------------------------

USERS_CSV = """\
user_id,openid,unionid,external_userid,wecom_sender,phone,timezone,sms_opt_out,wechat_followed
u1,ou1aaaaaaaa,,wmu1aaaaaaaa,staff1,+8613800000001,,false,true
u2,ou2aaaaaaaa,,wmu2aaaaaaaa,staff1,+8613800000002,,true,true
"""


@pytest.fixture
def live_env(env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, object]]:
    """``env`` with Redis, the sandbox as every provider and two imported users (u2 has
    opted out of SMS)."""
    import redis

    from orchestrator.sandbox.server import run_in_thread
    from tests.support import redis_db_url

    url = redis_db_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    with run_in_thread() as sandbox:
        sandbox.state.configure({"wecom_auto_confirm": True})
        monkeypatch.setenv("RECALL_REDIS_URL", url)
        for name in ("WECHAT", "WECOM", "TWILIO"):
            monkeypatch.setenv(f"RECALL_{name}_API_BASE", sandbox.base_url)
        get_settings.cache_clear()
        users = env / "users.csv"
        users.write_text(USERS_CSV, encoding="utf-8")
        imported = CliRunner().invoke(app, ["import", "users", str(users)])
        assert imported.exit_code == 0, imported.output
        yield env, sandbox
    client.flushdb()
    client.close()


def test_send_test_lists_each_step_channel_recipient_and_outcome(
    live_env: tuple[Path, object]
) -> None:
    _, sandbox = live_env
    result = CliRunner().invoke(app, ["send-test", "winback-at-risk", "--to", "u1,u2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:8] == [
        f"send-test winback-at-risk (version {_version('winback-at-risk')})",
        "step     channel             recipient  to              outcome",
        "article  wechat_article      u1         ou1a***         sent",
        "article  wechat_article      u2         ou2a***         sent",
        "invite   wecom_group_invite  u1         wmu1***         sent",
        "invite   wecom_group_invite  u2         wmu2***         sent",
        "sms      sms                 u1         +86*******0001  sent",
        "sms      sms                 u2         +86*******0002  suppressed: opted_out:sms",
    ]
    assert result.stdout.splitlines()[-1] == (
        "5 sent, 1 suppressed; test sends are never counted; written to the audit log")
    texts = [r["body"]["To"] for r in sandbox.state.records("twilio")  # type: ignore[attr-defined]
             if r["method"] == "POST" and r["outcome"] == "accepted"]
    assert texts == ["+8613800000001"]


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "--to", "u1"], "error: no journey 'nope' in "),
    (["winback-at-risk", "--to", "u1,ghost"],
     "error: --to names 1 user not imported: 'ghost'; a test send goes to imported users "
     "(`recall import users FILE`)"),
    (["winback-at-risk", "--to", " , "], "error: --to names nobody: give user ids separated "
     "by commas (--to u1,u2) or @FILE with one user id a line"),
])
def test_send_test_refuses_bad_input_and_sends_nothing(
    live_env: tuple[Path, object], args: list[str], message: str
) -> None:
    _, sandbox = live_env
    result = CliRunner().invoke(app, ["send-test", *args])
    assert result.exit_code == 1
    assert result.stderr.startswith(message), result.stderr
    assert sandbox.state.records() == []  # type: ignore[attr-defined]


def _version(journey_id: str) -> str:
    from orchestrator.engine.book import JourneyBook

    settings = get_settings()
    return JourneyBook(settings.journeys_dir, settings.templates_dir, settings.state_dir,
                       settings.timezone).latest(journey_id).version


def test_send_test_of_a_journey_without_send_steps(env: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    journeys = env / "journeys"
    journeys.mkdir()
    (journeys / "policy.yaml").write_text((REPO / "journeys" / "policy.yaml").read_text())
    (journeys / "idle.yaml").write_text(
        'id: idle\nname: idle\nentry:\n  segment: "True"\nsteps:\n  - wait: 1d\n')
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(journeys))
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["send-test", "idle", "--to", "u1"])
    assert (result.exit_code, result.stderr) == (
        1, "error: journey 'idle' has no send step: nothing to test\n")
