"""The journeys Recall ships, sent as WeChat would take them: each article with its cover."""

from __future__ import annotations

from pathlib import Path

import pytest
from channel_helpers import calls, message, request

from orchestrator.channels import WeChatArticleChannel
from orchestrator.channels.base import Message
from orchestrator.engine.step_options import step_options
from orchestrator.journeys.loader import load_all
from orchestrator.journeys.model import Journey, SendStep
from orchestrator.journeys.render import render_touch, template_context
from orchestrator.sandbox.server import SandboxHandle

ROOT = Path(__file__).resolve().parents[2]
JOURNEYS, TEMPLATES = ROOT / "journeys", ROOT / "templates"
SHIPPED, _ = load_all(JOURNEYS, TEMPLATES)
ARTICLES = [
    (journey, step)
    for journey in SHIPPED
    for step in journey.send_steps()
    if step.send == "wechat_article"
]


def rendered(journey: Journey, step: SendStep, i: int) -> Message:
    user = {"user_id": f"u{i}", "openid": f"o{i:027d}", "nickname": "小明", "attributes": {}}
    touch = render_touch(
        journey,
        step,
        variant=None,
        context=template_context(journey, user=user, link=f"http://127.0.0.1:8000/s/c{i}"),
        templates_dir=TEMPLATES,
    )
    base = message(i)
    return Message(
        touch_id=i, key=base.key, recipient=base.recipient, text=touch.text, title=touch.title
    )


def test_every_shipped_journey_article_has_a_cover() -> None:
    assert len(ARTICLES) >= 4
    assert all(step.cover for _, step in ARTICLES)


@pytest.mark.parametrize(
    ("journey", "step"), ARTICLES, ids=[f"{j.id}:{s.id}" for j, s in ARTICLES]
)
def test_a_shipped_article_is_accepted_with_a_cover_the_sandbox_issued(
    article: WeChatArticleChannel, sandbox: SandboxHandle, journey: Journey, step: SendStep
) -> None:
    batch = request(
        f"b-{journey.id}",
        "wechat_article",
        [rendered(journey, step, i) for i in range(3)],
        options=step_options(step, TEMPLATES),
        content_version=f"{journey.version}:{step.id}:-",
        cover=False,  # the step's own cover, from the shipped templates folder
    )
    results = article.send(batch)
    assert {r.status for r in results} == {"sent"}
    (cover,) = calls(sandbox, "wechat", "/material/add_material", "accepted")
    assert (cover["body"]["type"], cover["body"]["format"]) == ("thumb", "JPEG")
    assert cover["body"]["size"] == (TEMPLATES / str(step.cover)).stat().st_size
    (draft,) = calls(sandbox, "wechat", "/draft/add", "accepted")
    (news,) = draft["body"]["articles"]
    assert news["thumb_media_id"] == cover["ref"]  # the cover the sandbox issued
    assert news["title"] == batch.messages[0].title and news["content"]
    assert (news["digest"], news["author"]) == (step.digest or "", step.author or "")
    (mass,) = calls(sandbox, "wechat", "/message/mass/send", "accepted")
    assert mass["body"]["mpnews"]["media_id"] == draft["ref"]
