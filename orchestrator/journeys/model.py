"""The typed journey and policy model: what ``journeys/*.yaml`` and ``policy.yaml`` mean.

The loader (``loader.py``) turns YAML into these models and maps every validation error
back to ``FILE:LINE:COL``. The engine, the policy checks and the channels read only these
classes. Every model forbids unknown keys. Durations are ``timedelta`` (elapsed time),
windows are ``LocalWindow``; both serialize back to their YAML text.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib
from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.audience.config import AudienceConfig
from orchestrator.errors import ConfigError, JourneyError
from orchestrator.journeys.durations import (
    DURATION_PATTERN,
    WINDOW_PATTERN,
    LocalWindow,
    format_duration,
    parse_duration,
)
from orchestrator.journeys.expressions import (
    BRANCH_NAMES,
    SEGMENT_NAMES,
    check_names,
    compile_expression,
)
from orchestrator.journeys.suggest import did_you_mean
from orchestrator.policy.rules import PLATFORM_LIMITS as _PLATFORM_RULES

CHANNELS = ("wechat_article", "wecom_group_invite", "sms")
CALENDAR_UNITS = ("day", "week", "month")
MAX_RETENTION_WINDOWS = 6
EXIT = "exit"

ChannelName = Literal["wechat_article", "wecom_group_invite", "sms"]


# ---------------------------------------------------------------- field types


def _duration_in(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else parse_duration(value)


def _window_in(value: Any) -> LocalWindow:
    return value if isinstance(value, LocalWindow) else LocalWindow.parse(value)


def _reentry_in(value: Any) -> timedelta | None:
    if value is None or value == "never":
        return None
    if isinstance(value, str) and not re.match(DURATION_PATTERN, value.strip()):
        raise ValueError(f"bad reentry {value!r}: a duration such as 30d, or never")
    return _duration_in(value)


def _holdout_in(value: Any) -> float:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)
        if not match:
            raise ValueError(f"bad holdout {value!r}: write a percentage, e.g. 10%")
        fraction = float(match[1]) / 100
    elif isinstance(value, int | float) and not isinstance(value, bool):
        fraction = float(value)
    else:
        raise ValueError(f"bad holdout {value!r}: write a percentage, e.g. 10%")
    if not 0.0 <= fraction <= 0.5:
        note = "" if isinstance(value, str) else f" (a bare number is a fraction: write {value}%?)"
        raise ValueError(f"holdout {value} is outside 0–50%{note}")
    return fraction


def _channel_in(value: Any) -> Any:
    if value not in CHANNELS:
        raise ValueError(
            f"unknown channel {value!r}{did_you_mean(str(value), CHANNELS)}; "
            f"channels: {', '.join(CHANNELS)}"
        )
    return value


def _identifier_check(kind: str, pattern: str, max_length: int) -> Any:
    regex = re.compile(pattern)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or not regex.match(value) or len(value) > max_length:
            raise ValueError(
                f"bad {kind} {value!r}: letters, digits, '_', '-' or '.', "
                f"starting with a letter or digit, at most {max_length} characters"
            )
        if value == EXIT:
            raise ValueError(f"{kind} cannot be {EXIT!r}: it is the word for leaving the journey")
        return value

    return BeforeValidator(check)


def _id_schema(pattern: str, max_length: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "maxLength": max_length})


_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_in),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["1d", "90m"]}),
]
Window = Annotated[
    LocalWindow,
    PlainValidator(_window_in),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "pattern": WINDOW_PATTERN, "examples": ["10:00-20:00"]}),
]
Reentry = Annotated[
    timedelta | None,
    BeforeValidator(_reentry_in),
    PlainSerializer(lambda v: "never" if v is None else format_duration(v), return_type=str),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"const": "never"}]}
    ),
]
Holdout = Annotated[
    float,
    BeforeValidator(_holdout_in),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
                {"type": "number", "minimum": 0, "maximum": 0.5},
            ],
            "examples": ["10%"],
        }
    ),
]
Channel = Annotated[ChannelName, BeforeValidator(_channel_in)]
# A channel as a mapping key (typed ``str`` so that lookups by any channel string type-check).
ChannelKey = Annotated[str, BeforeValidator(_channel_in)]
_POOL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
JourneyId = Annotated[
    str, _identifier_check("journey id", _ID_PATTERN, 128), _id_schema(_ID_PATTERN, 128)
]
StepId = Annotated[str, _identifier_check("step id", _ID_PATTERN, 64), _id_schema(_ID_PATTERN, 64)]
VariantName = Annotated[
    str, _identifier_check("variant name", _ID_PATTERN, 32), _id_schema(_ID_PATTERN, 32)
]
PoolName = Annotated[
    str, _identifier_check("pool name", _POOL_PATTERN, 64), _id_schema(_POOL_PATTERN, 64)
]


def _cap_key_in(value: Any) -> Any:
    keys = ("global", *CHANNELS)
    if value not in keys:
        raise ValueError(
            f"unknown cap {value!r}{did_you_mean(str(value), keys)}; caps: " + ", ".join(keys)
        )
    return value


CapKey = Annotated[str, BeforeValidator(_cap_key_in)]
_CAP_KEYS: dict[str, Any] = {"propertyNames": {"enum": ["global", *CHANNELS]}}
_CHANNEL_KEYS: dict[str, Any] = {"propertyNames": {"enum": list(CHANNELS)}}


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )


# ---------------------------------------------------------------- journeys


class Goal(_Model):
    """Reaching ``event`` within ``within`` of entering converts the enrollment and exits it."""

    event: str = Field(min_length=1)
    """The event that converts the enrollment, e.g. order_placed."""
    within: Duration
    """How long after entry the goal counts, e.g. 7d."""

    @field_validator("within")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("goal.within must be longer than 0s")
        return value


class Entry(_Model):
    """Who enters: on an ``event`` (filtered by ``segment``), or a ``segment`` on ``schedule``."""

    segment: str | None = None
    """Who: an expression over user fields, e.g. tier == 'at_risk' and churn_score >= 0.6."""
    event: str | None = None
    """Enroll when this event is ingested (webhook or API), e.g. payment_failed."""
    schedule: str | None = None
    """Cron (policy timezone) on which the segment is re-evaluated, e.g. 0 10 * * *."""

    @field_validator("segment")
    @classmethod
    def _segment_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            check_names(_expression(value), SEGMENT_NAMES, "segment")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(
                f"bad cron schedule {value!r}: five fields (minute hour day month weekday), "
                "e.g. '0 10 * * *'"
            )
        return value

    @model_validator(mode="after")
    def _meaningful(self) -> Entry:
        if not self.event and not self.segment:
            raise ValueError("entry needs an event, a segment, or both")
        if self.schedule and self.event:
            raise ValueError(
                "entry has an event and a schedule: an event enrolls as it arrives; "
                "drop the schedule"
            )
        return self


def _send_at_in(value: Any) -> str:
    if value != "best_hour":
        raise ValueError(
            f"bad at {value!r}: write at: best_hour (the user's most active local hour), "
            "or leave it out to send when due"
        )
    return "best_hour"


SendAt = Annotated[
    Literal["best_hour"],
    PlainValidator(_send_at_in),
    WithJsonSchema({"type": "string", "enum": ["best_hour"]}),
]


class Variant(_Model):
    weight: int = Field(ge=0, le=100)
    """Share of users in percent; the weights of a step sum to 100."""
    template: str = Field(min_length=1)
    """Template path relative to the templates folder."""
    at: SendAt | None = None
    """best_hour: this variant goes at the user's most active local hour; without it, when
    due. An A/B of the send time: one variant with at: best_hour, one without."""


# What the providers take (docs/sandbox.md cites the pages): WeChat's draft/add counts
# characters, WeCom's add_msg_template counts UTF-8 bytes.
ARTICLE_DIGEST_MAX_CHARS = 128
ARTICLE_AUTHOR_MAX_CHARS = 16
CARD_TITLE_MAX_BYTES = 128
CARD_DESC_MAX_BYTES = 512
CARD_URL_MAX_BYTES = 2048


def _max_bytes(limit: int, what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value.encode("utf-8")) > limit:
            raise ValueError(
                f"{what} is {len(value.encode('utf-8'))} bytes in UTF-8 (a Chinese character is "
                f"3); WeCom takes at most {limit}: shorten it"
            )
        return value

    return AfterValidator(check)


def _max_chars(limit: int, what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            raise ValueError(
                f"{what} is {len(value)} characters; WeChat takes at most {limit}: shorten it"
            )
        return value

    return AfterValidator(check)


def _web_url(value: Any) -> Any:
    if isinstance(value, str) and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"picurl {value!r} must be an http(s) URL of an image")
    return value


def _landing_url(value: Any) -> Any:
    if isinstance(value, str):
        if "{" in value:
            raise ValueError(
                f"landing {value!r} is the same for every recipient and takes no template "
                "data; a per-user URL is a link:"
            )
        if not re.match(r"^https?://[^/\s]+\S*$", value):
            raise ValueError(f"landing {value!r} must be an http(s) URL")
    return value


class InviteCard(_Model):
    """The link card under a WeCom invite's text. Every field is optional; WeCom shows the
    card in the customer's chat, so write it in their language (defaults are Chinese)."""

    title: Annotated[
        str | None, _max_bytes(CARD_TITLE_MAX_BYTES, "card.title"), Field(min_length=1)
    ] = None
    """Card title, at most 128 bytes (42 Chinese characters); default 邀请你加入「群名」."""
    desc: Annotated[str | None, _max_bytes(CARD_DESC_MAX_BYTES, "card.desc")] = None
    """Card description, at most 512 bytes; default 点击卡片，扫码即可入群."""
    picurl: Annotated[
        str | None, _max_bytes(CARD_URL_MAX_BYTES, "card.picurl"), AfterValidator(_web_url)
    ] = None
    """Picture URL, at most 2048 bytes; default the group's QR code."""


