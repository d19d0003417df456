"""Rendering one touch: the template data a step sees, its text, its article title, its link.

Template data (documented in ``docs/journeys.md``):

- ``user_id`` and the users.csv columns ``openid unionid external_userid wecom_sender phone
  timezone`` as top-level names;
- ``user``: every field of the user (columns, derived profile fields such as ``tier``) and
  every free attribute, e.g. ``user.nickname``; ``attributes``: the free attributes only;
- ``journey`` (``id``, ``name``, ``version``), ``arm``, ``variant``;
- ``event`` (``name``, ``props``, ``ts``, ``value``) for journeys entered by an event;
- one name per pool (e.g. ``coupon_code``), drawn once per enrollment;
- ``link``: the step's tracked short URL, for steps that have a ``link``; the fixed URL,
  the same for everyone, for steps that have a ``landing``.

A ``wechat_article`` template names its title with a top-level
``{% set title = "…" %}``; the rendered body is the article content.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateNotFound
from jinja2.exceptions import SecurityError, UndefinedError
from markupsafe import Markup

from orchestrator.errors import ConfigError, InputError
from orchestrator.journeys.expressions import TEMPLATE_ENV, USER_COLUMNS, templates_env
from orchestrator.journeys.model import Journey, JourneySpec, SendStep

HTML_CHANNELS = frozenset({"wechat_article"})  # bodies are HTML: autoescaped
BASE_NAMES = frozenset(
    {"user_id", *USER_COLUMNS, "user", "attributes", "journey", "arm", "variant"}
)


@dataclass(frozen=True)
class RenderedTouch:
    """What one touch says. For SMS ``text`` is without signature and opt-out suffix."""

    channel: str
    template: str
    variant: str | None
    title: str | None
    text: str
    link: str | None


def provided_names(journey: JourneySpec, step: SendStep) -> frozenset[str]:
    """The names a template of ``step`` may use (what ``template_context`` provides)."""
    names = set(BASE_NAMES) | set(journey.pools)
    if journey.entry.event:
        names.add("event")
    if step.link or step.landing:
        names.add("link")
    return frozenset(names)


def template_context(
    journey: Journey,
    *,
    user: Mapping[str, Any],
    arm: str = "treatment",
    variant: str | None = None,
    event: Mapping[str, Any] | None = None,
    pools: Mapping[str, str | None] | None = None,
    link: str | None = None,
) -> dict[str, Any]:
    """The template data for one touch.

    ``user`` holds ``user_id``, the users.csv columns, derived fields and ``attributes``
    (a mapping of free attributes). ``event`` is the entry event as ``{name, props, ts,
    value}``; ``pools`` the enrollment's drawn codes (``None`` where a pool ran out); ``link``
    the tracked short URL.
    """
    attributes = dict(user.get("attributes") or {})
    fields = {k: v for k, v in user.items() if k != "attributes"}
    context: dict[str, Any] = {name: user.get(name) for name in USER_COLUMNS}
    context.update(
        user_id=user["user_id"],
        user={**attributes, **fields},
        attributes=attributes,
        journey={"id": journey.id, "name": journey.name, "version": journey.version},
        arm=arm,
        variant=variant,
    )
    if event is not None:
        context["event"] = dict(event)
    context.update(pools or {})
    if link is not None:
        context["link"] = link
    return context


def render_link(step: SendStep, context: Mapping[str, Any]) -> str | None:
    """The step's ``link`` rendered for this user (before shortening); ``None`` if no link."""
    if not step.link:
        return None
    try:
        return _link_template(step.link).render(context).strip()
    except (UndefinedError, SecurityError) as exc:
        raise InputError(f"link of step {step.id!r}: {exc}") from exc


def render_touch(
    journey: Journey,
    step: SendStep,
    *,
    variant: str | None,
    context: Mapping[str, Any],
    templates_dir: Path,
) -> RenderedTouch:
    """Render ``step`` for one user. ``context`` comes from ``template_context``; when it
    has no ``link``, the step's link rendered for the user (preview does this) or its fixed
    ``landing`` URL is used."""
    name = step.template_for(variant)
    data = {**context, "variant": variant}
    link = data.get("link") or render_link(step, data) or step.landing
    data.pop("link", None)
    if link:
        data["link"] = link
    try:
        env = templates_env(templates_dir, html=step.send in HTML_CHANNELS)
        module = env.get_template(name).make_module(data)
    except TemplateNotFound:
        raise ConfigError(
            f"template {name!r} of step {step.id!r} not found in {templates_dir}: "
            "run recall validate"
        ) from None
    except (UndefinedError, SecurityError) as exc:
        raise InputError(
            f"template {name!r} for step {step.id!r} of journey {journey.id!r}: {exc}"
        ) from exc
    title = getattr(module, "title", None)
    if step.send == "wechat_article" and not title:
        raise ConfigError(f'template {name!r} must set its title: {{% set title = "…" %}}')
    return RenderedTouch(
        channel=step.send,
        template=name,
        variant=variant,
        title=_plain(title) if title is not None else None,
        text=str(module).strip(),
        link=link,
    )


def _plain(value: object) -> str:
    """The text of ``value``: an autoescaped title is markup, its reader sees plain text."""
    return value.unescape() if isinstance(value, Markup) else str(value)


@lru_cache(maxsize=256)
def _link_template(source: str) -> Template:
    return TEMPLATE_ENV.from_string(source)
