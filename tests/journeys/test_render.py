from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from orchestrator.errors import InputError
from orchestrator.journeys.loader import load_all
from orchestrator.journeys.model import Journey, Policy, SendStep
from orchestrator.journeys.render import (
    RenderedTouch,
    render_link,
    render_touch,
    template_context,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
USER = {
    "user_id": "u42",
    "openid": "o-42",
    "phone": "+8613800000042",
    "attributes": {"nickname": "小林", "campus": "north"},
    "tier": "at_risk",
}


@pytest.fixture(scope="module")
def journeys() -> dict[str, Journey]:
    loaded, _policy = load_all(REPO / "journeys", TEMPLATES)
    return {j.id: j for j in loaded}


def test_context_exposes_the_documented_names(journeys: dict[str, Journey]) -> None:
    journey = journeys["tier-low-frequency-coupon"]
    context = template_context(
        journey,
        user=USER,
        arm="treatment",
        variant=None,
        pools={"coupon_code": "LF8-X"},
        link="https://r.example/s/abc",
    )
    assert context["user_id"] == "u42" and context["openid"] == "o-42"
    assert context["unionid"] is None  # a users.csv column left empty is None
    assert context["user"]["nickname"] == "小林" and context["user"]["tier"] == "at_risk"
    assert context["attributes"] == {"nickname": "小林", "campus": "north"}
    assert context["journey"] == {
        "id": journey.id,
        "name": journey.name,
        "version": journey.version,
    }
    assert (context["arm"], context["coupon_code"], context["link"]) == (
        "treatment",
        "LF8-X",
        "https://r.example/s/abc",
    )
    assert "event" not in context


def test_article_has_title_and_body(journeys: dict[str, Journey]) -> None:
    journey = journeys["winback-at-risk"]
    step = journey.send_step("article")
    touch = render_touch(
        journey,
        step,
        variant=None,
        context=template_context(journey, user=USER),
        templates_dir=TEMPLATES,
    )
    assert touch.channel == "wechat_article" and touch.template == "winback/article.j2"
    assert touch.title == "好久不见，这周的校园美食都在这里"
    assert touch.text.startswith("<p>同学你好") and "{%" not in touch.text
    assert touch.link is None


def test_sms_variant_with_link_and_user_attribute(journeys: dict[str, Journey]) -> None:
    journey = journeys["winback-at-risk"]
    step = journey.send_step("sms")
    context = template_context(journey, user=USER, variant="b", link="https://r.example/s/abc")
    touch = render_touch(journey, step, variant="b", context=context, templates_dir=TEMPLATES)
    assert touch.template == "winback/sms_b.j2" and touch.variant == "b"
    assert (
        touch.text
        == "小林，你常点的店都在等你，今日下单立减8元，点 https://r.example/s/abc 回来看看"
    )
    assert touch.link == "https://r.example/s/abc"
    assert touch.title is None


def test_link_is_rendered_for_the_user_when_not_shortened(journeys: dict[str, Journey]) -> None:
    journey = journeys["winback-at-risk"]
    step = journey.send_step("sms")
    context = template_context(journey, user=USER)
    assert render_link(step, context) == "https://m.example.com/coupon?u=u42"
    touch = render_touch(journey, step, variant="a", context=context, templates_dir=TEMPLATES)
    assert (
        touch.text
        == "好久不见！8元无门槛券已到账，3天内有效，点 https://m.example.com/coupon?u=u42 领取"
    )


def test_event_props_in_a_rescue_sms(journeys: dict[str, Journey]) -> None:
    journey = journeys["payment-rescue"]
    event = {"name": "payment_failed", "props": {"amount": 23.5}, "ts": None, "value": 23.5}
    context = template_context(journey, user=USER, event=event, link="https://r.example/s/x")
    touch = render_touch(
        journey, journey.send_step("sms"), variant=None, context=context, templates_dir=TEMPLATES
    )
    assert touch.text == (
        "你的订单（¥23.5）支付未成功，餐品已为你保留，点 https://r.example/s/x 重新支付"
    )


def test_missing_data_is_an_input_error(tmp_path: Path, journeys: dict[str, Journey]) -> None:
    (tmp_path / "t.j2").write_text("{{ user.missing_attribute }}", encoding="utf-8")
    journey = journeys["winback-at-risk"]
    step = SendStep(id="sms", send="sms", template="t.j2")
    with pytest.raises(InputError, match="'dict object' has no attribute 'missing_attribute'"):
        render_touch(
            journey,
            step,
            variant=None,
            context=template_context(journey, user=USER),
            templates_dir=tmp_path,
        )


def render_one(tmp_path: Path, journey: Journey, step: SendStep, source: str,
               user: dict[str, object] = USER) -> RenderedTouch:
    (tmp_path / step.template_for(None)).write_text(source, encoding="utf-8")
    context = template_context(journey, user=user, link="https://r.example/s/a?x=1&y=2")
    return render_touch(journey, step, variant=None, context=context, templates_dir=tmp_path)


MARKUP = {**USER, "attributes": {"nickname": '<img src=x onerror="alert(1)">&'}}


def test_an_article_body_is_html_and_autoescaped_whatever_its_file_name(
    tmp_path: Path, journeys: dict[str, Journey]
) -> None:
    step = SendStep(id="article", send="wechat_article", template="a.j2")
    source = '{% set title = "你好 " ~ user.nickname %}<p>{{ user.nickname }}</p>'
    touch = render_one(tmp_path, journeys["winback-at-risk"], step, source, MARKUP)
    assert touch.text == "<p>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;</p>"
    assert touch.title == '你好 <img src=x onerror="alert(1)">&'  # a title is plain text


@pytest.mark.parametrize("channel", ["sms", "wecom_group_invite"])
def test_plain_text_is_never_html_escaped_whatever_its_file_name(
    tmp_path: Path, journeys: dict[str, Journey], channel: str
) -> None:
    extra = {"group": "g"} if channel == "wecom_group_invite" else {}
    step = SendStep(id="s", send=channel, template="t.html.j2", **extra)
    touch = render_one(tmp_path, journeys["winback-at-risk"], step,
                       "{{ user.nickname }} {{ link }}", MARKUP)
    assert touch.text == '<img src=x onerror="alert(1)">& https://r.example/s/a?x=1&y=2'


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ 'x' * 10**9 }}", "a repetition would be 1,000,000,000 characters"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         "more than 10,000 loop iterations"),
        ("{% for i in range(10000) %}{{ 'x' * 99999 }}{% endfor %}",
         "output over 100,000 characters"),
        ("{% macro m() %}{% for i in range(9000) %}{{ 'x' * 90000 }}{% endfor %}{% endmacro %}"
         "{% set body = m() %}short", "output over 100,000 characters"),
        ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}", "a joined value would be 131,072 characters"),
        ("{{ 'x' | center(10**9) }}", "the center filter would be 1,000,000,000"),
        ("{{ '%0999999999d' % 1 }}", "a % format width would be 999,999,999"),
        ("{{ '{:>999999999}'.format(1) }}", "a format width would be 999,999,999"),
        ("{{ ('y' * 50000) | join('x' * 50000) }}", "the join filter would be 2,500,000,000"),
        ("{{ 9 ** 99999 }}", "9 \\*\\* 99999 has about"),
    ],
)
def test_a_template_cannot_exhaust_a_worker(
    tmp_path: Path, journeys: dict[str, Journey], source: str, error: str
) -> None:
    step = SendStep(id="sms", send="sms", template="greedy.j2")
    with pytest.raises(InputError, match=f"template 'greedy.j2' for step 'sms' .*: {error}"):
        render_one(tmp_path, journeys["winback-at-risk"], step, source)


