"""RFM quintile scores and activity tiers: pure arithmetic over feature columns."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from orchestrator.audience.config import TierConfig

TIERS = ("active", "low_frequency", "at_risk", "churned")


def quintile_scores(values: NDArray[np.float64], *, higher_is_better: bool) -> NDArray[np.int64]:
    """Scores 1–5: ``1 + floor(5 × share of the population strictly worse)``.

    Ties share one score (the lower quintile they start in), so sparse populations where
    most users have zero or one order score deterministically: nobody is strictly worse
    than zero orders, so zero is always 1. NaN (never seen) counts as the worst value.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    worst = -np.inf if higher_is_better else np.inf
    clean = np.where(np.isnan(values), worst, values)
    ordered = np.sort(clean)
    if higher_is_better:
        strictly_worse = np.searchsorted(ordered, clean, side="left")
    else:
        strictly_worse = n - np.searchsorted(ordered, clean, side="right")
    return np.minimum(5, 1 + (5 * strictly_worse) // n).astype(np.int64)


def assign_tiers(
    recency_days: NDArray[np.float64],
    active_days_in_window: NDArray[np.float64],
    tiers: TierConfig,
) -> NDArray[np.str_]:
    """``churned`` (never active, or silent ≥ churned_days), ``at_risk`` (silent ≥
    at_risk_days), ``low_frequency`` (fewer active days than the threshold in the window),
    else ``active``: the first rule that holds wins."""
    never = np.isnan(recency_days)
    recency = np.where(never, np.inf, recency_days)
    return np.select(
        [
            recency >= tiers.churned_days,
            recency >= tiers.at_risk_days,
            active_days_in_window < tiers.low_frequency_active_days,
        ],
        ["churned", "at_risk", "low_frequency"],
        default="active",
    ).astype(np.str_)
