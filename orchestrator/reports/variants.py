"""A/B variants of a send step compared: each variant's conversion rate against the first.

A user's variant at a step is a hash of journey, step and user (stable across entries), so
the variants are randomised arms of the treatment users who reached the step. Per step and
variant (treatment touches, test sends and rung-holdout users left out, since they never
got the step):

* **users** — users (each once) who reached the step in that variant; **sent** and
  **clicked** — those of them with a touch the provider accepted / with a click or join;
* **converted** — those with a conversion of an enrollment that reached the step in that
  variant (intention-to-treat at the step: a user whose best-hour touch was still waiting
  when they ordered counts for their variant); **rate** with its Wilson interval;
* **uplift** — the variant against the step's *first* variant in the file (the reference,
  whose uplift is ``None``), with the same Newcombe interval, test and small-sample warning
  as the recall rate;
* **at** — when the variant goes (``best_hour``, or ``None``: when due), as the journey
  says now.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, and_, case, distinct, func, or_, select

from orchestrator.journeys.model import Journey
from orchestrator.reports.stats import ArmCount, compare, wilson_interval
from orchestrator.store.tables import CONVERSIONS, TOUCHES


def variants(conn: Connection, journey: Journey) -> list[dict[str, Any]]:
    """One row per step and variant, in journey order and each step's variant order."""
    t = TOUCHES.c
    got_it = and_(t.journey_id == journey.id, t.test.is_(False), t.arm == "treatment",
                  t.variant.is_not(None), or_(t.rung_arm.is_(None), t.rung_arm != "holdout"))
    converted = case((t.enrollment_id.in_(select(CONVERSIONS.c.enrollment_id)), t.user_id))
    sent = case((t.sent_at.is_not(None), t.user_id))
    clicked = case((or_(t.clicked_at.is_not(None), t.joined_at.is_not(None)), t.user_id))
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for step_id, variant, n, n_sent, n_clicked, n_converted in conn.execute(
        select(t.step_id, t.variant, func.count(distinct(t.user_id)),
               func.count(distinct(sent)), func.count(distinct(clicked)),
               func.count(distinct(converted)))
        .where(got_it).group_by(t.step_id, t.variant)
    ):
        counts[step_id][variant] = {"users": int(n), "sent": int(n_sent),
                                    "clicked": int(n_clicked), "converted": int(n_converted)}
    rows: list[dict[str, Any]] = []
    for step_id, names, at in _order(journey, counts):
        found = counts.get(step_id, {})
        reference: ArmCount | None = None
        for name in names:
            numbers = found.get(name, {"users": 0, "sent": 0, "clicked": 0, "converted": 0})
            arm = ArmCount(numbers["users"], numbers["converted"])
            ci95 = wilson_interval(arm)
            rows.append({
                "step_id": step_id, "variant": name, "at": at.get(name), **numbers,
                "rate": arm.rate, "ci95": list(ci95) if ci95 is not None else None,
                "reference": names[0],
                "uplift": None if reference is None
                else compare(reference, arm, (names[0], name)).as_dict(),
            })
            reference = reference or arm
    return rows


def _order(journey: Journey, counts: dict[str, dict[str, dict[str, int]]]
           ) -> list[tuple[str, list[str], dict[str, str | None]]]:
    """Steps with variants now, in order (their variants in file order, then any only
    older versions had), then steps only older versions had variants on, by id."""
    order = []
    for step in journey.send_steps():
        if step.variants or step.id in counts:
            names = list(step.variants or {})
            names += sorted(v for v in counts.get(step.id, {}) if v not in names)
            order.append((step.id, names, {n: step.at_for(n) for n in names}))
    known = {step_id for step_id, _, _ in order}
    order += [(s, sorted(counts[s]), {}) for s in sorted(counts) if s not in known]
    return order


__all__ = ["variants"]
