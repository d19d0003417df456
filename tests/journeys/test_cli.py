"""``recall validate``, ``recall schema`` and ``recall preview`` as a user runs them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml
from sqlalchemy import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from orchestrator.channels.smstext import compose_sms, count_segments
from orchestrator.config import get_settings
from orchestrator.journeys.assign import variant_for
from orchestrator.journeys.cli import register
from orchestrator.journeys.loader import find_journey, load_all
from orchestrator.journeys.preview import PREVIEW_CODE
from orchestrator.store.clock import StoredClock
from orchestrator.store.db import dispose_engines
from orchestrator.store.models import User, UserFeatures
from orchestrator.tracking.links import short_url
from tests.audience.helpers import add_events, ev

REPO = Path(__file__).resolve().parents[2]
USERS_CSV = (
    "user_id,openid,unionid,external_userid,wecom_sender,phone,timezone,sms_opt_out,"
    "wechat_followed,nickname,campus\n"
    "u001,o-1,un-1,wm-1,staff-1,+8613800000001,,false,true,小林,north\n"
    "u002,o-2,,,,+8613800000002,Asia/Shanghai,true,false,,south\n"
)
SMS_TEXT = {
    "a": "好久不见！8元无门槛券已到账，3天内有效，点 {link} 领取",
    "b": "小林，你常点的店都在等你，今日下单立减8元，点 {link} 回来看看",
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(REPO)
    for name in ("RECALL_JOURNEYS_DIR", "RECALL_TEMPLATES_DIR"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


SHARED_ARTICLE = ("shared mass send: one article for every recipient (a lone recipient gets "
                  "it by template message)")
SHARED_INVITE = "shared task: one WeCom task per staff member, the same text for every customer"
SAMPLE_MODES = [
    ("payment-rescue", "sms", "sms", "per-recipient: one SMS each"),
    ("payment-rescue", "article", "wechat_article", SHARED_ARTICLE),
    ("tier-active-feature", "article", "wechat_article", SHARED_ARTICLE),
    ("tier-churned-care", "article", "wechat_article", SHARED_ARTICLE),
    ("tier-churned-care", "sms", "sms", "per-recipient: one SMS each"),
    ("tier-low-frequency-coupon", "invite", "wecom_group_invite", SHARED_INVITE),
    ("tier-low-frequency-coupon", "sms", "sms", "per-recipient: one SMS each"),
    ("winback-at-risk", "article", "wechat_article", SHARED_ARTICLE),
    ("winback-at-risk", "invite", "wecom_group_invite", SHARED_INVITE),
    ("winback-at-risk", "sms", "sms", "per-recipient: one SMS each"),
]


def test_validate_sample_journeys(app: typer.Typer, in_repo: None) -> None:
    result = CliRunner().invoke(app, ["validate", "journeys/"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        *(f"journeys/{j}.yaml: step {s!r} ({c}): {how}" for j, s, c, how in SAMPLE_MODES),
        "5 journeys, 1 policy, 11 templates: valid",
    ]
    assert result.stderr == ""


def test_validate_defaults_to_the_configured_folders(app: typer.Typer, in_repo: None) -> None:
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(": valid\n")


def test_recall_command_has_validate(in_repo: None) -> None:
    from orchestrator.cli import app as recall

    result = CliRunner().invoke(recall, ["validate", "journeys/"])
    assert result.exit_code == 0
    assert result.stdout.endswith("\n5 journeys, 1 policy, 11 templates: valid\n")


def test_validate_reports_problems_on_stderr_and_exits_1(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    journeys = tmp_path / "journeys"
    journeys.mkdir()
    (journeys / "policy.yaml").write_text((REPO / "journeys/policy.yaml").read_text("utf-8"))
    (journeys / "j.yaml").write_text(
        "id: j\nname: x\nentry: { event: payment_failed }\nholdout: 70%\nsteps:\n"
        "  - id: s\n    send: smss\n    template: none.j2\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["validate", "journeys", "--templates", "templates"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "journeys/j.yaml:4:10: holdout 70% is outside 0–50%",
        "journeys/j.yaml:7:11: unknown channel 'smss' (did you mean 'sms'?); channels: "
        "wechat_article, wecom_group_invite, sms",
        "1 journey (1 invalid), 1 policy, 0 templates: invalid, 2 errors",
    ]


def test_validate_counts_every_file_checked_valid_or_not(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "journeys", "journeys")
    broken = Path("journeys/winback-at-risk.yaml")
    # The journey's own holdout (at the line start), not its steps' rung holdouts.
    broken.write_text(broken.read_text("utf-8").replace("\nholdout: 10%", "\nholdout: 70%"),
                      encoding="utf-8")
    policy = Path("journeys/policy.yaml")
    policy.write_text(policy.read_text("utf-8") + "bogus: 1\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", "journeys", "--templates",
                                      str(REPO / "templates")])
    assert result.exit_code == 1
    *problems, summary = result.stderr.splitlines()
    assert [p.split(":")[0] for p in problems] == [str(policy), str(broken)]
    # Every journey and policy file checked is counted; templates: those valid journeys use.
    assert summary == ("5 journeys (1 invalid), 1 policy (1 invalid), 7 templates: invalid, "
                       "2 errors")


def test_schema_files_validate_the_samples(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    journey_schema = json.loads((tmp_path / "journey.schema.json").read_text("utf-8"))
    policy_schema = json.loads((tmp_path / "policy.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(journey_schema)
    for path in sorted((REPO / "journeys").glob("*.yaml")):
        data = yaml.safe_load(path.read_text("utf-8"))
        schema = policy_schema if path.name == "policy.yaml" else journey_schema
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)


def test_committed_schemas_are_up_to_date(tmp_path: Path) -> None:
    from orchestrator.journeys.schema import write_schemas

    for path in write_schemas(tmp_path):
        committed = REPO / "journeys/schemas" / path.name
        assert committed.read_text("utf-8") == path.read_text("utf-8"), (
            f"{committed} is stale: run recall schema"
        )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"steps": [{"id": "s", "send": "smss", "template": "t.j2"}]}, "'smss' is not one of"),
        ({"reentry": "30 days"}, "'30 days' does not match"),
        ({"nmae": "x"}, "Additional properties are not allowed"),
    ],
)
def test_schema_rejects_mistakes(
    app: typer.Typer, tmp_path: Path, change: dict[str, object], error: str
) -> None:
    CliRunner().invoke(app, ["schema", "--out", str(tmp_path)])
    schema = json.loads((tmp_path / "journey.schema.json").read_text("utf-8"))
    data = yaml.safe_load((REPO / "journeys/winback-at-risk.yaml").read_text("utf-8"))
    with pytest.raises(jsonschema.ValidationError, match=error):
        jsonschema.validate({**data, **change}, schema, cls=jsonschema.Draft202012Validator)


def _expected_sms(user_id: str) -> tuple[str, str, int]:
    journeys, policy = load_all(REPO / "journeys", REPO / "templates")
    journey = next(j for j in journeys if j.id == "winback-at-risk")
    variant = variant_for(journey.id, journey.send_step("sms"), user_id)
    assert variant is not None
    short = short_url(get_settings().public_base_url, PREVIEW_CODE)  # a code of its length
    text = SMS_TEXT[variant].format(link=short)
    sms = compose_sms(
        text, signature=policy.sms.signature, opt_out_suffix=policy.sms.opt_out_suffix
    )
    return variant, sms, count_segments(sms)


def test_preview_winback_for_a_user_from_csv(
    app: typer.Typer, in_repo: None, tmp_path: Path
) -> None:
    users = tmp_path / "users.csv"
    users.write_text(USERS_CSV, encoding="utf-8")
    result = CliRunner().invoke(
        app, ["preview", "winback-at-risk", "--user", "u001", "--users", str(users)]
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("step ") == 3
    assert "step article · wechat_article" in out
    assert "title:    好久不见，这周的校园美食都在这里" in out
    assert "step invite · wecom_group_invite" in out
    assert "我们建了「校园优惠群」" in out
    variant, sms, segments = _expected_sms("u001")
    assert "step sms · sms" in out
    assert f"variant:  {variant}" in out
    assert f"sms:      {sms}\n" in out
    assert sms.startswith("【校园外卖】") and sms.endswith("拒收请回复R")
    assert f"segments: {segments} · cost {segments * 0.045:.3f}" in out
    short = short_url(get_settings().public_base_url, PREVIEW_CODE)
    assert f"link:     {short} -> https://m.example.com/coupon?u=u001 (a new code for each " \
        "touch)" in out


def test_preview_reports_an_unknown_user(app: typer.Typer, in_repo: None, tmp_path: Path) -> None:
    users = tmp_path / "users.csv"
    users.write_text(USERS_CSV, encoding="utf-8")
    result = CliRunner().invoke(
        app, ["preview", "winback-at-risk", "--user", "nobody", "--users", str(users)]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: user 'nobody' is not in {users}\n"


def test_preview_reports_an_unknown_journey(app: typer.Typer, in_repo: None) -> None:
    result = CliRunner().invoke(app, ["preview", "winback", "--user", "u1", "--users", "x.csv"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no journey 'winback' in journeys (did you mean ")


@pytest.fixture
def store_url(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'recall.db'}"
    monkeypatch.setenv("RECALL_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    dispose_engines()
    get_settings.cache_clear()


def test_preview_reads_the_user_from_the_store(
    app: typer.Typer, in_repo: None, store_url: str, sqlite_engine: Engine
) -> None:
    with Session(sqlite_engine) as session:
        session.add(User(user_id="u9", phone="+8613800000009", attributes={"nickname": "阿九"}))
        session.add(
            UserFeatures(
                user_id="u9",
                computed_at=datetime(2025, 1, 1, tzinfo=UTC),
                tier="at_risk",
                churn_score=0.8,
            )
        )
        session.commit()
    result = CliRunner().invoke(app, ["preview", "winback-at-risk", "--user", "u9"])
    assert result.exit_code == 0, result.output
    variant, sms, _ = _expected_sms("u9")
    assert sms.replace("小林", "阿九") in result.stdout


def test_preview_without_users_file_or_store_says_what_to_do(
    app: typer.Typer, in_repo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECALL_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["preview", "winback-at-risk", "--user", "u1"])
    finally:
        dispose_engines()
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot read user 'u1' from the database")
    assert result.stderr.rstrip().endswith("pass --users users.csv")


TIMED = """\
id: timed
name: 按活跃时段发送
entry: { segment: "true" }
steps:
  - wait: 1d
    window: "09:00-20:00"
  - id: sms
    send: sms
    template: sms.j2
    at: best_hour
