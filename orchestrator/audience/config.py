"""Audience settings: which events mean "active", tier thresholds, churn and golden windows.

They live in an optional ``audience:`` section of ``journeys/policy.yaml``; every key has a
default, so a policy without the section (or no policy file at all) works::

    audience:
      activity_events: [login, session, order_placed]
      tiers: { at_risk_days: 7, churned_days: 30, low_frequency_active_days: 4 }
      golden:
        activity_drop: { min_drop_pct: 50 }
        payment_failure: { after_hours: 2 }
        churn_score: { threshold: 0.6 }
        holiday_factor: 0.5     # on public holidays (the policy's holidays: CN) windows halve
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.config import Settings, get_settings
from orchestrator.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierConfig(_Strict):
    """Tiers are decided in this order: churned, at_risk, low_frequency, else active."""

    at_risk_days: float = Field(7.0, gt=0, description="no activity for this long: at_risk")
    churned_days: float = Field(30.0, gt=0, description="no activity for this long: churned")
    low_frequency_active_days: int = Field(
        4, ge=1, description="fewer active days than this in the window: low_frequency"
    )
    low_frequency_window_days: int = Field(30, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> TierConfig:
        if self.churned_days <= self.at_risk_days:
            raise ValueError(
                f"churned_days ({self.churned_days}) must be greater than "
                f"at_risk_days ({self.at_risk_days})"
            )
        return self


class ActivityDropConfig(_Strict):
    """Recent activity fell by ``min_drop_pct`` % against the user's own baseline."""

    enabled: bool = True
    min_drop_pct: float = Field(50.0, gt=0, le=100)
    recent_days: int = Field(7, ge=1)
    baseline_days: int = Field(28, ge=1)
    # Sparse users (a couple of orders a month) would "drop 100 %" every quiet week: only
    # users with a real habit in the baseline window are judged.
    min_baseline_active_days: int = Field(4, ge=1)


class PaymentFailureConfig(_Strict):
    """``after_hours`` after a payment failure that no successful order has followed."""

    enabled: bool = True
    after_hours: float = Field(2.0, ge=0)
    max_age_hours: float = Field(72.0, gt=0, description="older failures never fire")


class ChurnScoreConfig(_Strict):
    """The churn score crossed ``threshold`` (below it one ``interval_hours`` earlier)."""

    enabled: bool = True
    threshold: float = Field(0.6, gt=0, lt=1)


class GoldenConfig(_Strict):
    activity_drop: ActivityDropConfig = ActivityDropConfig()
    payment_failure: PaymentFailureConfig = PaymentFailureConfig()
    churn_score: ChurnScoreConfig = ChurnScoreConfig()
    # Edge detectors compare "now" with one detection interval earlier (daily refresh).
    interval_hours: float = Field(24.0, gt=0)
    # People drift away faster over a public holiday: on a holiday (the policy's
    # ``holidays`` calendar) the windows shrink by this factor, so the moment comes sooner.
    holiday_factor: float = Field(
        0.5, gt=0, le=1,
        description="on a public holiday: activity_drop.recent_days and "
                    "payment_failure.after_hours times this (1 = no change)")


class AudienceConfig(_Strict):
    activity_events: tuple[str, ...] = ("login", "session", "order_placed")
    order_event: str = "order_placed"
    payment_failed_event: str = "payment_failed"
    rfm_window_days: int = Field(90, ge=1)
    timezone: str = "Asia/Shanghai"  # day/hour habits; the policy's timezone when it has one
    holidays: str | None = None  # holiday calendar (country code); the policy's by default
    horizon_days: float = Field(14.0, gt=0, description="default churn horizon")
    tiers: TierConfig = TierConfig()
    golden: GoldenConfig = GoldenConfig()

    @field_validator("activity_events")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("activity_events needs at least one event name")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @field_validator("holidays")
    @classmethod
    def _known_calendar(cls, value: str | None) -> str | None:
        import holidays as holidays_lib

        if value is not None and value not in holidays_lib.list_supported_countries():
            raise ValueError(
                f"unknown holiday calendar {value!r}: a country code of the holidays "
                "package, e.g. CN")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def load_audience_config(
    path: Path | None = None, *, settings: Settings | None = None
) -> AudienceConfig:
    """The ``audience:`` section of the policy file (default ``JOURNEYS_DIR/policy.yaml``).

    A missing file or section gives the defaults; the policy's ``timezone`` is used unless
    the section sets its own. Raises ``ConfigError`` naming the file and key otherwise.
    """
    settings = settings or get_settings()
    path = path or settings.journeys_dir / "policy.yaml"
    document = _read_yaml(path)
    section = document.get("audience") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'audience' must be a mapping, got {type(section).__name__}")
    values: dict[str, Any] = dict(section)
    values.setdefault("timezone", document.get("timezone") or settings.timezone)
    if document.get("holidays") is not None:
        values.setdefault("holidays", document["holidays"])
    try:
        return AudienceConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid audience section: {_describe(exc)}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the policy must be a mapping at the top level")
    return document


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in ("audience", *error["loc"]))
        parts.append(f"{key}: {error['msg']}")
    return "; ".join(parts)
