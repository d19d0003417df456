"""Rung holdouts in the report: each step's own increment against the treatment users
its holdout skipped, exact on hand-built rows and recomputed from the exports."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from orchestrator.journeys.model import Journey
from orchestrator.reports.export import rows
from orchestrator.reports.funnel import journey_report
from orchestrator.reports.render import render
from orchestrator.reports.stats import ArmCount, compare
from tests.reports.conftest import (
    CONVERSIONS,
    ENROLLMENTS,
    T0,
    TOUCHES,
    Dataset,
    _conversion,
    _enrollment,
    _touch,
)

RUNGS = "rung-demo"
NOW = T0 + timedelta(days=20)
PRICE = 0.045


def _rung_journey(dataset: Dataset) -> Journey:
    """The report journey under another id, its sms step with a 30% rung holdout."""
    steps = [s.model_copy(update={"holdout": 0.3}) if getattr(s, "id", None) == "sms" else s
             for s in dataset.journey.steps]
    return dataset.journey.model_copy(update={"id": RUNGS, "steps": steps})


def _at_sms(enrollment: int, user: str, rung_arm: str | None, **fields: Any) -> dict[str, Any]:
    held = rung_arm == "holdout"
    row = _touch(enrollment, user, "sms", "sms", "suppressed" if held else "sent",
                 journey_id=RUNGS, rung_arm=rung_arm, reason="rung_holdout" if held else None,
                 cost=0.0 if held else PRICE, sent_at=None if held else T0)
    return row | fields


def _seed(dataset: Dataset) -> None:
    """r1-r3 held out of the sms step (r1 converts, 20); r4-r10 reach it (r4, r5, r6, r7
    convert: 30, 30, no value, 10; r10 is capped there but stays in the rung's treatment);
    r4 enters again and reaches it again (counted once); r11's touch predates the holdout
    (no rung arm: left out); the control arm never reaches a step."""
    with dataset.engine.begin() as conn:
        conn.execute(insert(ENROLLMENTS), [
            *(_enrollment(100 + i, f"r{i}", "treatment", T0, journey_id=RUNGS)
              for i in range(1, 12)),
            _enrollment(200, "r4", "treatment", T0 + timedelta(days=10), journey_id=RUNGS),
            _enrollment(300, "k1", "control", T0, journey_id=RUNGS),
        ])
        conn.execute(insert(TOUCHES), [
            *(_at_sms(100 + i, f"r{i}", "holdout") for i in (1, 2, 3)),
            *(_at_sms(100 + i, f"r{i}", "treatment") for i in range(4, 10)),
            _at_sms(110, "r10", "treatment", status="suppressed", reason="cap:sms", cost=0.0,
                    sent_at=None),
            _at_sms(200, "r4", "treatment"),
            _at_sms(111, "r11", None),
            _touch(104, "r4", "article", "wechat_article", "sent", journey_id=RUNGS),
        ])
        conn.execute(insert(CONVERSIONS), [
            _conversion(101, "r1", "treatment", 20.0, journey_id=RUNGS),
            *(_conversion(100 + i, f"r{i}", "treatment", value, journey_id=RUNGS)
              for i, value in ((4, 30.0), (5, 30.0), (6, None), (7, 10.0))),
        ])
    with dataset.engine.begin() as conn:  # the enrollments' own record of converting
        conn.execute(ENROLLMENTS.update().where(ENROLLMENTS.c.id.in_([101, 104, 105, 106, 107]))
                     .values(converted_at=T0 + timedelta(days=2)))


def test_each_step_shows_its_own_increment(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _rung_journey(dataset), dataset.policy, now=NOW)
    by_row = {(s["step_id"], s["channel"]): s for s in report["steps"]}
    assert by_row[("article", "wechat_article")]["rung"] is None  # no rung holdout
    rung = by_row[("sms", "sms")]["rung"]
    incremental = (4 / 7 - 1 / 3) * 7  # 1.667 more conversions than without the SMS
    revenue = (70 / 7 - 20 / 3) * 7  # 23.33 more revenue
    cost = 7 * PRICE  # r4 (twice), r5-r9; r10 was capped, the holdout costs nothing
    assert rung == {
        "share": 0.3, "holdout": 3, "treatment": 7,
        "holdout_converted": 1, "treatment_converted": 4,
        "holdout_rate": pytest.approx(1 / 3), "treatment_rate": pytest.approx(4 / 7),
        "incremental_conversions": pytest.approx(incremental),
        "cost": pytest.approx(cost),
        "cost_per_incremental": pytest.approx(cost / incremental),
        "incremental_revenue": pytest.approx(revenue),
        "roi": pytest.approx((revenue - cost) / cost),
        "uplift": compare(ArmCount(3, 1), ArmCount(7, 4), ("held out", "reached")).as_dict(),
    }
    assert rung["uplift"]["warning"].startswith(  # 3 and 7 users: no verdict
        "too few users to judge (held out 1/3, reached 4/7)")
    assert by_row[("sms", "sms")]["suppressed"] == {"cap:sms": 1, "rung_holdout": 3}


def test_rung_figures_are_recomputable_from_the_exports(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _rung_journey(dataset), dataset.policy, now=NOW)
    touches = list(rows(dataset.engine, "touches", RUNGS))
    converted = {e["enrollment_id"] for e in rows(dataset.engine, "enrollments", RUNGS)
                 if e["converted_at"] is not None}
    users: dict[str, set[str]] = defaultdict(set)
    converters: dict[str, set[str]] = defaultdict(set)
    cost = 0.0
    for t in touches:
        if t["step_id"] != "sms" or t["arm"] != "treatment" or not t["rung_arm"]:
            continue
        users[t["rung_arm"]].add(t["user_id"])
        if t["enrollment_id"] in converted:
            converters[t["rung_arm"]].add(t["user_id"])
        if t["rung_arm"] == "treatment":
            cost += t["cost"]
    rates = {arm: len(converters[arm]) / len(users[arm]) for arm in users}
    incremental = (rates["treatment"] - rates["holdout"]) * len(users["treatment"])
    rung = next(s["rung"] for s in report["steps"] if s["step_id"] == "sms")
    assert (rung["holdout"], rung["treatment"]) == (len(users["holdout"]),
                                                   len(users["treatment"]))
    assert (rung["holdout_converted"], rung["treatment_converted"]) == (
        len(converters["holdout"]), len(converters["treatment"]))
    assert rung["incremental_conversions"] == pytest.approx(incremental)
    assert rung["cost"] == pytest.approx(cost)
    assert rung["cost_per_incremental"] == pytest.approx(cost / incremental)
    assert {t["rung_arm"] for t in touches if t["step_id"] == "sms"} == {
        "holdout", "treatment", None}
    assert {t["rung_arm"] for t in touches if t["step_id"] == "article"} == {None}


def test_a_step_with_a_holdout_nobody_reached_yet(dataset: Dataset) -> None:
    report = journey_report(dataset.engine, _rung_journey(dataset), dataset.policy, now=NOW)
    rung = next(s["rung"] for s in report["steps"] if s["step_id"] == "sms")
    assert (rung["share"], rung["holdout"], rung["treatment"]) == (0.3, 0, 0)
    assert (rung["incremental_conversions"], rung["cost_per_incremental"], rung["roi"]) == (
        None, None, None)


def test_every_format_shows_the_rungs(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _rung_journey(dataset), dataset.policy, now=NOW)
    table = render(report, "table")
    assert "each step's own increment (rung holdouts)" in table
    assert "1/3 = 33.33%" in table and "4/7 = 57.14%" in table and "+1.67" in table
    assert "0.19 CNY" in table  # 0.315 CNY for 1.667 more conversions
    page = render(report, "html")
    assert "Each channel's own increment (rung holdouts)" in page
    assert "<td>1.7</td>" in page
    csv_text = render(report, "csv")
    assert "rung_holdout" in csv_text.splitlines()[0]
