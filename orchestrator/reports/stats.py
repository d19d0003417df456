"""Two arms compared: rates, the difference with its 95% interval, the matching p-value,
and whether the counts are large enough to read a verdict from them. Pure, no I/O.

* Each arm's rate gets the **Wilson score interval**.
* The difference ``d = p_t − p_c`` gets **Newcombe's hybrid score interval** (his method
  10), built from the two Wilson intervals ``(l_t, u_t)`` and ``(l_c, u_c)``:
  ``[d − sqrt((p_t − l_t)² + (u_c − p_c)²), d + sqrt((u_t − p_t)² + (p_c − l_c)²)]``.
  Unlike the Wald interval it stays honest when a rate is 0 or 1 or an arm is small.
* The **p-value is that interval's own test**: the smallest α at which the ``(1 − α)``
  Newcombe interval leaves out 0 (found by bisection on the normal quantile). So
  ``p < 0.05`` exactly when the 95% interval excludes 0: the two can never disagree.
* **Too few for a verdict** (Cochran's rule): if the arms did not differ, each arm would
  expect ``n · p̄`` conversions and ``n · (1 − p̄)`` non-conversions, ``p̄`` the pooled
  rate; when any of these four is below 5 the comparison carries a ``warning`` and no
  verdict (``significant`` is ``None``). The interval and p-value are still given.

An empty arm has no rate, and then nothing that needs it is defined: those values are
``None``, never an exception or a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Z_95 = 1.959963984540054  # Φ⁻¹(0.975), the two-sided 95% normal quantile
MIN_EXPECTED = 5.0  # Cochran: every expected cell count at least this for a verdict
_Z_MAX = 40.0  # erfc(40/√2) underflows to 0: a p-value below any that can be printed

Interval = tuple[float, float]


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

    def __str__(self) -> str:
        return f"{self.converted}/{self.enrolled}"


@dataclass(frozen=True)
class Uplift:
    """Treatment minus control. Each field is ``None`` when it is not defined (see module)."""

    absolute: float | None
    relative: float | None
    ci95: Interval | None
    p_value: float | None
    significant: bool | None = None
    warning: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"absolute": self.absolute, "relative": self.relative,
                "ci95": list(self.ci95) if self.ci95 is not None else None,
                "p_value": self.p_value, "significant": self.significant,
                "warning": self.warning}


def compare(control: ArmCount, treatment: ArmCount,
            names: tuple[str, str] = ("control", "treatment")) -> Uplift:
    """Uplift of ``treatment`` over ``control`` (see the module for every definition).

    ``relative`` is ``absolute / control rate`` (``None`` when the control rate is 0);
    ``names`` are the arms' names in the warning.
    """
    p_c, p_t = control.rate, treatment.rate
    if p_c is None or p_t is None:
        return Uplift(absolute=None, relative=None, ci95=None, p_value=None)
    absolute = p_t - p_c
    ci95 = newcombe_interval(control, treatment)
    warning = small_sample_warning(control, treatment, names)
    assert ci95 is not None
    return Uplift(
        absolute=absolute,
        relative=absolute / p_c if p_c > 0 else None,
        ci95=ci95,
        p_value=newcombe_p_value(control, treatment),
        significant=None if warning else (ci95[0] > 0 or ci95[1] < 0),
        warning=warning,
    )


def wilson_interval(arm: ArmCount, z: float = Z_95) -> Interval | None:
    """Wilson score interval of the arm's rate; ``None`` for an empty arm."""
    if arm.enrolled == 0:
        return None
    n, x = arm.enrolled, arm.converted
    centre = (x + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(x * (n - x) / n + z * z / 4)
    # Exact at 0 and 1 (x = 0 or x = n); rounding must not step outside [0, 1].
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return (low, high)


def newcombe_interval(control: ArmCount, treatment: ArmCount,
                      z: float = Z_95) -> Interval | None:
    """Newcombe's hybrid score interval of ``p_t − p_c``; ``None`` if an arm is empty."""
    bounds = _newcombe(control, treatment)
    return None if bounds is None else (bounds[0](z), bounds[1](z))


def newcombe_p_value(control: ArmCount, treatment: ArmCount) -> float | None:
    """Two-sided p-value of the test the Newcombe interval inverts; ``None`` if an arm is
    empty. ``1`` when the rates are equal."""
    bounds = _newcombe(control, treatment)
    p_c, p_t = control.rate, treatment.rate
    if bounds is None or p_c is None or p_t is None:
        return None
    if p_t == p_c:
        return 1.0
    # The bound on 0's side moves monotonically towards 0 as z grows: find where it gets there.
    toward_zero = bounds[0] if p_t > p_c else (lambda z: -bounds[1](z))
    low, high = 0.0, 1.0
    while toward_zero(high) > 0:
        if high >= _Z_MAX:
            return 0.0
        low, high = high, min(2 * high, _Z_MAX)
    for _ in range(100):
        middle = (low + high) / 2
        if toward_zero(middle) > 0:
            low = middle
        else:
            high = middle
    return math.erfc(high / math.sqrt(2))


def small_sample_warning(control: ArmCount, treatment: ArmCount,
                         names: tuple[str, str] = ("control", "treatment")) -> str | None:
    """The plain warning when a cell expects fewer than 5 users if the arms did not differ
    (Cochran's rule); ``None`` when the counts suffice or an arm is empty."""
    total = control.enrolled + treatment.enrolled
    if control.enrolled == 0 or treatment.enrolled == 0:
        return None
    pooled = (control.converted + treatment.converted) / total
    smallest = min(n * share for n in (control.enrolled, treatment.enrolled)
                   for share in (pooled, 1 - pooled))
    if smallest >= MIN_EXPECTED:
        return None
    return (f"too few users to judge ({names[0]} {control}, {names[1]} {treatment}): an arm "
            f"would expect fewer than {MIN_EXPECTED:g} conversions or non-conversions even "
            "with no difference; read the interval, not a verdict")


def _newcombe(control: ArmCount, treatment: ArmCount
              ) -> tuple[Callable[[float], float], Callable[[float], float]] | None:
    """The interval's two bounds as functions of the normal quantile ``z``."""
    p_c, p_t = control.rate, treatment.rate
    if p_c is None or p_t is None:
        return None
    d = p_t - p_c

    def lower(z: float) -> float:
        (l_t, _), (_, u_c) = _wilson(treatment, z), _wilson(control, z)
        return d - math.hypot(p_t - l_t, u_c - p_c)

    def upper(z: float) -> float:
        (_, u_t), (l_c, _) = _wilson(treatment, z), _wilson(control, z)
        return d + math.hypot(u_t - p_t, p_c - l_c)

    return lower, upper


def _wilson(arm: ArmCount, z: float) -> Interval:
    interval = wilson_interval(arm, z)
    assert interval is not None
    return interval