"""


def test_preview_shows_the_best_hour(
    app: typer.Typer, store_url: str, sqlite_engine: Engine, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journeys, templates = tmp_path / "journeys", tmp_path / "templates"
    journeys.mkdir()
    templates.mkdir()
    policy = yaml.safe_load((REPO / "journeys" / "policy.yaml").read_text(encoding="utf-8"))
    (journeys / "policy.yaml").write_text(yaml.safe_dump(policy, allow_unicode=True))
    (journeys / "timed.yaml").write_text(TIMED, encoding="utf-8")
    (templates / "sms.j2").write_text("好久不见", encoding="utf-8")
    monkeypatch.setenv("RECALL_JOURNEYS_DIR", str(journeys))
    monkeypatch.setenv("RECALL_TEMPLATES_DIR", str(templates))
    get_settings.cache_clear()
    now = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
    StoredClock(sqlite_engine).set(now)
    with Session(sqlite_engine) as session:
        session.add(User(user_id="u9", phone="+8613800000009"))
        session.commit()
    # Evenings at 20:xx (outside the step's window) and a weaker 18:xx habit.
    add_events(sqlite_engine, [
        *(ev("u9", "login", now - timedelta(days=d, hours=-11.5)) for d in range(1, 9)),
        *(ev("u9", "login", now - timedelta(days=d, hours=-9.5)) for d in range(1, 4)),
    ])
    result = CliRunner().invoke(app, ["preview", "timed", "--user", "u9"])
    assert result.exit_code == 0, result.output
    assert ("send at:  best hour: 2026-03-02 18:00 CST if due now (2026-03-02 09:00 CST); "
            "profile: own") in result.stdout

    # An A/B of the send time: the time shows only when the user's variant has at: best_hour.
    for timed_variant in ("a", "b"):
        at = {name: ", at: best_hour" if name == timed_variant else "" for name in "ab"}
        ab = TIMED.replace("    template: sms.j2\n    at: best_hour\n", (
            "    variants:\n"
            f"      a: {{ weight: 50, template: sms.j2{at['a']} }}\n"
            f"      b: {{ weight: 50, template: sms.j2{at['b']} }}\n"))
        (journeys / "timed.yaml").write_text(ab, encoding="utf-8")
        result = CliRunner().invoke(app, ["preview", "timed", "--user", "u9"])
        assert result.exit_code == 0, result.output
        step = find_journey(journeys, "timed", templates)[0].send_steps()[0]
        mine = variant_for("timed", step, "u9")
        assert ("send at:  best hour: 2026-03-02 18:00 CST" in result.stdout) == (
            mine == timed_variant)
