"""Every validation problem, asserted as the exact ``FILE:LINE:COL: message`` a user sees."""

from __future__ import annotations

import pytest

from tests.journeys.conftest import Workspace
from tests.support import jpeg

VALID = """\
id: j
name: 测试
entry: { segment: "tier == 'at_risk'", schedule: "0 10 * * *" }
reentry: 30d
holdout: 10%
goal: { event: order_placed, within: 7d }
steps:
  - id: article
    send: wechat_article
    template: article.j2
    cover: cover.jpg
  - wait: 1d
  - id: invite
    send: wecom_group_invite
    template: invite.j2
    group: campus-deals
  - wait: 2d
    window: "10:00-20:00"
  - if: "not joined('invite')"
    then: sms
    else: exit
  - id: sms
    send: sms
    template: sms.j2
    link: "https://m.example.com/c?u={{ user_id }}"
"""

# (case id, journey file text, expected problems in order)
CASES: list[tuple[str, str, list[str]]] = [
    (
        "yaml syntax",
        """\
        id: j
        name: a: b
        """,
        ["journeys/j.yaml:2:8: YAML syntax error: mapping values are not allowed here"],
    ),
    (
        "top level is not a mapping",
        """\
        - id: j
        """,
        ["journeys/j.yaml:1:1: expected a mapping of keys at the top of the file"],
    ),
    (
        "duplicate YAML key",
        VALID.replace("holdout: 10%", "holdout: 10%\nholdout: 5%"),
        ["journeys/j.yaml:6:1: duplicate key 'holdout' (first at line 5)"],
    ),
    (
        "unknown key and missing key",
        VALID.replace("name: 测试", "nmae: 测试"),
        [
            "journeys/j.yaml:1:1: missing required key 'name'",
            "journeys/j.yaml:2:1: unknown key 'nmae' (did you mean 'name'?)",
        ],
    ),
    (
        "unknown key in a step",
        VALID.replace("    template: article.j2", "    tempalte: article.j2"),
        ["journeys/j.yaml:10:5: unknown key 'tempalte' (did you mean 'template'?)"],
    ),
    (
        "two step keywords in one step",
        VALID.replace("    group: campus-deals", "    group: campus-deals\n    wait: 1d"),
        [
            "journeys/j.yaml:17:5: 'wait' cannot be in a send step: a step does one thing "
            "(send, wait, if or exit); split it in two"
        ],
    ),
    (
        "a step without a keyword",
        VALID.replace("  - wait: 1d\n", "  - pause: 1d\n"),
        ["journeys/j.yaml:12:5: a step needs one of send, wait, if or exit"],
    ),
    (
        "unknown channel",
        VALID.replace("send: wechat_article", "send: wechat_articel"),
        [
            "journeys/j.yaml:9:11: unknown channel 'wechat_articel' (did you mean "
            "'wechat_article'?); channels: wechat_article, wecom_group_invite, sms"
        ],
    ),
    (
        "bad durations",
        VALID.replace("- wait: 1d", "- wait: 1x").replace("within: 7d", "within: 7 days"),
        [
            "journeys/j.yaml:6:38: bad duration '7 days': write a number and a unit "
            "(s, m, h, d, w), e.g. 30s, 90m, 24h, 1d, 2w or 1d12h",
            "journeys/j.yaml:12:11: bad duration '1x': write a number and a unit "
            "(s, m, h, d, w), e.g. 30s, 90m, 24h, 1d, 2w or 1d12h",
        ],
    ),
    (
        "bad window",
        VALID.replace('window: "10:00-20:00"', 'window: "10-20"'),
        [
            "journeys/j.yaml:18:13: bad window '10-20': write local times as HH:MM-HH:MM, "
            "e.g. 10:00-20:00 (it may cross midnight, e.g. 22:00-06:00)"
        ],
    ),
    (
        "bad send time",
        VALID.replace('    link: "https://m', '    at: noon\n    link: "https://m'),
        [
            "journeys/j.yaml:25:9: bad at 'noon': write at: best_hour (the user's most active "
            "local hour), or leave it out to send when due"
        ],
    ),
    (
        "variant weights",
        VALID.replace(
            "    template: sms.j2\n",
            "    variants:\n"
            "      a: { weight: 50, template: sms.j2 }\n"
            "      b: { weight: 40, template: sms.j2 }\n",
        ),
        ["journeys/j.yaml:25:7: variant weights sum to 90, not 100"],
    ),
    (
        "bad send time on a variant",
        VALID.replace(
            "    template: sms.j2\n",
            "    variants:\n"
            "      a: { weight: 50, template: sms.j2 }\n"
            "      b: { weight: 50, template: sms.j2, at: later }\n",
        ),
        [
            "journeys/j.yaml:26:46: bad at 'later': write at: best_hour (the user's most "
            "active local hour), or leave it out to send when due"
        ],
    ),
    (
        "send time on the step and on a variant",
        VALID.replace(
            "    template: sms.j2\n",
            "    at: best_hour\n"
            "    variants:\n"
            "      a: { weight: 50, template: sms.j2 }\n"
            "      b: { weight: 50, template: sms.j2, at: best_hour }\n",
        ),
        [
            "journeys/j.yaml:27:46: at is set on send step 'sms' and on its variant 'b': put "
            "it on the step (every variant) or on the variants (an A/B of the send time)"
        ],
    ),
    (
        "holdout above 50%",
        VALID.replace("holdout: 10%", "holdout: 60%"),
        ["journeys/j.yaml:5:10: holdout 60% is outside 0–50%"],
    ),
    (
        "holdout as a bare number",
        VALID.replace("holdout: 10%", "holdout: 10"),
        [
            "journeys/j.yaml:5:10: holdout 10 is outside 0–50% (a bare number is a fraction: "
            "write 10%?)"
        ],
    ),
    (
        "retention window not in whole days",
        VALID.replace("holdout: 10%", "holdout: 10%\nretention: [7d, 36h]"),
        ["journeys/j.yaml:6:17: retention window 1d12h is not a whole number of days: write "
         "e.g. [7d, 30d]"],
    ),
    (
        "retention windows out of order",
        VALID.replace("holdout: 10%", "holdout: 10%\nretention:\n  - 30d\n  - 7d"),
        ["journeys/j.yaml:8:5: retention window 7d is not longer than the one before it "
         "(30d): each window starts where the one before ends, e.g. [7d, 30d]"],
    ),
    (
        "rung holdout above 50%",
        VALID.replace("    link:", "    holdout: 60%\n    link:"),
        ["journeys/j.yaml:25:14: holdout 60% is outside 0–50%"],
    ),
    (
        "rung holdout that nothing measures",
        VALID.replace("goal: { event: order_placed, within: 7d }\n", "").replace(
            "reentry: 30d\n", "").replace("    link:", "    holdout: 5%\n    link:"),
        ["journeys/j.yaml:23:14: warning: step 'sms' holds 5% of its users out, but the "
         "journey has no goal: nothing measures what the step adds; add a goal or remove the "
         "holdout"],
    ),
    (
        "duplicate step ids",
        VALID.replace("  - id: invite", "  - id: article"),
        [
            "journeys/j.yaml:13:9: duplicate step id 'article' (first at line 8)",
            "journeys/j.yaml:19:9: joined('invite'): there is no send step 'invite'",
        ],
    ),
    (
        "branch to an unknown step",
        VALID.replace("then: sms", "then: smss"),
        [
            "journeys/j.yaml:20:11: branch target 'smss' is not a step id or exit "
            "(did you mean 'sms'?)"
        ],
    ),
    (
        "branch backwards",
        VALID.replace("then: sms", "then: invite"),
        [
            "journeys/j.yaml:20:11: branch target 'invite' is not after this branch: "
            "branches go forward only (no loops)"
        ],
    ),
    (
        "unreachable steps",
        VALID.replace("  - id: sms\n", "  - exit: true\n  - wait: 1h\n  - id: sms\n").replace(
            "then: sms", "then: exit"
        ),
        [
            "journeys/j.yaml:22:5: unreachable step #6 (exit): no path from the first step "
            "leads here",
            "journeys/j.yaml:23:5: unreachable step #7 (wait): no path from the first step "
            "leads here",
            "journeys/j.yaml:24:5: unreachable step 'sms': no path from the first step leads here",
        ],
    ),
    (
        "missing template file",
        VALID.replace("template: invite.j2", "template: invites.j2"),
        ["journeys/j.yaml:15:15: template 'invites.j2' not found in templates"],
    ),
    (
        "segment does not compile",
        VALID.replace("tier == 'at_risk'", "tier = 'at_risk'"),
        ["journeys/j.yaml:3:19: expression \"tier = 'at_risk'\" does not compile: unexpected '='"],
    ),
    (
        "segment names an unknown field",
        VALID.replace("tier == 'at_risk'", "teir == 'at_risk'"),
        ["journeys/j.yaml:3:19: segment uses unknown name 'teir' (did you mean 'tier'?)"],
    ),
    (
        "branch condition does not compile",
        VALID.replace("\"not joined('invite')\"", "\"not joined('invite'\""),
        [
            "journeys/j.yaml:19:9: expression \"not joined('invite'\" does not compile: "
            "unexpected end of expression, expected ','."
        ],
    ),
    (
        "branch condition names an unknown function",
        VALID.replace("not joined('invite')", "not joind('invite')"),
        ["journeys/j.yaml:19:9: if uses unknown name 'joind' (did you mean 'joined'?)"],
    ),
    (
        "joined() on a step that is not an invite",
        VALID.replace("not joined('invite')", "not joined('article')"),
        [
            "journeys/j.yaml:19:9: joined('article'): joined() is for wecom_group_invite "
            "steps; 'article' sends wechat_article"
        ],
    ),
    (
        "branch looks at a later step",
        VALID.replace("not joined('invite')", "not sent('sms')"),
        ["journeys/j.yaml:19:9: sent('sms'): step 'sms' comes after this branch"],
    ),
    (
        "event() with a bad duration",
        VALID.replace("not joined('invite')", "not event('order_placed', '7days')"),
        [
            "journeys/j.yaml:19:9: event('order_placed', …): bad duration '7days': write a "
            "number and a unit (s, m, h, d, w), e.g. 30s, 90m, 24h, 1d, 2w or 1d12h"
        ],
    ),
    (
        "clicked() on a mass-sent article without a link (warning)",
        VALID.replace("not joined('invite')", "not clicked('article')"),
        [
            "journeys/j.yaml:19:9: warning: clicked('article'): a mass-sent article reports "
            "no per-user clicks; give step 'article' a link (tracked per recipient, sent by "
            "template message) or a landing (a fixed-link landing page that identifies the "
            "reader), else this is always false"
        ],
    ),
    (
        "reentry shorter than the goal window",
        VALID.replace("reentry: 30d", "reentry: 3d"),
        [
            "journeys/j.yaml:4:10: reentry 3d is shorter than goal.within 7d: a user could "
            "enter again while the last entry is still measured"
        ],
    ),
    (
        "bad cron schedule",
        VALID.replace('"0 10 * * *"', '"0 25 * * *"'),
        [
            "journeys/j.yaml:3:50: bad cron schedule '0 25 * * *': five fields "
            "(minute hour day month weekday), e.g. '0 10 * * *'"
        ],
    ),
    (
        "entry without event or segment",
        VALID.replace(
            'entry: { segment: "tier == \'at_risk\'", schedule: "0 10 * * *" }',
            'entry: { schedule: "0 10 * * *" }',
        ),
        ["journeys/j.yaml:3:8: entry needs an event, a segment, or both"],
    ),
    (
        "invite without a group",
        VALID.replace("    group: campus-deals\n", ""),
        ["journeys/j.yaml:13:5: wecom_group_invite step 'invite' needs a group to invite to"],
    ),
    (
        "journey policy loosens a cap",
        VALID.replace("priority", "priority").replace(
            "goal:", "policy:\n  caps:\n    sms: { max: 3, per: 7d }\ngoal:"
        ),
        [
            "journeys/j.yaml:8:10: journey cap sms 3 per 7d is looser than the policy's "
            "2 per 7d: a journey may only tighten the policy"
        ],
    ),
    (
        "three SMS within 7 days under an sms cap of 2 per 7d",
        VALID.replace("template: article.j2", "template: sms.j2\n    link: https://m.example.com/a")
        .replace("send: wechat_article", "send: sms")
        .replace("    cover: cover.jpg\n", "")
        .replace("send: wecom_group_invite", "send: sms")
        .replace("template: invite.j2", "template: sms.j2\n    link: https://m.example.com/b")
        .replace("    group: campus-deals\n", "")
        .replace("not joined('invite')", "not clicked('invite')"),
        [
            "journeys/j.yaml:23:11: cap that the journey can never meet: steps 'article', "
            "'invite' and 'sms' send 3 sms at most 4d12h apart, but the policy caps sms at "
            "2 per 7d"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem_is_reported_at_its_position(ws: Workspace, text: str, expected: list[str]) -> None:
    ws.journey(text)
    assert ws.problems() == expected


def test_the_valid_journey_has_no_problem(ws: Workspace) -> None:
    ws.journey(VALID)
    assert ws.problems() == []


def test_all_problems_of_all_files_are_reported_together(ws: Workspace) -> None:
    ws.journey(VALID.replace("holdout: 10%", "holdout: 60%"), "a.yaml")
    ws.journey(VALID.replace("id: j", "id: k").replace("- wait: 1d", "- wait: 1x"), "b.yaml")
    problems = ws.problems()
    assert [p.split(": ", 1)[0] for p in problems] == [
        "journeys/a.yaml:5:10",
        "journeys/b.yaml:12:11",
    ]


def test_duplicate_journey_ids_across_files(ws: Workspace) -> None:
    ws.journey(VALID, "a.yaml")
    ws.journey(VALID, "b.yaml")
    assert ws.problems() == [
        "journeys/b.yaml:1:5: duplicate journey id 'j': journeys/a.yaml has it too"
    ]


def test_global_cap_counts_every_channel(ws: Workspace) -> None:
    ws.journey(
        VALID.replace(
            "  - wait: 1d\n",
            "  - wait: 1d\n  - id: article2\n    send: wechat_article\n    template: article.j2\n"
            "    cover: cover.jpg\n",
        )
    )
    assert ws.problems() == [
        "journeys/j.yaml:27:11: cap that the journey can never meet: steps 'article', "
        "'article2', 'invite' and 'sms' send 4 touches at most 4d1h apart, but the policy "
        "caps global at 3 per 7d"
    ]


def test_calendar_cap_that_may_be_met_is_a_warning(ws: Workspace) -> None:
    steps = "".join(
        f"  - id: i{n}\n    send: wecom_group_invite\n    template: invite.j2\n    group: g\n"
        for n in (1, 2)
    )
    ws.write("journeys/two.yaml", f"id: two\nname: 两次\nentry: {{ event: x }}\nsteps:\n{steps}")
    assert ws.problems() == [
        "journeys/two.yaml:10:11: warning: steps 'i1' and 'i2' send 2 wecom_group_invite at "
        "most 0s apart: the policy caps wecom_group_invite at 1 per day, so the last is capped "
        "unless they fall in different calendar days"
    ]


def test_calendar_cap_that_cannot_be_met(ws: Workspace) -> None:
    steps = "".join(
        f"  - id: i{n}\n    send: wecom_group_invite\n    template: invite.j2\n    group: g\n"
        "  - wait: 1h\n"
        for n in (1, 2, 3)
    )
    ws.write(
        "journeys/three.yaml", f"id: three\nname: 三次\nentry: {{ event: x }}\nsteps:\n{steps}"
    )
    assert ws.problems() == [
        "journeys/three.yaml:16:11: cap that the journey can never meet: steps 'i1', 'i2' and "
        "'i3' send 3 wecom_group_invite at most 2h apart, but the policy caps "
        "wecom_group_invite at 1 per day"
    ]


# ---------------------------------------------------------------- templates


def test_template_syntax_error(ws: Workspace) -> None:
    ws.template("sms.j2", "好久不见 {% if %} {{ link }}\n")
    ws.journey(VALID)
    assert ws.problems() == [
        "templates/sms.j2:1:1: template syntax error: Expected an expression, got 'end of "
        "statement block'"
    ]


def test_template_variables_that_are_not_provided(ws: Workspace) -> None:
    ws.template("sms.j2", "你的券 {{ coupn_code }}\n{{ event.props.amount }} {{ link }}\n")
    ws.write("journeys/pools/c.csv", "code\nA1\n")
    ws.journey(VALID + "pools:\n  coupon_code: { csv: pools/c.csv }\n")
    assert ws.problems() == [
        "templates/sms.j2:1:8: undefined variable 'coupn_code' for step 'sms' of journey 'j' "
        "(did you mean 'coupon_code'?)",
        "templates/sms.j2:2:4: undefined variable 'event' for step 'sms' of journey 'j': the "
        "journey is entered by a segment, not an event",
    ]


def test_link_variable_without_a_step_link(ws: Workspace) -> None:
    ws.journey(VALID.replace('    link: "https://m.example.com/c?u={{ user_id }}"\n', ""))
    assert ws.problems() == [
        "templates/sms.j2:1:18: undefined variable 'link' for step 'sms' of journey 'j': the "
        "step has no link"
    ]


def test_link_that_uses_an_unknown_variable(ws: Workspace) -> None:
    ws.journey(VALID.replace("u={{ user_id }}", "u={{ usr_id }}"))
    assert ws.problems() == [
        "journeys/j.yaml:25:11: link uses undefined variable 'usr_id' (did you mean 'user_id'?)"
    ]


def test_sms_link_that_the_template_never_shows_is_a_warning(ws: Workspace) -> None:
    ws.journey(VALID.replace("template: sms.j2", "template: plain.j2"))
    assert ws.problems() == [
        "journeys/j.yaml:25:11: warning: step 'sms' has a link that its template never "
        "shows: add {{ link }}"
    ]


def test_article_template_needs_a_title(ws: Workspace) -> None:
    ws.template("article.j2", "<p>正文</p>\n")
    ws.journey(VALID)
    assert ws.problems() == [
        "templates/article.j2:1:1: a wechat_article template must set its title: "
        '{% set title = "…" %}'
    ]


def test_included_templates_are_checked_too(ws: Workspace) -> None:
    ws.template("footer.j2", "回复TD退订 {{ unknown_name }}\n")
    ws.template("plain.j2", "好久不见 {{ link }}{% include 'footer.j2' %}\n")
    ws.journey(VALID.replace("template: sms.j2", "template: plain.j2"))
    assert ws.problems() == [
        "templates/footer.j2:1:11: undefined variable 'unknown_name' for step 'sms' of "
        "journey 'j'; a user attribute is user.NAME"
    ]


# ---------------------------------------------------------------- pools and policy


def test_pool_file_missing_and_pool_without_code_column(ws: Workspace) -> None:
    ws.write("journeys/pools/bad.csv", "coupon\nA1\n")
    ws.journey(
        VALID + "pools:\n  coupon_code: { csv: pools/none.csv }\n  other: { csv: pools/bad.csv }\n"
    )
    assert ws.problems() == [
        "journeys/j.yaml:27:23: pool file journeys/pools/none.csv not found",
        "journeys/j.yaml:28:17: pool file journeys/pools/bad.csv has no 'code' column in its "
        "header",
    ]


def test_policy_caps_above_the_platform_limits(ws: Workspace) -> None:
    from tests.journeys.conftest import POLICY

    ws.write(
        "journeys/policy.yaml",
        POLICY.replace("{ max: 4, per: month }", "{ max: 5, per: month }"),
    )
    assert ws.problems() == [
        "journeys/policy.yaml:5:23: wechat_article cap 5 per month allows more than the "
        "platform limit of 4 per month: it cannot be raised"
    ]


def test_policy_audience_section_is_checked_not_refused(ws: Workspace) -> None:
    from tests.journeys.conftest import POLICY

    ws.write(
        "journeys/policy.yaml",
        POLICY + "audience:\n  tiers: { at_risk_days: 5 }\n  rfm_window_days: 60\n",
    )
    assert ws.problems() == []
    ws.write(
        "journeys/policy.yaml", POLICY + "audience:\n  rfm_window_days: 0\n  tier: {}\n"
    )
    lines = len(POLICY.splitlines())
    assert ws.problems() == [
        f"journeys/policy.yaml:{lines + 2}:20: audience.rfm_window_days: input should be "
        "greater than or equal to 1, not 0",
        f"journeys/policy.yaml:{lines + 3}:3: unknown key 'tier' (did you mean 'tiers'?)",
    ]


def test_policy_golden_holiday_factor_is_checked_where_it_is_written(ws: Workspace) -> None:
    from tests.journeys.conftest import POLICY

    ws.write("journeys/policy.yaml",
             POLICY + "audience:\n  golden:\n    holiday_factor: 0.5\n")
    assert ws.problems() == []
    ws.write("journeys/policy.yaml",
             POLICY + "audience:\n  golden:\n    holiday_factor: 2\n")
    lines = len(POLICY.splitlines())
    assert ws.problems() == [
        f"journeys/policy.yaml:{lines + 3}:21: audience.golden.holiday_factor: input should "
        "be less than or equal to 1, not 2"]


def test_policy_wecom_cap_over_a_week_is_above_the_daily_platform_limit(ws: Workspace) -> None:
    from tests.journeys.conftest import POLICY

    ws.write(
        "journeys/policy.yaml", POLICY.replace("{ max: 1, per: day }", "{ max: 2, per: week }")
    )
    assert ws.problems() == [
        "journeys/policy.yaml:6:23: wecom_group_invite cap 2 per week allows more than the "
        "platform limit of 1 per day: it cannot be raised"
    ]


def test_policy_unknown_cap_and_bad_signature(ws: Workspace) -> None:
    from tests.journeys.conftest import POLICY

    ws.write(
        "journeys/policy.yaml",
        POLICY.replace("  sms:                { max: 2", "  smss:               { max: 2").replace(
            '"【校园外卖】"', '"校园外卖"'
        ),
    )
    assert ws.problems() == [
        "journeys/policy.yaml:4:3: unknown cap 'smss' (did you mean 'sms'?); caps: global, "
        "wechat_article, wecom_group_invite, sms",
        "journeys/policy.yaml:13:14: sms.signature '校园外卖' must be the registered signature "
        "in 【】, e.g. 【校园外卖】",
    ]


def test_missing_policy_file(ws: Workspace) -> None:
    (ws.root / "journeys/policy.yaml").unlink()
    ws.journey(VALID)
    assert ws.problems() == [
        "journeys/policy.yaml:1:1: no policy.yaml in journeys: journeys are checked against "
        "the policy"
    ]


def test_a_single_journey_file_is_checked_against_the_policy_beside_it(ws: Workspace) -> None:
    path = ws.journey(VALID.replace("holdout: 10%", "holdout: 60%"))
    assert ws.problems(path) == ["journeys/j.yaml:5:10: holdout 60% is outside 0–50%"]


def test_a_path_that_does_not_exist(ws: Workspace) -> None:
    from pathlib import Path

    assert ws.problems(Path("nowhere")) == ["nowhere:1:1: no such file or folder"]


# ---------------------------------------------------------------- article covers and cards


def test_article_without_cover_is_an_error_at_its_send_line(ws: Workspace) -> None:
    ws.journey(VALID.replace("    cover: cover.jpg\n", ""))
    assert ws.problems() == [
        "journeys/j.yaml:9:11: wechat_article step 'article' has no cover: add cover: PATH "
        "(a JPG of at most 64 KB, relative to the templates folder); WeChat refuses an article "
        "without one"
    ]


def test_cover_that_is_not_a_jpg_is_an_error_at_its_line(ws: Workspace) -> None:
    (ws.root / "templates" / "cover.png").write_bytes(jpeg(fmt="PNG"))
    (ws.root / "templates" / "notes.jpg").write_text("not a picture", encoding="utf-8")
    ws.journey(VALID.replace("cover: cover.jpg", "cover: cover.png"), "a.yaml")
    ws.journey(VALID.replace("cover: cover.jpg", "cover: notes.jpg").replace("id: j", "id: k"),
               "b.yaml")
    assert ws.problems() == [
        "journeys/a.yaml:11:12: cover 'cover.png': the file is a PNG image, not a JPG; WeChat "
        "takes JPG covers only: convert it",
        "journeys/b.yaml:11:12: cover 'notes.jpg': the file is not a readable image; WeChat "
        "takes a JPG cover",
    ]


def test_cover_over_64_kb_is_an_error_at_its_line(ws: Workspace) -> None:
    big = jpeg(400, 400, noise=True)
    assert len(big) > 64_000
    (ws.root / "templates" / "big.jpg").write_bytes(big)
    ws.journey(VALID.replace("cover: cover.jpg", "cover: big.jpg"))
    assert ws.problems() == [
        f"journeys/j.yaml:11:12: cover 'big.jpg': the file is {len(big):,} bytes; WeChat takes "
        "a cover of at most 64 KB (64,000 bytes): shrink or recompress it"
    ]


def test_cover_missing_or_outside_the_templates_folder(ws: Workspace) -> None:
    ws.journey(VALID.replace("cover: cover.jpg", "cover: gone.jpg"), "a.yaml")
    ws.journey(VALID.replace("cover: cover.jpg", "cover: ../secret.jpg").replace("id: j", "id: k"),
               "b.yaml")
    assert ws.problems() == [
        "journeys/a.yaml:11:12: cover 'gone.jpg' not found in templates",
        "journeys/b.yaml:11:12: cover '../secret.jpg' must be a path inside the templates folder",
    ]


def test_article_and_card_limits_are_checked_where_they_are_written(ws: Workspace) -> None:
    ws.journey(
        VALID.replace("    cover: cover.jpg\n", "    cover: cover.jpg\n    digest: " + "摘" * 129
                      + "\n    author: " + "a" * 17 + "\n")
        .replace("    group: campus-deals\n", "    group: campus-deals\n    card:\n      title: "
                 + "群" * 43 + "\n      desc: " + "d" * 513 + "\n      picurl: ftp://x/y.png\n")
    )
    assert ws.problems() == [
        "journeys/j.yaml:12:13: digest is 129 characters; WeChat takes at most 128: shorten it",
        "journeys/j.yaml:13:13: author is 17 characters; WeChat takes at most 16: shorten it",
        "journeys/j.yaml:20:14: card.title is 129 bytes in UTF-8 (a Chinese character is 3); "
        "WeCom takes at most 128: shorten it",
        "journeys/j.yaml:21:13: card.desc is 513 bytes in UTF-8 (a Chinese character is 3); "
        "WeCom takes at most 512: shorten it",
        "journeys/j.yaml:22:15: picurl 'ftp://x/y.png' must be an http(s) URL of an image",
    ]


def test_article_keys_on_another_channel_are_errors(ws: Workspace) -> None:
    ws.journey(VALID.replace("    group: campus-deals\n",
                             "    group: campus-deals\n    cover: cover.jpg\n")
               .replace("    link: \"https", "    card: { title: 进群 }\n    link: \"https"))
    assert ws.problems() == [
        "journeys/j.yaml:17:12: cover applies to wechat_article steps, not wecom_group_invite",
        "journeys/j.yaml:26:11: card applies to wecom_group_invite steps, not sms",
    ]


def test_an_article_title_over_32_characters_is_an_error_in_its_template(ws: Workspace) -> None:
    ws.template("article.j2", '<p>x</p>\n{% set title = "' + "标" * 33 + '" %}\n')
    ws.journey(VALID)
    assert ws.problems() == [
        "templates/article.j2:2:1: the article title is 33 characters; WeChat takes at most 32: "
        "shorten it"
    ]