class SendStep(_Model):
    """One touch on one channel. ``link`` is a Jinja2 template of the URL to track."""

    id: StepId
    """Stable step id (touch key, branch target, report row)."""
    send: Channel
    """Channel: wechat_article, wecom_group_invite or sms."""
    template: str | None = None
    """Template path relative to the templates folder (or use variants)."""
    variants: dict[VariantName, Variant] | None = None
    """A/B variants by name, deterministic per user."""
    link: str | None = None
    """Target URL (a template), shortened and tracked per touch; {{ link }} in the text."""
    landing: Annotated[str | None, AfterValidator(_landing_url)] = None
    """A fixed URL, the same for every recipient ({{ link }} in the text; an article's "read
    more" link): the landing page there identifies the user (fixed-link landing)."""
    group: str | None = None
    """wecom_group_invite: the WeCom group chat to invite to."""
    fallback: Channel | None = None
    """Channel to use when the user cannot be reached on this one."""
    cover: str | None = Field(default=None, min_length=1)
    """wechat_article: the article's cover, a JPG of at most 64 KB, relative to templates/."""
    digest: Annotated[
        str | None, _max_chars(ARTICLE_DIGEST_MAX_CHARS, "digest"), Field(min_length=1)
    ] = None
    """wechat_article: the summary shown under the title (at most 128 characters)."""
    author: Annotated[
        str | None, _max_chars(ARTICLE_AUTHOR_MAX_CHARS, "author"), Field(min_length=1)
    ] = None
    """wechat_article: the author shown on the article (at most 16 characters)."""
    card: InviteCard | None = None
    """wecom_group_invite: the link card's title, description and picture."""
    at: SendAt | None = None
    """best_hour: go at the user's most active local hour, at most 24 h after due."""
    holdout: Holdout = Field(default=0.0, json_schema_extra={"default": "0%"})
    """Rung holdout, 0% to 50%: that share of the treatment arm skips this step (and goes
    on), so the step's own increment is measured."""

    @property
    def kind(self) -> Literal["send"]:
        return "send"

    @property
    def channel(self) -> ChannelName:
        return self.send

    @field_validator("variants")
    @classmethod
    def _weights(cls, value: dict[str, Variant] | None) -> dict[str, Variant] | None:
        if value is not None:
            total = sum(v.weight for v in value.values())
            if total != 100:
                raise ValueError(f"variant weights sum to {total}, not 100")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SendStep:
        if (self.template is None) == (self.variants is None):
            raise ValueError(f"send step {self.id!r} needs exactly one of template or variants")
        if self.send == "wecom_group_invite" and not self.group:
            raise ValueError(f"wecom_group_invite step {self.id!r} needs a group to invite to")
        if self.group and self.send != "wecom_group_invite":
            raise ValueError(f"group applies to wecom_group_invite steps, not {self.send}")
        if self.link and self.landing:
            raise located(
                f"step {self.id!r} has both link (a tracked link per recipient) and landing "
                "(one fixed link for everyone): keep one",
                "landing",
            )
        if self.fallback == self.send:
            raise ValueError(f"fallback {self.fallback} is the step's own channel")
        for key in ("cover", "digest", "author"):
            if getattr(self, key) is not None and self.send != "wechat_article":
                raise located(f"{key} applies to wechat_article steps, not {self.send}", key)
        if self.card is not None and self.send != "wecom_group_invite":
            raise located(f"card applies to wecom_group_invite steps, not {self.send}", "card")
        timed = [name for name, v in (self.variants or {}).items() if v.at is not None]
        if self.at is not None and timed:
            raise located(
                f"at is set on send step {self.id!r} and on its variant {timed[0]!r}: put it "
                "on the step (every variant) or on the variants (an A/B of the send time)",
                "variants", timed[0], "at")
        return self

    def at_for(self, variant: str | None) -> str | None:
        """When a touch of ``variant`` goes: ``best_hour``, or ``None`` (when due). A
        variant's own ``at`` wins; otherwise the step's."""
        chosen = (self.variants or {}).get(variant or "")
        if chosen is not None and chosen.at is not None:
            return chosen.at
        return self.at

    @property
    def timed(self) -> bool:
        """Whether some touch of this step may go at ``best_hour``."""
        return self.at is not None or any(
            v.at is not None for v in (self.variants or {}).values())

    def template_for(self, variant: str | None) -> str:
        """The template path for ``variant`` (``None`` when the step has no variants)."""
        if self.variants is None:
            assert self.template is not None
            return self.template
        if variant not in self.variants:
            known = ", ".join(self.variants)
            raise ValueError(f"step {self.id!r} has variants {known}; got {variant!r}")
        return self.variants[variant].template

    def templates(self) -> list[str]:
        if self.variants is None:
            return [self.template] if self.template else []
        return [v.template for v in self.variants.values()]


