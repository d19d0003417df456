"""Arm and variant assignment: stable, independent, and in proportion (100k fixed ids)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from orchestrator.journeys.assign import arm_for, rung_arm_for, unit_hash, variant_for
from orchestrator.journeys.model import SendStep, Variant

USERS = [f"user-{n}" for n in range(100_000)]


def ab_step(step_id: str = "sms", **weights: int) -> SendStep:
    variants = {name: Variant(weight=w, template=f"{name}.j2") for name, w in weights.items()}
    return SendStep(id=step_id, send="sms", variants=variants)


def test_unit_hash_is_the_documented_sha256() -> None:
    digest = hashlib.sha256(b"arm:winback-at-risk:u1").digest()
    assert unit_hash("arm:winback-at-risk:u1") == int.from_bytes(digest[:8], "big") / 2**64


def test_assignment_is_stable_across_calls_and_versions() -> None:
    step = ab_step(a=50, b=50)
    reordered = ab_step(b=50, a=50)  # a new version listing the variants the other way
    for user in USERS[:1000]:
        assert arm_for("j", user, 0.1) == arm_for("j", user, 0.1)
        assert variant_for("j", step, user) == variant_for("j", reordered, user)


def test_no_variants_means_none() -> None:
    assert variant_for("j", SendStep(id="s", send="sms", template="t.j2"), "u") is None


def test_holdout_proportion() -> None:
    arms = Counter(arm_for("winback-at-risk", user, 0.1) for user in USERS)
    assert arms["control"] / len(USERS) == pytest.approx(0.1, abs=0.005)
    assert set(arms) == {"control", "treatment"}
    assert all(arm_for("j", user, 0.0) == "treatment" for user in USERS[:1000])


def test_variant_proportions_follow_weights() -> None:
    step = ab_step(a=20, b=30, c=50)
    counts = Counter(variant_for("j", step, user) for user in USERS)
    for name, weight in {"a": 0.2, "b": 0.3, "c": 0.5}.items():
        assert counts[name] / len(USERS) == pytest.approx(weight, abs=0.005)


def test_zero_weight_variant_is_never_chosen() -> None:
    step = ab_step(a=0, b=100)
    assert {variant_for("j", step, user) for user in USERS[:5000]} == {"b"}


def test_variant_is_independent_of_arm() -> None:
    step = ab_step(a=50, b=50)
    joint = Counter((arm_for("j", u, 0.5), variant_for("j", step, u)) for u in USERS)
    for cell in [("control", "a"), ("control", "b"), ("treatment", "a"), ("treatment", "b")]:
        assert joint[cell] / len(USERS) == pytest.approx(0.25, abs=0.005)


def test_variants_of_two_steps_are_independent() -> None:
    first, second = ab_step("sms", a=50, b=50), ab_step("sms2", a=50, b=50)
    same = sum(variant_for("j", first, u) == variant_for("j", second, u) for u in USERS)
    assert same / len(USERS) == pytest.approx(0.5, abs=0.005)


def test_arms_of_two_journeys_are_independent() -> None:
    both = sum(arm_for("a", u, 0.5) == arm_for("b", u, 0.5) == "control" for u in USERS)
    assert both / len(USERS) == pytest.approx(0.25, abs=0.005)


def test_rung_arm_is_stable_in_proportion_and_independent_of_arm_and_variant() -> None:
    step = ab_step(a=50, b=50).model_copy(update={"holdout": 0.2})
    again = SendStep(id="sms", send="sms", template="other.j2", holdout=0.2)  # a new version
    rung = {user: rung_arm_for("j", step, user) for user in USERS}
    assert all(rung_arm_for("j", again, user) == rung[user] for user in USERS[:1000])
    held = [user for user, arm in rung.items() if arm == "holdout"]
    assert set(rung.values()) == {"holdout", "treatment"}
    assert len(held) / len(USERS) == pytest.approx(0.2, abs=0.005)
    # Independent draws: the rung holdout is a fifth of either arm and of either variant.
    for draw in (lambda u: arm_for("j", u, 0.5), lambda u: variant_for("j", step, u)):
        groups = Counter(draw(u) for u in USERS)
        held_by = Counter(draw(u) for u in held)
        for group, n in groups.items():
            assert held_by[group] / n == pytest.approx(0.2, abs=0.01)
    # Another step of the same journey draws its own holdout.
    other = step.model_copy(update={"id": "article"})
    overlap = sum(rung_arm_for("j", other, u) == "holdout" for u in held) / len(held)
    assert overlap == pytest.approx(0.2, abs=0.01)


def test_a_step_without_a_rung_holdout_has_no_rung_arm() -> None:
    assert rung_arm_for("j", SendStep(id="s", send="sms", template="t.j2"), "u") is None
