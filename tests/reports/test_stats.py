"""Uplift statistics: a hand-checked case, empty arms, and invariants (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from orchestrator.reports.stats import ArmCount, compare


def test_hand_checked_case() -> None:
    # control 40/400 = 10%, treatment 540/3600 = 15%
    uplift = compare(ArmCount(400, 40), ArmCount(3600, 540))
    assert uplift.absolute == pytest.approx(0.05)
    assert uplift.relative == pytest.approx(0.5)
    # Unpooled SE: sqrt(.15·.85/3600 + .10·.90/400) = sqrt(2.6041667e-4) = 0.0161374...
    se = math.sqrt(0.1275 / 3600 + 0.09 / 400)
    assert se == pytest.approx(0.0161374, abs=1e-7)
    z_crit = norm.ppf(0.975)
    assert uplift.ci95 == pytest.approx((0.05 - z_crit * se, 0.05 + z_crit * se))
    assert uplift.ci95 == pytest.approx((0.018371, 0.081629), abs=1e-6)
    # Pooled: p = 580/4000 = .145; SE = sqrt(.145·.855·(1/3600 + 1/400)) = 0.0185573...
    pooled_se = math.sqrt(0.145 * 0.855 * (1 / 3600 + 1 / 400))
    z = 0.05 / pooled_se
    assert z == pytest.approx(2.69436, abs=1e-5)
    assert uplift.p_value == pytest.approx(2 * norm.sf(z))
    assert uplift.p_value == pytest.approx(0.007053, abs=1e-6)


@pytest.mark.parametrize(("control", "treatment"), [
    (ArmCount(0, 0), ArmCount(10, 3)),
    (ArmCount(10, 3), ArmCount(0, 0)),
    (ArmCount(0, 0), ArmCount(0, 0)),
])
def test_an_empty_arm_leaves_everything_undefined(control: ArmCount,
                                                   treatment: ArmCount) -> None:
    uplift = compare(control, treatment)
    assert (uplift.absolute, uplift.relative, uplift.ci95, uplift.p_value) == (
        None, None, None, None)


def test_a_zero_control_rate_has_no_relative_uplift() -> None:
    uplift = compare(ArmCount(50, 0), ArmCount(50, 5))
    assert uplift.absolute == pytest.approx(0.1)
    assert uplift.relative is None
    assert uplift.p_value is not None and uplift.p_value < 0.05


@pytest.mark.parametrize("converted", [0, 1])
def test_all_or_nothing_in_both_arms_means_no_difference(converted: int) -> None:
    uplift = compare(ArmCount(20, 20 * converted), ArmCount(30, 30 * converted))
    assert uplift.absolute == 0
    assert uplift.ci95 == (0.0, 0.0)
    assert uplift.p_value == 1.0


def test_an_impossible_arm_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0 <= converted <= enrolled; got 5/4"):
        ArmCount(4, 5)


@st.composite
def arms(draw: st.DrawFn) -> ArmCount:
    enrolled = draw(st.integers(min_value=1, max_value=100_000))
    return ArmCount(enrolled, draw(st.integers(min_value=0, max_value=enrolled)))


@given(arms(), arms())
def test_invariants(control: ArmCount, treatment: ArmCount) -> None:
    uplift = compare(control, treatment)
    assert uplift.absolute is not None and uplift.ci95 is not None
    assert uplift.p_value is not None and 0.0 <= uplift.p_value <= 1.0
    low, high = uplift.ci95
    assert low <= uplift.absolute + 1e-12 and uplift.absolute <= high + 1e-12
    assert -1.0 <= uplift.absolute <= 1.0
    swapped = compare(treatment, control)
    assert swapped.absolute == pytest.approx(-uplift.absolute, abs=1e-12)
    assert swapped.p_value == pytest.approx(uplift.p_value, abs=1e-12)
    assert swapped.ci95 == pytest.approx((-high, -low), abs=1e-12)


@given(arms())
def test_identical_arms_show_no_effect(arm: ArmCount) -> None:
    uplift = compare(arm, arm)
    assert uplift.absolute == 0
    assert uplift.p_value == 1.0