class WaitStep(_Model):
    """Wait ``wait`` (elapsed), then move to the next moment inside ``window`` (local)."""

    id: StepId | None = None
    wait: Duration
    """Elapsed time after the previous step finished, e.g. 1d."""
    window: Window | None = None
    """Then continue at the next local time inside HH:MM-HH:MM."""

    @property
    def kind(self) -> Literal["wait"]:
        return "wait"

    @field_validator("wait")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("wait cannot be negative")
        return value


class BranchStep(_Model):
    """``if`` is evaluated when reached; ``then``/``else`` name a later step id or ``exit``."""

    id: StepId | None = None
    if_: str = Field(alias="if")
    """Condition, e.g. not joined('invite')."""
    then: str
    """A later step id, or exit, when the condition holds."""
    else_: str = Field(alias="else")
    """A later step id, or exit, otherwise."""

    @property
    def kind(self) -> Literal["branch"]:
        return "branch"

    @field_validator("if_")
    @classmethod
    def _condition_compiles(cls, value: str) -> str:
        check_names(_expression(value), BRANCH_NAMES, "if")
        return value

    @property
    def targets(self) -> tuple[str, str]:
        return (self.then, self.else_)


class ExitStep(_Model):
    """``- exit: true`` ends the enrollment's touches (measurement goes on)."""

    id: StepId | None = None
    exit: Literal[True]

    @property
    def kind(self) -> Literal["exit"]:
        return "exit"


