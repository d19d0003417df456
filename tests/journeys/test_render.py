from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.journeys.loader import load_all
from orchestrator.journeys.model import Journey, Policy, SendStep
from orchestrator.journeys.render import render_link, render_touch, template_context

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


def test_html_templates_are_autoescaped(tmp_path: Path, journeys: dict[str, Journey]) -> None:
    (tmp_path / "a.html.j2").write_text(
        '{% set title = "T" %}<p>{{ user.nickname }}</p>', encoding="utf-8"
    )
    journey = journeys["winback-at-risk"]
    step = SendStep(id="article", send="wechat_article", template="a.html.j2")
    user = {**USER, "attributes": {"nickname": "<script>"}}
    touch = render_touch(
        journey,
        step,
        variant=None,
        context=template_context(journey, user=user),
        templates_dir=tmp_path,
    )
    assert touch.text == "<p>&lt;script&gt;</p>"


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
