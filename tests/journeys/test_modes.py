"""Which mode each send step uses (shared, per-recipient, fixed-link landing), as validate
says it, and the ``landing`` key's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.journeys.cli import register
from orchestrator.journeys.loader import check_paths
from tests.journeys.conftest import Workspace
from tests.journeys.test_validation import VALID

SHARED_ARTICLE = ("step 'article' (wechat_article): shared mass send: one article for every "
                  "recipient (a lone recipient gets it by template message)")
SHARED_INVITE = ("step 'invite' (wecom_group_invite): shared task: one WeCom task per staff "
                 "member, the same text for every customer")
SMS = "step 'sms' (sms): per-recipient: one SMS each"


def modes(ws: Workspace) -> list[str]:
    report = check_paths([ws.journeys], ws.templates)
    assert report.errors == [], report.errors
    prefix = "journeys/j.yaml: "
    assert all(line.startswith(prefix) for line in report.modes)
    return [line.removeprefix(prefix) for line in report.modes]


def test_content_without_user_data_is_shared(ws: Workspace) -> None:
    ws.journey(VALID)
    assert modes(ws) == [SHARED_ARTICLE, SHARED_INVITE, SMS]


def test_user_data_or_a_per_touch_link_makes_a_step_per_recipient(ws: Workspace) -> None:
    ws.template("article.j2", '{% set title = "你好" %}<p>{{ user.nickname }}</p>\n'
                              '<a href="{{ link }}">看看</a>\n')
    ws.template("footer.j2", "券码 {{ coupon_code }}")
    ws.template("invite.j2", "加入优惠群 {% include 'footer.j2' %}\n")
    link = '    link: "https://m.example.com/a?u={{ user_id }}"\n'
    ws.journey(
        VALID.replace("    cover: cover.jpg\n", "    cover: cover.jpg\n" + link)
        + "pools:\n  coupon_code: { csv: pools/codes.csv }\n"
    )
    ws.write("journeys/pools/codes.csv", "code\nC1\n")
    assert modes(ws) == [
        "step 'article' (wechat_article): per-recipient: each recipient's own article by "
        "template message (its content uses link, user); recipients whose article comes out "
        "identical share a mass send",
        "step 'invite' (wecom_group_invite): per-recipient: one WeCom task per customer, each "
        "confirmed by its staff member (its content uses coupon_code); customers whose text "
        "comes out identical share a task",
        SMS,
    ]


def test_a_fixed_landing_link_keeps_a_step_shared_and_counts_its_clicks(ws: Workspace) -> None:
    ws.template("article.j2", '{% set title = "你好" %}<a href="{{ link }}">看看</a>\n')
    ws.journey(
        VALID.replace("    cover: cover.jpg\n",
                      "    cover: cover.jpg\n    landing: https://m.example.com/welcome\n")
        .replace("not joined('invite')", "not clicked('article')")
    )
    assert modes(ws)[0] == (
        "step 'article' (wechat_article): fixed-link landing: one article for every recipient, "
        "linking to https://m.example.com/welcome; the landing page identifies the reader"
    )
    assert ws.problems() == []  # no "clicked() is always false" warning: the landing reports


@pytest.mark.parametrize(
    ("step_keys", "error"),
    [
        ('    link: "https://m.example.com/?u={{ user_id }}"\n'
         "    landing: https://m.example.com/w\n",
         "journeys/j.yaml:13:14: step 'article' has both link (a tracked link per recipient) and "
         "landing (one fixed link for everyone): keep one"),
        ('    landing: "https://m.example.com/?u={{ user_id }}"\n',
         "journeys/j.yaml:12:14: landing 'https://m.example.com/?u={{ user_id }}' is the same "
         "for every recipient and takes no template data; a per-user URL is a link:"),
        ("    landing: m.example.com/w\n",
         "journeys/j.yaml:12:14: landing 'm.example.com/w' must be an http(s) URL"),
    ],
)
def test_landing_is_one_fixed_url(ws: Workspace, step_keys: str, error: str) -> None:
    ws.journey(VALID.replace("    cover: cover.jpg\n", "    cover: cover.jpg\n" + step_keys))
    assert [p for p in ws.problems() if "landing" in p] == [error]


def test_validate_prints_the_mode_of_every_send_step(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.template("invite.j2", "{{ user.nickname }}，加入优惠群 👇\n")
    ws.journey(VALID)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["validate", "journeys", "--templates", "templates"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # per-user data in an invite is no longer a warning: it is sent
    assert result.stdout.splitlines() == [
        f"{Path('journeys/j.yaml')}: {SHARED_ARTICLE}",
        f"{Path('journeys/j.yaml')}: step 'invite' (wecom_group_invite): per-recipient: one "
        "WeCom task per customer, each confirmed by its staff member (its content uses user); "
        "customers whose text comes out identical share a task",
        f"{Path('journeys/j.yaml')}: {SMS}",
        "1 journey, 1 policy, 3 templates: valid",
    ]