STEP_KEYWORDS = {"send": "send", "wait": "wait", "if": "branch", "exit": "exit"}


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((kind for key, kind in STEP_KEYWORDS.items() if key in value), None)
    return getattr(value, "kind", None)


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[ExitStep, Tag("exit")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs one of send, wait, if or exit",
    ),
]


class Pool(_Model):
    """A coupon-code CSV (a ``code`` column), relative to the journey file."""

    csv: str = Field(min_length=1)
    """CSV with a code column, relative to the journey file."""


# ---------------------------------------------------------------- policy


_CALENDAR_LONGEST = {
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
    "month": timedelta(days=31),
}
_CALENDAR_INSIDE = {"day": {"day"}, "week": {"day", "week"}, "month": {"day", "month"}}


class Cap(_Model):
    """At most ``max`` sends per ``per``: a rolling duration (``7d``) or ``day|week|month``
    (calendar, in the policy timezone; weeks start on Monday)."""

    max: int = Field(ge=0)
    """At most this many sends per person…"""
    per: str = Field(json_schema_extra={"pattern": r"^((\d+[smhdw])+|day|week|month)$"})

    @field_validator("per")
    @classmethod
    def _period(cls, value: str) -> str:
        if value not in CALENDAR_UNITS:
            try:
                parse_duration(value)
            except ValueError:
                raise ValueError(
                    f"bad cap period {value!r}: a duration for a rolling window (e.g. 7d) "
                    "or day, week or month for a calendar one"
                ) from None
        return value

    @property
    def rolling(self) -> timedelta | None:
        return None if self.per in CALENDAR_UNITS else parse_duration(self.per)

    @property
    def calendar(self) -> str | None:
        return self.per if self.per in CALENDAR_UNITS else None

    def covers_window_of(self, other: Cap) -> bool:
        """Does every ``other`` window lie inside some window of ``self``?"""
        if other.rolling is not None:
            return self.rolling is not None and self.rolling >= other.rolling
        assert other.calendar is not None
        if self.rolling is not None:
            return self.rolling >= _CALENDAR_LONGEST[other.calendar]
        assert self.calendar is not None
        return other.calendar in _CALENDAR_INSIDE[self.calendar]

    def at_least_as_strict_as(self, other: Cap) -> bool:
        """True when obeying ``self`` guarantees obeying ``other``."""
        return self.max <= other.max and self.covers_window_of(other)

    def __str__(self) -> str:
        return f"{self.max} per {self.per}"


