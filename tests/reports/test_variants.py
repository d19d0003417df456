"""A/B variants in the report: each variant's users and conversions at its step, against
the step's first variant, exact on hand-built rows, recomputed from the exports, and shown
in every format."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from orchestrator.journeys.model import Journey, SendStep, Variant
from orchestrator.reports.export import rows
from orchestrator.reports.funnel import journey_report
from orchestrator.reports.render import render
from orchestrator.reports.stats import ArmCount, compare, wilson_interval
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

AB = "ab-demo"
NOW = T0 + timedelta(days=20)


def _ab_journey(dataset: Dataset) -> Journey:
    """The report journey under another id, its sms step an A/B of the send time."""
    ab = {"due": Variant(weight=50, template="demo/sms.j2"),
          "best": Variant(weight=50, template="demo/sms.j2", at="best_hour")}
    steps = [s.model_copy(update={"template": None, "variants": ab})
             if isinstance(s, SendStep) and s.id == "sms" else s for s in dataset.journey.steps]
    return dataset.journey.model_copy(update={"id": AB, "steps": steps})


def _at_sms(enrollment: int, user: str, variant: str, **fields: Any) -> dict[str, Any]:
    return _touch(enrollment, user, "sms", "sms", "sent", journey_id=AB, variant=variant,
                  sent_at=T0) | fields


def _seed(dataset: Dataset) -> None:
    """d1-d6 get "due" (d1 converts, d6's touch was capped: still in its variant); b1-b6 get
    "best" (b1-b4 convert, b2 clicked; b5's touch was still waiting when the run ended);
    b1 enters again (counted once); h1 is rung-held-out of the step and t1 is a test send
    (both left out); an article touch carries no variant."""
    with dataset.engine.begin() as conn:
        conn.execute(insert(ENROLLMENTS), [
            *(_enrollment(400 + i, f"d{i}", "treatment", T0, journey_id=AB) for i in range(1, 7)),
            *(_enrollment(500 + i, f"b{i}", "treatment", T0, journey_id=AB) for i in range(1, 7)),
            _enrollment(600, "b1", "treatment", T0 + timedelta(days=10), journey_id=AB),
            _enrollment(700, "h1", "treatment", T0, journey_id=AB),
        ])
        conn.execute(insert(TOUCHES), [
            *(_at_sms(400 + i, f"d{i}", "due") for i in range(1, 6)),
            _at_sms(406, "d6", "due", status="suppressed", reason="cap:sms", sent_at=None),
            *(_at_sms(500 + i, f"b{i}", "best") for i in (1, 3, 4, 6)),
            _at_sms(502, "b2", "best", clicked_at=T0 + timedelta(hours=1)),
            _at_sms(505, "b5", "best", status="scheduled", sent_at=None),
            _at_sms(600, "b1", "best"),
            _at_sms(700, "h1", "best", status="suppressed", reason="rung_holdout",
                    rung_arm="holdout", sent_at=None),
            _at_sms(399, "t1", "best", test=True),
            _touch(401, "d1", "article", "wechat_article", "sent", journey_id=AB),
        ])
        conn.execute(insert(CONVERSIONS), [
            _conversion(401, "d1", "treatment", 20.0, journey_id=AB),
            *(_conversion(500 + i, f"b{i}", "treatment", 30.0, journey_id=AB)
              for i in range(1, 5)),
        ])
        conn.execute(ENROLLMENTS.update().where(ENROLLMENTS.c.id.in_([401, 501, 502, 503, 504]))
                     .values(converted_at=T0 + timedelta(days=2)))


def test_each_variant_against_the_first(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _ab_journey(dataset), dataset.policy, now=NOW)
    due, best = ArmCount(6, 1), ArmCount(6, 4)
    assert report["variants"] == [
        {"step_id": "sms", "variant": "due", "at": None, "users": 6, "sent": 5, "clicked": 0,
         "converted": 1, "rate": pytest.approx(1 / 6),
         "ci95": pytest.approx(list(wilson_interval(due) or ())), "reference": "due",
         "uplift": None},
        {"step_id": "sms", "variant": "best", "at": "best_hour", "users": 6, "sent": 5,
         "clicked": 1, "converted": 4, "rate": pytest.approx(4 / 6),
         "ci95": pytest.approx(list(wilson_interval(best) or ())), "reference": "due",
         "uplift": compare(due, best, ("due", "best")).as_dict()},
    ]
    assert report["variants"][1]["uplift"]["warning"].startswith(
        "too few users to judge (due 1/6, best 4/6)")


def test_variant_figures_are_recomputable_from_the_exports(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _ab_journey(dataset), dataset.policy, now=NOW)
    touches = list(rows(dataset.engine, "touches", AB))
    enrollments = list(rows(dataset.engine, "enrollments", AB))
    converted = {e["enrollment_id"] for e in enrollments if e["converted_at"]}
    enrolled = {e["enrollment_id"] for e in enrollments}  # a test send has no enrollment
    users: dict[str, set[str]] = defaultdict(set)
    won: dict[str, set[str]] = defaultdict(set)
    for t in touches:
        if (t["variant"] and t["arm"] == "treatment" and t["rung_arm"] != "holdout"
                and t["enrollment_id"] in enrolled):
            users[t["variant"]].add(t["user_id"])
            if t["enrollment_id"] in converted:
                won[t["variant"]].add(t["user_id"])
    assert {v["variant"]: (v["users"], v["converted"]) for v in report["variants"]} == {
        name: (len(users[name]), len(won[name])) for name in users}


def test_every_format_shows_the_variants(dataset: Dataset) -> None:
    _seed(dataset)
    report = journey_report(dataset.engine, _ab_journey(dataset), dataset.policy, now=NOW)
    table = render(report, "table")
    assert "A/B variants" in table
    assert "best (best_hour)" in table and "due (when due)" in table and "reference" in table
    assert "1/6 = 16.67%" in table and "4/6 = 66.67%" in table
    assert "+50.00 pp" in table  # 4/6 − 1/6
    assert "variant sms/best: warning: too few users to judge" in table
    page = render(report, "html")
    assert "A/B variants" in page and "<td>best_hour</td>" in page and "+50.00 pp" in page
    lines = render(report, "csv").splitlines()
    header = lines[0].split(",")
    kinds = [line.split(",")[0] for line in lines[1:]]
    assert kinds.count("variant") == 2 and kinds.count("variant_uplift") == 1
    best = dict(zip(header, next(line for line in lines if line.startswith("variant,sms,")
                                 and ",best," in line).split(","), strict=True))
    assert (best["enrolled"], best["converted"], best["at"]) == ("6", "4", "best_hour")


def test_an_export_closes_its_variant_stream_when_touches_outrun_the_enrollments(
    dataset: Dataset,
) -> None:
    """The variants merged into the enrollment export come from a second stream of touches;
    a touch of a later enrollment than the last one exported (here one whose enrollment is
    not in the export at all) leaves that stream unread at the end. It is closed with the
    export, not left to the garbage collector with its cursor open."""
    with dataset.engine.begin() as conn:
        conn.execute(insert(ENROLLMENTS), [_enrollment(800, "e1", "treatment", T0,
                                                       journey_id=AB)])
        conn.execute(insert(TOUCHES), [_at_sms(800, "e1", "due"), _at_sms(900, "e9", "due")])
    exported = list(rows(dataset.engine, "enrollments", AB))
    assert [r["variant"] for r in exported] == ["sms=due"]
    assert dataset.engine.pool.checkedout() == 0
