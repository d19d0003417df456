"""Each channel's own increment: a send step with a rung ``holdout`` against its holdout.

At such a step every treatment user who reaches it gets a *rung arm* (a hash of journey,
step and user, stored on the touch as ``rung_arm``): ``holdout`` users skip the step
(suppressed as ``rung_holdout``) and go on, ``treatment`` users get it as usual. Both
reached the step, so comparing them measures what the step itself added:

* **holdout**, **treatment** — users (each once, whatever their re-entries) who reached
  the step in that rung arm; **holdout_converted**, **treatment_converted** — those of
  them with a conversion of an enrollment that reached the step; the rates with the same
  interval, test and small-sample warning as the recall rate (``uplift``);
* **incremental_conversions** — ``(rate treatment − rate holdout) × treatment``;
* **cost** — the step's cost (every channel its touches went out on);
  **cost_per_incremental** — ``cost / incremental_conversions`` when that is positive;
* **incremental_revenue** — ``(revenue per user, treatment − holdout) × treatment``, from
  the conversion values of the enrollments that reached the step; **roi** —
  ``(incremental_revenue − cost) / cost`` when the cost is positive.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, case, distinct, func, select

from orchestrator.journeys.model import Journey
from orchestrator.reports.stats import ArmCount, compare
from orchestrator.store.tables import CONVERSIONS, TOUCHES

RUNG_ARMS = ("holdout", "treatment")


def rungs(conn: Connection, journey: Journey) -> dict[str, dict[str, Any]]:
    """``{step_id: rung}`` for every step with a rung holdout in the journey as it is now,
    or with rung-armed touches from an earlier version."""
    t = TOUCHES.c
    reached = (
        select(t.step_id, t.rung_arm, t.user_id, t.enrollment_id)
        .where(t.journey_id == journey.id, t.test.is_(False), t.arm == "treatment",
               t.rung_arm.in_(RUNG_ARMS))
        .distinct().subquery()
    )
    users: dict[str, dict[str, ArmCount]] = defaultdict(dict)
    converted_user = case((reached.c.enrollment_id.in_(select(CONVERSIONS.c.enrollment_id)),
                           reached.c.user_id))
    for step_id, arm, n, x in conn.execute(
        select(reached.c.step_id, reached.c.rung_arm, func.count(distinct(reached.c.user_id)),
               func.count(distinct(converted_user)))
        .group_by(reached.c.step_id, reached.c.rung_arm)
    ):
        users[step_id][arm] = ArmCount(int(n), int(x))
    revenue: dict[tuple[str, str], float] = {
        (step_id, arm): float(total) for step_id, arm, total in conn.execute(
            select(reached.c.step_id, reached.c.rung_arm,
                   func.coalesce(func.sum(CONVERSIONS.c.value), 0.0))
            .select_from(reached.join(CONVERSIONS,
                                      CONVERSIONS.c.enrollment_id == reached.c.enrollment_id))
            .group_by(reached.c.step_id, reached.c.rung_arm))
    }
    cost = dict(conn.execute(
        select(t.step_id, func.coalesce(func.sum(t.cost), 0.0))
        .where(t.journey_id == journey.id, t.test.is_(False), t.rung_arm == "treatment")
        .group_by(t.step_id)).all())
    shares = {step.id: step.holdout for step in journey.send_steps() if step.holdout}
    return {
        step_id: _rung(shares.get(step_id), users[step_id], cost.get(step_id, 0.0),
                       {arm: revenue.get((step_id, arm), 0.0) for arm in RUNG_ARMS})
        for step_id in sorted({*shares, *users})
    }


def _rung(share: float | None, users: dict[str, ArmCount], cost: float,
          revenue: dict[str, float]) -> dict[str, Any]:
    held = users.get("holdout", ArmCount(0, 0))
    treated = users.get("treatment", ArmCount(0, 0))
    uplift = compare(held, treated, ("held out", "reached"))
    incremental = (uplift.absolute * treated.enrolled if uplift.absolute is not None else None)
    incremental_revenue = (
        (revenue["treatment"] / treated.enrolled - revenue["holdout"] / held.enrolled)
        * treated.enrolled if held.enrolled and treated.enrolled else None)
    return {
        "share": share,
        "holdout": held.enrolled, "treatment": treated.enrolled,
        "holdout_converted": held.converted, "treatment_converted": treated.converted,
        "holdout_rate": held.rate, "treatment_rate": treated.rate,
        "incremental_conversions": incremental,
        "cost": cost,
        "cost_per_incremental": cost / incremental if incremental and incremental > 0 else None,
        "incremental_revenue": incremental_revenue,
        "roi": (incremental_revenue - cost) / cost
        if incremental_revenue is not None and cost > 0 else None,
        "uplift": uplift.as_dict(),
    }