# Quotas the platforms enforce themselves; a policy may only be stricter.
# The platform quotas are stated once, in the policy package; here as YAML-shaped caps.
PLATFORM_LIMITS = {
    channel: Cap(max=rule.max, per=rule.calendar or f"{rule.rolling_s}s")
    for channel, rule in _PLATFORM_RULES.items()
}


class SmsPolicy(_Model):
    signature: str
    opt_out_suffix: str
    price_per_segment: float = Field(ge=0)

    @field_validator("signature")
    @classmethod
    def _bracketed(cls, value: str) -> str:
        if not (value.startswith("【") and value.endswith("】") and len(value) > 2):
            raise ValueError(
                f"sms.signature {value!r} must be the registered signature in 【】, "
                "e.g. 【校园外卖】"
            )
        return value


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}: use an IANA name such as Asia/Shanghai"
        ) from None
    return value


@lru_cache(maxsize=8)
def _calendar(country: str) -> holidays_lib.HolidayBase:
    return holidays_lib.country_holidays(country)


class PolicyOverride(_Model):
    """A journey's ``policy:`` key: it may only tighten the policy."""

    caps: dict[CapKey, Cap] = Field(default={}, json_schema_extra=_CAP_KEYS)
    when_capped: Literal["skip", "defer"] | None = None
    max_defer: Duration | None = None
    send_hours: dict[ChannelKey, Window] = Field(default={}, json_schema_extra=_CHANNEL_KEYS)


