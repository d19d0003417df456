"""Treatment vs control: recall rates, uplift, its 95% CI and p-value. Pure, no I/O.

* 95% CI of the absolute uplift: the **unpooled Wald** interval,
  ``d ± z·sqrt(p_t(1−p_t)/n_t + p_c(1−p_c)/n_c)`` with ``z = Φ⁻¹(0.975)``.
* p-value: the **pooled two-proportion z-test**, two-sided:
  ``z = d / sqrt(p(1−p)(1/n_t + 1/n_c))`` with ``p = (x_t + x_c)/(n_t + n_c)``,
  ``p_value = erfc(|z|/√2)``.

An empty arm has no rate, and then nothing that needs it is defined: those values are
``None``, never an exception or a NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # Φ⁻¹(0.975), the two-sided 95% normal quantile


@dataclass(frozen=True)
class ArmCount:
    """One arm: how many users were enrolled, how many of them converted."""

    enrolled: int
    converted: int

    def __post_init__(self) -> None:
        if not 0 <= self.converted <= self.enrolled:
            raise ValueError(
                f"an arm needs 0 <= converted <= enrolled; got {self.converted}/{self.enrolled}"
            )

    @property
    def rate(self) -> float | None:
        """The recall rate ``converted / enrolled``; ``None`` for an empty arm."""
        return self.converted / self.enrolled if self.enrolled else None


@dataclass(frozen=True)
class Uplift:
    """Treatment minus control. Each field is ``None`` when it is not defined (see module)."""

    absolute: float | None
    relative: float | None
    ci95: tuple[float, float] | None
    p_value: float | None


def compare(control: ArmCount, treatment: ArmCount) -> Uplift:
    """Uplift of ``treatment`` over ``control``.

    ``relative`` is ``absolute / control rate`` (``None`` when the control rate is 0). When
    both arms are all-0 or all-1 the Wald interval collapses to ``[d, d]`` and the pooled
    test has no variance: the rates are equal and the p-value is 1.
    """
    p_c, p_t = control.rate, treatment.rate
    if p_c is None or p_t is None:
        return Uplift(absolute=None, relative=None, ci95=None, p_value=None)
    absolute = p_t - p_c
    relative = absolute / p_c if p_c > 0 else None
    return Uplift(absolute=absolute, relative=relative,
                  ci95=wald_interval(control, treatment), p_value=pooled_z_test(control, treatment))


def wald_interval(control: ArmCount, treatment: ArmCount,
                  z: float = Z_95) -> tuple[float, float] | None:
    """Unpooled Wald interval of ``p_t − p_c``; ``None`` if an arm is empty."""
    p_c, p_t = control.rate, treatment.rate
    if p_c is None or p_t is None:
        return None
    se = math.sqrt(p_t * (1 - p_t) / treatment.enrolled + p_c * (1 - p_c) / control.enrolled)
    absolute = p_t - p_c
    return (absolute - z * se, absolute + z * se)


def pooled_z_test(control: ArmCount, treatment: ArmCount) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test; ``None`` if an arm is empty."""
    p_c, p_t = control.rate, treatment.rate
    if p_c is None or p_t is None:
        return None
    pooled = (control.converted + treatment.converted) / (control.enrolled + treatment.enrolled)
    se = math.sqrt(pooled * (1 - pooled) * (1 / treatment.enrolled + 1 / control.enrolled))
    if se == 0:  # everyone or no one converted, in both arms: the rates are equal
        return 1.0
    z = (p_t - p_c) / se
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))
