"""The demo story's own arithmetic: the ECE that chance alone gives a perfectly calibrated
model on the held-out sample (the floor the printed ECE is read against)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from orchestrator.audience.churn import (
    CalibrationRow,
    calibration_table,
    expected_calibration_error,
)
from orchestrator.demo.run import ece_by_chance


def test_ece_by_chance_is_the_binomial_mean_absolute_error() -> None:
    rows = [CalibrationRow(1, 10, 0.3, 0.0), CalibrationRow(2, 189, 0.5, 0.0),
            CalibrationRow(3, 40, 0.0, 0.0), CalibrationRow(4, 61, 0.97, 0.0)]
    expected = 0.0
    for row in rows:
        k = np.arange(row.n + 1)
        expected += row.n * float((binom.pmf(k, row.n, row.mean_predicted)
                                   * np.abs(k / row.n - row.mean_predicted)).sum())
    assert ece_by_chance(rows) == pytest.approx(expected / 300, rel=1e-9)


def test_a_calibrated_model_lands_near_the_floor() -> None:
    """Labels drawn from the predictions themselves: the measured ECE averages the floor."""
    rng = np.random.default_rng(3)
    measured, floors = [], []
    for _ in range(200):
        p = rng.beta(2, 2, 1_900)
        y = rng.random(1_900) < p
        rows = calibration_table(y, p)
        measured.append(expected_calibration_error(rows))
        floors.append(ece_by_chance(rows))
    assert np.mean(measured) == pytest.approx(np.mean(floors), rel=0.1)
