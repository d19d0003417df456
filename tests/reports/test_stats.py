"""Arm comparison statistics, checked against scipy and statsmodels on fixed data that
includes zero and tiny cells, plus invariants (hypothesis): the interval and the p-value
always agree, and a verdict is only given when the cells are large enough."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest
from scipy.stats.contingency import expected_freq
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from orchestrator.reports import formatting
from orchestrator.reports.stats import (
    ArmCount,
    compare,
    newcombe_interval,
    newcombe_p_value,
    wilson_interval,
)

# (control, treatment) as (enrolled, converted): large and small arms, rates of 0 and 1.
FIXED = [
    ((400, 40), (3600, 540)),
    ((8, 0), (120, 11)),  # a holdout of 8 that converted nobody
    ((10, 0), (10, 0)),
    ((10, 10), (10, 10)),
    ((1, 0), (1, 1)),
    ((5, 0), (5, 5)),
    ((4, 0), (7, 3)),
    ((1000, 0), (1000, 3)),
    ((1000, 999), (1000, 1000)),
    ((4, 2), (8, 5)),
    ((50, 5), (50, 15)),
    ((2, 1), (3, 0)),
    ((200, 30), (2000, 260)),
]


def _statsmodels_newcombe(control: ArmCount, treatment: ArmCount,
                          alpha: float = 0.05) -> tuple[float, float]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # statsmodels divides by zero rates internally
        low, high = confint_proportions_2indep(
            treatment.converted, treatment.enrolled, control.converted, control.enrolled,
            method="newcomb", compare="diff", alpha=alpha)
    return float(low), float(high)


@pytest.mark.parametrize(("control", "treatment"), FIXED)
def test_wilson_intervals_match_scipy_and_statsmodels(control: tuple[int, int],
                                                      treatment: tuple[int, int]) -> None:
    for enrolled, converted in (control, treatment):
        ours = wilson_interval(ArmCount(enrolled, converted))
        scipy_ci = binomtest(converted, enrolled).proportion_ci(0.95, method="wilson")
        assert ours == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-12)
        assert ours == pytest.approx(proportion_confint(converted, enrolled, method="wilson"),
                                     abs=1e-12)


@pytest.mark.parametrize(("control", "treatment"), FIXED)
def test_newcombe_interval_matches_statsmodels(control: tuple[int, int],
                                               treatment: tuple[int, int]) -> None:
    c, t = ArmCount(*control), ArmCount(*treatment)
    assert newcombe_interval(c, t) == pytest.approx(_statsmodels_newcombe(c, t), abs=1e-12)


@pytest.mark.parametrize(("control", "treatment"), FIXED)
def test_the_p_value_is_the_level_at_which_the_interval_touches_zero(
        control: tuple[int, int], treatment: tuple[int, int]) -> None:
    c, t = ArmCount(*control), ArmCount(*treatment)
    p = newcombe_p_value(c, t)
    assert p is not None
    if c.rate == t.rate:
        assert p == 1.0
        return
    # statsmodels' Newcombe interval at level 1 − p has its bound on 0's side at 0.
    low, high = _statsmodels_newcombe(c, t, alpha=p)
    assert (low if t.rate > c.rate else high) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("control", "treatment"), FIXED)
def test_a_verdict_only_when_every_expected_cell_reaches_five(
        control: tuple[int, int], treatment: tuple[int, int]) -> None:
    c, t = ArmCount(*control), ArmCount(*treatment)
    table = [[x, n - x] for n, x in (control, treatment)]
    with np.errstate(invalid="ignore"):
        expected = expected_freq(table)
    small = bool(np.nan_to_num(expected).min() < 5)
    uplift = compare(c, t)
    assert (uplift.warning is not None) == small
    assert (uplift.significant is None) == small


def test_the_small_holdout_no_longer_contradicts_itself() -> None:
    """A holdout of 8 with no conversion against 11/120: the old Wald interval was
    [4.00%, 14.33%] (excluding 0) beside p = 0.37. Now the interval includes 0, the
    p-value agrees, and the report warns instead of judging."""
    uplift = compare(ArmCount(8, 0), ArmCount(120, 11))
    assert uplift.absolute == pytest.approx(11 / 120)
    assert uplift.ci95 == pytest.approx((-0.2351622, 0.1567085), abs=1e-7)
    assert uplift.p_value == pytest.approx(0.37582, abs=1e-5)
    assert uplift.significant is None
    assert uplift.warning == (
        "too few users to judge (control 0/8, treatment 11/120): an arm would expect fewer "
        "than 5 conversions or non-conversions even with no difference; read the interval, "
        "not a verdict")
    line = formatting.uplift_line(uplift.as_dict(), "recall uplift")
    assert line == (
        "recall uplift +9.17 pp, 95% CI [-23.52, +15.67] pp, p = 0.3758 — warning: "
        + uplift.warning)
    assert "*" not in line


def test_hand_checked_case() -> None:
    # control 40/400 = 10%, treatment 540/3600 = 15%.
    # Wilson 95%: control [0.074299, 0.133311]; treatment [0.138709, 0.162037].
    uplift = compare(ArmCount(400, 40), ArmCount(3600, 540))
    assert wilson_interval(ArmCount(400, 40)) == pytest.approx((0.074299, 0.133311), abs=1e-6)
    assert wilson_interval(ArmCount(3600, 540)) == pytest.approx((0.138709, 0.162037),
                                                                 abs=1e-6)
    assert uplift.absolute == pytest.approx(0.05)
    assert uplift.relative == pytest.approx(0.5)
    # lower = .05 − hypot(.15 − .138709, .133311 − .10) = .014828
    # upper = .05 + hypot(.162037 − .15, .10 − .074299) = .078380
    assert uplift.ci95 == pytest.approx((0.014828, 0.078380), abs=1e-6)
    assert uplift.p_value == pytest.approx(0.0072661, abs=1e-7)
    assert (uplift.significant, uplift.warning) == (True, None)
    assert formatting.stars(uplift.as_dict()) == "**"


@pytest.mark.parametrize(("control", "treatment"), [
    (ArmCount(0, 0), ArmCount(10, 3)),
    (ArmCount(10, 3), ArmCount(0, 0)),
    (ArmCount(0, 0), ArmCount(0, 0)),
])
def test_an_empty_arm_leaves_everything_undefined(control: ArmCount,
                                                   treatment: ArmCount) -> None:
    uplift = compare(control, treatment)
    assert uplift.as_dict() == {"absolute": None, "relative": None, "ci95": None,
                                "p_value": None, "significant": None, "warning": None}


def test_a_zero_control_rate_has_no_relative_uplift() -> None:
    uplift = compare(ArmCount(100, 0), ArmCount(100, 12))
    assert uplift.absolute == pytest.approx(0.12)
    assert uplift.relative is None
    assert uplift.p_value is not None and uplift.p_value < 0.05
    assert uplift.significant is True


@pytest.mark.parametrize("converted", [0, 1])
def test_all_or_nothing_in_both_arms_means_no_difference(converted: int) -> None:
    uplift = compare(ArmCount(20, 20 * converted), ArmCount(30, 30 * converted))
    assert uplift.absolute == 0
    assert uplift.p_value == 1.0
    assert uplift.ci95 is not None and uplift.ci95[0] < 0 < uplift.ci95[1]
    assert uplift.warning is not None  # nobody (or everybody) converted: nothing to judge


def test_an_impossible_arm_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0 <= converted <= enrolled; got 5/4"):
        ArmCount(4, 5)


@st.composite
def arms(draw: st.DrawFn) -> ArmCount:
    enrolled = draw(st.integers(min_value=1, max_value=100_000))
    return ArmCount(enrolled, draw(st.integers(min_value=0, max_value=enrolled)))


@given(arms(), arms())
def test_interval_and_test_always_agree(control: ArmCount, treatment: ArmCount) -> None:
    uplift = compare(control, treatment)
    assert uplift.absolute is not None and uplift.ci95 is not None
    assert uplift.p_value is not None and 0.0 <= uplift.p_value <= 1.0
    low, high = uplift.ci95
    assert -1.0 <= low <= uplift.absolute <= high <= 1.0
    excludes_zero = low > 0 or high < 0
    if min(abs(low), abs(high)) > 1e-9:  # not on the boundary itself
        assert excludes_zero == (uplift.p_value < 0.05)
    if uplift.warning is None:
        assert uplift.significant == excludes_zero
    swapped = compare(treatment, control)
    assert swapped.absolute == pytest.approx(-uplift.absolute, abs=1e-12)
    assert swapped.p_value == pytest.approx(uplift.p_value, abs=1e-9)
    assert swapped.ci95 == pytest.approx((-high, -low), abs=1e-12)


@given(arms())
def test_identical_arms_show_no_effect(arm: ArmCount) -> None:
    uplift = compare(arm, arm)
    assert uplift.absolute == 0
    assert uplift.p_value == 1.0
    assert uplift.significant in (False, None)