class Policy(_Model):
    """``journeys/policy.yaml``: caps per person across journeys, quiet hours, SMS rules."""

    timezone: str = "Asia/Shanghai"
    """For users without a timezone; also the zone of calendar caps and crons."""
    # validate_default: the platform limits are added even when ``caps`` is left out.
    caps: dict[CapKey, Cap] = Field(default={}, validate_default=True, json_schema_extra=_CAP_KEYS)
    when_capped: Literal["skip", "defer"] = "skip"
    """A capped touch is skipped, or deferred up to max_defer."""
    max_defer: Duration = Field(default=timedelta(hours=24), json_schema_extra={"default": "24h"})
    send_hours: dict[ChannelKey, Window] = Field(default={}, json_schema_extra=_CHANNEL_KEYS)
    holiday_send_hours: dict[ChannelKey, Window] = Field(
        default={}, json_schema_extra=_CHANNEL_KEYS
    )
    holidays: str | None = None
    """Holiday calendar (holidays package country code), e.g. CN."""
    sms: SmsPolicy
    currency: str = "CNY"
    """ISO 4217 code of every amount: the SMS price, costs, revenue (goal event values)."""
    audience: AudienceConfig = Field(default_factory=AudienceConfig)
    """Activity events, RFM window, tier thresholds and golden-window detectors."""

    @field_validator("currency")
    @classmethod
    def _currency_code(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"bad currency {value!r}: a three-letter ISO 4217 code, e.g. CNY")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("caps")
    @classmethod
    def _platform_limits(cls, value: dict[str, Cap]) -> dict[str, Cap]:
        for channel, limit in PLATFORM_LIMITS.items():
            cap = value.get(channel)
            if cap is not None and not cap.at_least_as_strict_as(limit):
                raise located(
                    f"{channel} cap {cap} allows more than the platform limit of {limit}: "
                    "it cannot be raised",
                    channel,
                )
        # The platform quota applies even when the policy does not name it.
        return {**value, **{k: v for k, v in PLATFORM_LIMITS.items() if k not in value}}

    @field_validator("holidays")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is not None and value not in holidays_lib.list_supported_countries():
            raise ValueError(
                f"unknown holiday calendar {value!r}: a country code of the holidays "
                "package, e.g. CN"
            )
        return value

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_rest_day(self, day: date) -> bool:
        """A public holiday or weekend that is not a make-up working day (调休)."""
        if self.holidays is None:
            return False
        return not _calendar(self.holidays).is_working_day(day)

    def send_window(self, channel: str, day: date) -> LocalWindow | None:
        """The quiet-hours window for ``channel`` on local ``day``; ``None`` = any time."""
        if self.is_rest_day(day) and channel in self.holiday_send_hours:
            return self.holiday_send_hours[channel]
        return self.send_hours.get(channel)

    def loosened_by(self, override: PolicyOverride) -> list[tuple[tuple[str, ...], str]]:
        """Where ``override`` would loosen this policy: (path inside it, message) pairs."""
        found: list[tuple[tuple[str, ...], str]] = []
        for key, cap in override.caps.items():
            base = self.caps.get(key)
            if base is not None and not cap.at_least_as_strict_as(base):
                found.append(
                    (("caps", key), f"journey cap {key} {cap} is looser than the policy's {base}")
                )
        if override.max_defer is not None and override.max_defer > self.max_defer:
            found.append(
                (
                    ("max_defer",),
                    f"journey max_defer {format_duration(override.max_defer)} is longer than "
                    f"the policy's {format_duration(self.max_defer)}",
                )
            )
        for channel, window in override.send_hours.items():
            base_window = self.send_hours.get(channel)
            if base_window is not None and not window.within(base_window):
                found.append(
                    (
                        ("send_hours", channel),
                        f"journey send_hours {channel} {window} is not inside the "
                        f"policy's {base_window}",
                    )
                )
        return found

    def tightened_by(self, override: PolicyOverride | None) -> Policy:
        """This policy with a journey's stricter settings; ``ConfigError`` if one is looser."""
        if override is None:
            return self
        loose = self.loosened_by(override)
        if loose:
            raise ConfigError("; ".join(message for _, message in loose))
        return self.model_copy(
            update={
                "caps": {**self.caps, **override.caps},
                "when_capped": override.when_capped or self.when_capped,
                "max_defer": override.max_defer or self.max_defer,
                "send_hours": {**self.send_hours, **override.send_hours},
            }
        )


# ---------------------------------------------------------------- the journey