def test_templates_cannot_change_data(tmp_path: Path, journeys: dict[str, Journey]) -> None:
    step = SendStep(id="sms", send="sms", template="t.j2")
    with pytest.raises(InputError, match="access to attribute 'append' of 'list' object is unsafe"):
        render_one(tmp_path, journeys["winback-at-risk"], step,
                   "{% set seen = [] %}{{ seen.append(user_id) }}")


def test_a_link_template_is_bounded_too(journeys: dict[str, Journey]) -> None:
    step = SendStep(id="sms", send="sms", template="t.j2",
                    link="https://m.example.com/?u={{ user_id * 10**9 }}")
    with pytest.raises(InputError, match="link of step 'sms': a repetition would be"):
        render_link(step, template_context(journeys["winback-at-risk"], user=USER))


def test_jinja2_is_at_least_the_release_without_known_sandbox_escapes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    jinja = next(Requirement(r) for r in project["dependencies"] if r.startswith("jinja2"))
    assert not jinja.specifier.contains("3.1.5") and jinja.specifier.contains("3.1.6")


def test_every_sample_touch_renders(journeys: dict[str, Journey]) -> None:
    _, policy = load_all(REPO / "journeys", TEMPLATES)
    assert isinstance(policy, Policy)
    event = {"name": "x", "props": {}, "ts": None, "value": None}
    for journey in journeys.values():
        pools = {name: "CODE-1" for name in journey.pools}
        for step in journey.send_steps():
            for variant in step.variants or [None]:
                context = template_context(
                    journey, user=USER, variant=variant, event=event, pools=pools
                )
                touch = render_touch(
                    journey, step, variant=variant, context=context, templates_dir=TEMPLATES
                )
                assert touch.text, (journey.id, step.id, variant)
