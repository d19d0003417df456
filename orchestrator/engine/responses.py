"""Simulated recipients: how people answer touches in ``recall simulate``.

A responses file (YAML; documented in ``docs/simulate.md``) gives, per channel and per tier,
the probabilities that a touched person clicks (or joins, for the group invite), opts out,
and converts after the touch, with mean delays; and a baseline daily conversion hazard per
tier that applies to *everyone enrolled*, touched or not, so the holdout converts too.

Every draw is ``hash(seed, kind, id)``: the same seed gives the same responses, whatever the
order in which touches happen to be processed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.journeys.durations import parse_duration

Tier = str
ActionKind = Literal["click", "join", "opt_out", "convert"]


class Reaction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    click: float = Field(0.0, ge=0, le=1)  # follows the tracked link (SMS, article)
    join: float = Field(0.0, ge=0, le=1)  # joins the group (WeCom invite)
    opt_out: float = Field(0.0, ge=0, le=1)  # replies TD / unsubscribes
    convert: float = Field(0.0, ge=0, le=1)  # reaches the goal because of this touch
    convert_if_clicked: float | None = Field(None, ge=0, le=1)


class Delays(BaseModel):
    model_config = ConfigDict(extra="forbid")

    click: timedelta = timedelta(hours=2)
    join: timedelta = timedelta(hours=6)
    opt_out: timedelta = timedelta(hours=1)
    convert: timedelta = timedelta(hours=20)

    @field_validator("*", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class ActiveHours(BaseModel):
    """How much likelier a click, join or conversion is when the touch lands in the person's
    top hours, inside their active hours, or outside them (multipliers of the probabilities,
    capped at 1). The hours come from the person's hour-of-week activity profile, the one
    ``at: best_hour`` ranks hours by (``journeys.besthour.placement``)."""

    model_config = ConfigDict(extra="forbid")

    top_hours: int = Field(3, ge=1, le=24)  # how many of the day's best hours are "top"
    top: float = Field(1.0, ge=0)
    inside: float = Field(1.0, ge=0)
    outside: float = Field(1.0, ge=0)

    def factor(self, placement: str | None) -> float:
        """The multiplier for a placement; 1 when nothing is known of the person."""
        return {"top": self.top, "inside": self.inside, "outside": self.outside}.get(
            placement or "", 1.0)


class Responses(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline_daily: dict[Tier, float] = Field(default_factory=lambda: {
        "active": 0.06, "low_frequency": 0.025, "at_risk": 0.012, "churned": 0.004,
        "default": 0.01,
    })
    channels: dict[str, dict[Tier, Reaction]] = Field(default_factory=lambda: {
        "wechat_article": {"default": Reaction(click=0.06, opt_out=0.002, convert=0.02,
                                               convert_if_clicked=0.25)},
        "wecom_group_invite": {"default": Reaction(join=0.18, convert=0.03,
                                                   convert_if_clicked=0.2)},
        "sms": {"default": Reaction(click=0.09, opt_out=0.01, convert=0.03,
                                    convert_if_clicked=0.3)},
    })
    delays: Delays = Field(default_factory=Delays)
    order_value: float = 28.0  # mean goal event value (CNY)
    active_hours: ActiveHours | None = Field(default_factory=lambda: ActiveHours(
        top=3.0, inside=1.8, outside=0.6))

    def reaction(self, channel: str, tier: str | None) -> Reaction:
        table = self.channels.get(channel, {})
        return table.get(tier or "default") or table.get("default") or Reaction()

    def daily(self, tier: str | None) -> float:
        return self.baseline_daily.get(tier or "default", self.baseline_daily.get("default", 0))


def load_responses(path: Path | None) -> Responses:
    if path is None:
        return Responses()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return Responses.model_validate(data)


def draw(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) from the seed and the parts."""
    key = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def delay(seed: int, mean: timedelta, *parts: object) -> timedelta:
    """An exponential delay with the given mean, at least one minute."""
    u = draw(seed, "delay", *parts)
    seconds = -math.log(1.0 - u) * mean.total_seconds()
    return timedelta(seconds=max(60.0, seconds))


@dataclass(order=True)
class Action:
    at: datetime
    kind: ActionKind = field(compare=False)
    touch_id: int | None = field(compare=False, default=None)
    enrollment_id: int | None = field(compare=False, default=None)
    user_id: str = field(compare=False, default="")
    channel: str = field(compare=False, default="")
    detail: dict[str, Any] = field(compare=False, default_factory=dict)


def plan_touch(r: Responses, seed: int, *, touch_id: int, enrollment_id: int, user_id: str,
               channel: str, tier: str | None, sent_at: datetime,
               goal_within: timedelta | None, placement: str | None = None) -> list[Action]:
    """What this person does after this touch (nothing, click/join, opt out, convert);
    ``placement`` is where the touch landed in their day (``top``, ``inside``,
    ``outside``, or ``None`` when unknown), which scales click, join and convert."""
    reaction = r.reaction(channel, tier)
    factor = r.active_hours.factor(placement) if r.active_hours is not None else 1.0
    actions: list[Action] = []
    engaged = False
    engage_kind: ActionKind = "join" if channel == "wecom_group_invite" else "click"
    engage_p = min(1.0, factor * (reaction.join if engage_kind == "join" else reaction.click))
    if draw(seed, engage_kind, touch_id) < engage_p:
        engaged = True
        at = sent_at + delay(seed, getattr(r.delays, engage_kind), engage_kind, touch_id)
        actions.append(Action(at, engage_kind, touch_id, enrollment_id, user_id, channel))
    if draw(seed, "opt_out", touch_id) < reaction.opt_out:
        at = sent_at + delay(seed, r.delays.opt_out, "opt_out", touch_id)
        actions.append(Action(at, "opt_out", touch_id, enrollment_id, user_id, channel))
    p_convert = min(1.0, factor * (
        reaction.convert_if_clicked if engaged and reaction.convert_if_clicked is not None
        else reaction.convert))
    if goal_within is not None and draw(seed, "convert", touch_id) < p_convert:
        at = sent_at + delay(seed, r.delays.convert, "convert", touch_id)
        value = round(r.order_value * (0.5 + draw(seed, "value", touch_id)), 2)
        actions.append(Action(at, "convert", touch_id, enrollment_id, user_id, channel,
                              {"value": value}))
    return actions


def plan_baseline(r: Responses, seed: int, *, enrollment_id: int, user_id: str,
                  tier: str | None, entered_at: datetime,
                  goal_within: timedelta | None) -> list[Action]:
    """Whether this person converts anyway inside the goal window (both arms)."""
    if goal_within is None:
        return []
    days = goal_within.total_seconds() / 86_400
    p = 1.0 - (1.0 - r.daily(tier)) ** days
    if draw(seed, "baseline", enrollment_id) >= p:
        return []
    at = entered_at + goal_within * draw(seed, "baseline_at", enrollment_id)
    value = round(r.order_value * (0.5 + draw(seed, "baseline_value", enrollment_id)), 2)
    return [Action(at, "convert", None, enrollment_id, user_id, "", {"value": value})]
