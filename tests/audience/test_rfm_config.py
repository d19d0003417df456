from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.audience.config import AudienceConfig, TierConfig, load_audience_config
from orchestrator.audience.rfm import assign_tiers, quintile_scores
from orchestrator.config import Settings
from orchestrator.errors import ConfigError

nan = np.nan


@pytest.mark.parametrize(
    ("values", "higher_is_better", "expected"),
    [
        (list(range(10)), True, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
        (list(range(10)), False, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]),
        # Sparse buyers: ties share the quintile they start in; zero orders is always 1.
        ([0, 0, 0, 0, 0, 0, 1, 1, 2, 7], True, [1, 1, 1, 1, 1, 1, 4, 4, 5, 5]),
        # Recency: NaN (never active) is the worst value.
        ([1.5, nan, 3.0, 40.0, nan], False, [5, 1, 4, 3, 1]),
        ([5.0], True, [1]),
        ([], True, []),
    ],
)
def test_quintile_scores(values: list[float], higher_is_better: bool, expected: list[int]) -> None:
    scores = quintile_scores(np.array(values, dtype=float), higher_is_better=higher_is_better)
    assert scores.tolist() == expected


def test_tiers_in_rule_order() -> None:
    recency = np.array([0.5, 0.5, 6.99, 7.0, 29.9, 30.0, nan])
    active_days = np.array([4, 3, 10, 10, 10, 10, 0], dtype=float)
    tiers = assign_tiers(recency, active_days, TierConfig())
    assert tiers.tolist() == [
        "active", "low_frequency", "active", "at_risk", "at_risk", "churned", "churned",
    ]


def _settings(tmp_path: Path) -> Settings:
    return Settings(journeys_dir=tmp_path, state_dir=tmp_path / "state", timezone="UTC")


def test_no_policy_file_gives_defaults_with_settings_timezone(tmp_path: Path) -> None:
    config = load_audience_config(settings=_settings(tmp_path))
    assert config == AudienceConfig(timezone="UTC")
    assert config.activity_events == ("login", "session", "order_placed")
    assert config.tiers.at_risk_days == 7 and config.tiers.churned_days == 30


def test_audience_section_of_the_policy(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "timezone: Asia/Shanghai\n"
        "caps: {global: {max: 3, per: 7d}}\n"
        "audience:\n"
        "  activity_events: [login, order_placed]\n"
        "  tiers: {at_risk_days: 5, churned_days: 21}\n"
        "  golden: {churn_score: {threshold: 0.7}}\n",
        encoding="utf-8",
    )
    config = load_audience_config(settings=_settings(tmp_path))
    assert config.activity_events == ("login", "order_placed")
    assert config.tiers.at_risk_days == 5 and config.tiers.low_frequency_active_days == 4
    assert config.golden.churn_score.threshold == 0.7
    assert config.timezone == "Asia/Shanghai"  # the policy's, not the settings'


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("audience: {tiers: {at_risk_dayz: 5}}",
         r"policy.yaml: invalid audience section: audience.tiers.at_risk_dayz: Extra inputs"),
        ("audience: {tiers: {at_risk_days: 30, churned_days: 7}}",
         r"churned_days \(7.0\) must be greater than at_risk_days \(30.0\)"),
        ("audience: {timezone: Mars/Olympus}", r"unknown timezone 'Mars/Olympus'"),
        ("audience: [1, 2]", r"policy.yaml: 'audience' must be a mapping, got list"),
        ("audience: {tiers: [", r"policy.yaml: not valid YAML"),
    ],
)
def test_bad_audience_section_names_file_and_key(
    tmp_path: Path, section: str, message: str
) -> None:
    (tmp_path / "policy.yaml").write_text(section + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_audience_config(settings=_settings(tmp_path))
