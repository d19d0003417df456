"""How ``recall simulate`` composes a person's conversions: the baseline hazard (the
holdout converts too) applies to every enrollment, touched or not, and a touch can only add
a conversion to it. With touches that have no effect, the treatment and the holdout must
convert alike: any gap between the arms then comes from the people, never from the
simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orchestrator.engine.responses import (
    Reaction,
    Responses,
    plan_baseline,
    plan_touch,
)
from orchestrator.journeys.assign import arm_for

ENTERED = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
WITHIN = timedelta(days=14)
N = 4_000
SEED = 7
JOURNEY = "care"


def converts(responses: Responses, enrollment_id: int, user_id: str, arm: str) -> list[datetime]:
    """Every conversion the simulator plans for one enrollment: the baseline for both arms,
    plus, in treatment, a touch on the first day and another three days later (as the
    demo's care journey does)."""
    actions = plan_baseline(responses, SEED, enrollment_id=enrollment_id, user_id=user_id,
                            tier="churned", entered_at=ENTERED, goal_within=WITHIN)
    if arm == "treatment":
        for k, (channel, sent_at) in enumerate((("wechat_article", ENTERED),
                                                ("sms", ENTERED + timedelta(days=3)))):
            actions += plan_touch(responses, SEED, touch_id=2 * enrollment_id + k,
                                  enrollment_id=enrollment_id, user_id=user_id,
                                  channel=channel, tier="churned", sent_at=sent_at,
                                  goal_within=WITHIN)
    return sorted(a.at for a in actions if a.kind == "convert")


def measured(times: list[datetime]) -> bool:
    """Converted, as the report measures it: a goal event in (entered, entered + within]."""
    return any(ENTERED < at <= ENTERED + WITHIN for at in times)


def population() -> list[tuple[int, str, str]]:
    people = [(i + 1, f"u{i:05d}") for i in range(N)]
    return [(eid, uid, arm_for(JOURNEY, uid, 0.5)) for eid, uid in people]


def no_effect() -> Responses:
    inert = Reaction(click=0.3, join=0.3, opt_out=0.0, convert=0.0, convert_if_clicked=0.0)
    return Responses(baseline_daily={"churned": 0.01, "default": 0.01},
                     channels={c: {"default": inert} for c in ("wechat_article", "sms")})


def test_touches_without_effect_leave_the_arms_converting_alike() -> None:
    responses = no_effect()
    rates: dict[str, list[bool]] = {"control": [], "treatment": []}
    for eid, uid, arm in population():
        times = converts(responses, eid, uid, arm)
        # The very same conversions as the person would have had in the holdout.
        assert times == converts(responses, eid, uid, "control"), (eid, arm)
        rates[arm].append(measured(times))
    control = sum(rates["control"]) / len(rates["control"])
    treatment = sum(rates["treatment"]) / len(rates["treatment"])
    expected = 1 - (1 - 0.01) ** 14
    # Both arms draw from one hazard: each within 3 standard errors of it.
    for rate, n in ((control, len(rates["control"])), (treatment, len(rates["treatment"]))):
        assert abs(rate - expected) < 3 * (expected * (1 - expected) / n) ** 0.5, (rate, n)


def test_a_touch_only_adds_to_the_baseline() -> None:
    """Whoever converts in the holdout's world still converts when touched, no later."""
    responses = Responses()  # the demo's defaults: touches help
    gained = 0
    for eid, uid, _ in population():
        base = converts(responses, eid, uid, "control")
        touched = converts(responses, eid, uid, "treatment")
        if measured(base):
            assert measured(touched), eid
            assert min(t for t in touched if t > ENTERED) <= min(base), eid
        gained += measured(touched) and not measured(base)
    assert gained > 0


def test_baseline_conversions_fall_inside_the_goal_window() -> None:
    responses = Responses(baseline_daily={"churned": 0.05, "default": 0.05})
    planned = [at for eid, uid, _ in population()
               for at in converts(responses, eid, uid, "control")]
    assert planned
    assert all(ENTERED < at <= ENTERED + WITHIN for at in planned)
