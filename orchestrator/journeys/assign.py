"""Deterministic assignment of a user to an arm, a step's rung arm and an A/B variant.

Each hashes only stable names (journey id, step id, user id): a user keeps the same arm,
rung arm and variant across journey versions and re-entries. The hashes use different
prefixes, so the three draws are independent.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from orchestrator.journeys.model import SendStep

Arm = Literal["control", "treatment"]
RungArm = Literal["holdout", "treatment"]


def unit_hash(key: str) -> float:
    """A uniform number in [0, 1) from the first 8 bytes of sha256(key)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def control_threshold(holdout: float) -> int:
    """The smallest ``n`` with ``n / 2**64 >= holdout``: a user is in ``control`` exactly
    when the first 8 bytes of their arm hash, read as a big-endian integer, are below it
    (what a database compares, with the same float rounding as ``unit_hash``)."""
    low, high = 0, 2**64
    while low < high:
        mid = (low + high) // 2
        if mid / 2**64 >= holdout:
            high = mid
        else:
            low = mid + 1
    return low


def arm_for(journey_id: str, user_id: str, holdout: float) -> Arm:
    """``control`` for a ``holdout`` fraction of users, else ``treatment``."""
    return "control" if unit_hash(f"arm:{journey_id}:{user_id}") < holdout else "treatment"


def rung_arm_for(journey_id: str, step: SendStep, user_id: str) -> RungArm | None:
    """For a treatment user at a step with a rung ``holdout``: ``holdout`` (the step is
    skipped) for that share of users, else ``treatment``; ``None`` when the step has none."""
    if not step.holdout:
        return None
    held = unit_hash(f"rung:{journey_id}:{step.id}:{user_id}") < step.holdout
    return "holdout" if held else "treatment"


def variant_for(journey_id: str, step: SendStep, user_id: str) -> str | None:
    """The step's variant for this user, chosen by weight; ``None`` if it has no variants.

    Variants are taken in name order, so reordering them in the file changes nothing.
    """
    if not step.variants:
        return None
    point = unit_hash(f"variant:{journey_id}:{step.id}:{user_id}") * 100
    cumulative = 0
    names = sorted(step.variants)
    for name in names:
        cumulative += step.variants[name].weight
        if point < cumulative:
            return name
    return names[-1]  # unreachable when weights sum to 100; guards float edge cases