class JourneySpec(_Model):
    """What a journey file may contain (the JSON Schema is made from this)."""

    id: JourneyId
    """Unique, stable journey id."""
    name: str = Field(min_length=1)
    """Display name."""
    entry: Entry
    reentry: Reentry = Field(default=None, json_schema_extra={"default": "never"})
    """Minimum time between two entries of a user (>= goal.within), or never."""
    holdout: Holdout = Field(default=0.0, json_schema_extra={"default": "0%"})
    """Control group share, 0% to 50%: enrolled and measured, never touched."""
    goal: Goal | None = None
    steps: list[Step] = Field(min_length=1)
    priority: int = 0
    """Higher goes first when a cap slot is scarce."""
    test_recipients: list[str] = []
    """User ids of a seed list: each version of the journey sends them one copy of each send
    step when that step first goes out; uncapped, never counted."""
    policy: PolicyOverride | None = None
    """Stricter caps, quiet hours or deferral for this journey only."""
    pools: dict[PoolName, Pool] = {}
    """Coupon pools: one code drawn per enrollment, a template variable."""
    retention: list[Duration] = Field(
        default=[timedelta(days=7), timedelta(days=30)], max_length=MAX_RETENTION_WINDOWS,
        json_schema_extra={"default": ["7d", "30d"]},
    )
    """Retention windows after entry, whole days, each starting where the one before ends
    (7d, 30d: days 1-7 and 8-30); an activity event in a window counts the user retained."""

    @field_validator("retention")
    @classmethod
    def _whole_increasing_days(cls, value: list[timedelta]) -> list[timedelta]:
        previous = timedelta(0)
        for index, window in enumerate(value):
            text = format_duration(window)
            if window <= timedelta(0) or window % timedelta(days=1):
                raise located(f"retention window {text} is not a whole number of days: "
                              "write e.g. [7d, 30d]", index)
            if window <= previous:
                raise located(f"retention window {text} is not longer than the one before it "
                              f"({format_duration(previous)}): each window starts where the "
                              "one before ends, e.g. [7d, 30d]", index)
            previous = window
        return value

    def send_steps(self) -> list[SendStep]:
        return [s for s in self.steps if isinstance(s, SendStep)]

    def templates_used(self) -> list[str]:
        """Template paths the send steps name (relative to the templates dir), sorted."""
        return sorted({t for step in self.send_steps() for t in step.templates()})

    def covers_used(self) -> list[str]:
        """Article cover files the send steps name (relative to the templates dir), sorted."""
        return sorted({step.cover for step in self.send_steps() if step.cover})


class Journey(JourneySpec):
    """A loaded journey: the file's content plus its ``version`` and ``source_path``.

    ``version`` is sha256 (hex, first 16) of the journey file bytes followed by the bytes of
    every template it uses (``templates_used()``: the steps' templates and any template
    they include, import or extend), sorted by path, then of every article cover
    (``covers_used()``); it changes whenever the copy or a picture changes.
    """

    version: str
    source_path: str
    # Every template file the version covers: the steps' templates and what they include.
    template_files: list[str] = []

    def templates_used(self) -> list[str]:
        """Every template path the journey's version covers (relative, sorted)."""
        return sorted({*super().templates_used(), *self.template_files})

    def step_index(self, step_id: str) -> int:
        for index, step in enumerate(self.steps):
            if step.id == step_id:
                return index
        raise KeyError(f"journey {self.id!r} has no step {step_id!r}")

    def window_before(self, index: int) -> LocalWindow | None:
        """The window of the wait that leads to step ``index``: the nearest wait above it
        with no send step between them (``None`` when there is none or it has no window)."""
        for step in reversed(self.steps[:index]):
            if isinstance(step, SendStep):
                return None
            if isinstance(step, WaitStep):
                return step.window
        return None

    def send_step(self, step_id: str) -> SendStep:
        step = self.steps[self.step_index(step_id)]
        if not isinstance(step, SendStep):
            raise KeyError(f"step {step_id!r} of journey {self.id!r} is not a send step")
        return step

    def pool_path(self, name: str) -> Path:
        """The coupon CSV of pool ``name``, resolved against the journey file's folder."""
        return Path(self.source_path).parent / self.pools[name].csv


def located(message: str, *path: str | int) -> PydanticCustomError:
    """A validation error whose position is ``path`` below the validated field."""
    return PydanticCustomError("recall", "{message}", {"message": message, "path": path})


def _expression(source: str) -> Any:
    try:
        return compile_expression(source)
    except JourneyError as exc:
        raise ValueError(exc.problems[0].message) from None
