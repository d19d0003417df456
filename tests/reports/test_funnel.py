"""The report of a hand-built journey: exact numbers, and every touch and arm number
recomputed from the export rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from orchestrator.reports.export import rows
from orchestrator.reports.funnel import journey_report
from orchestrator.reports.stats import ArmCount, compare, wilson_interval
from tests.reports.conftest import BATCHES, JOURNEY_ID, T0, TOUCHES, Dataset, _batch, _touch

NOW = T0 + timedelta(days=20)


def _step(step_id: str, channel: str, eligible: int, sent: int, delivered: int, clicked: int,
          converted: int, suppressed: dict[str, int], cost: float) -> dict[str, Any]:
    return {"step_id": step_id, "channel": channel, "eligible": eligible, "sent": sent,
            "delivered": delivered, "clicked": clicked, "converted": converted,
            "suppressed": suppressed, "cost": pytest.approx(cost), "rung": None}


def _aggregate(step: dict[str, Any], **reported: int) -> dict[str, Any]:
    counts = {"batches": 0, "reported": 0, "total_count": 0, "filter_count": 0,
              "sent_count": 0, "error_count": 0, "filtered_out": 0} | reported
    return step | {"delivered": None, "delivered_reported": counts, "note":
                   "WeChat reports a mass-sent article's delivery in aggregate only, not per touch"}


def test_report_numbers_are_exact(dataset: Dataset) -> None:
    # A test send (test_recipients) is never counted.
    with dataset.engine.begin() as conn:
        conn.execute(insert(TOUCHES), [_touch(15, "t5", "sms", "sms", "delivered",
                                              test=True, cost=0.045)])
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=NOW)
    made = datetime.fromisoformat(report.pop("generated_at"))
    assert abs(made - datetime.now(UTC)) < timedelta(minutes=5)
    assert [w["window"] for w in report.pop("retention")] == ["7d", "30d"]  # test_retention
    expected_uplift = compare(ArmCount(4, 2), ArmCount(8, 5))
    assert expected_uplift.warning is not None  # 4 and 8 users: no verdict
    assert report == {
        "journey_id": JOURNEY_ID,
        "journey_name": "报告演示",
        "arms": {
            "control": {"enrolled": 4, "converted": 2, "rate": 0.5, "revenue": 30.0,
                        "ci95": pytest.approx(list(wilson_interval(ArmCount(4, 2)) or ())),
                        "retention": {"7d": 0.5, "30d": None}},  # days 8-30 not over yet
            "treatment": {"enrolled": 8, "converted": 5, "rate": 0.625, "revenue": 120.0,
                          "ci95": pytest.approx(list(wilson_interval(ArmCount(8, 5)) or ())),
                          "retention": {"7d": 0.375, "30d": None}},
        },
        "uplift": {
            "absolute": pytest.approx(0.125), "relative": pytest.approx(0.25),
            "ci95": pytest.approx(list(expected_uplift.ci95 or ())),
            "p_value": pytest.approx(expected_uplift.p_value),
            "significant": None, "warning": expected_uplift.warning,
        },
        "steps": [
            _aggregate(_step("article", "wechat_article", 9, 4, 2, 2, 1,
                             {"cap:wechat_article": 2, "no_consent": 1}, 0.0)),
            _step("invite", "wecom_group_invite", 5, 2, 1, 1, 0, {"unspecified": 1}, 0.0),
            _step("sms", "sms", 5, 3, 2, 1, 2, {"sms_opt_out": 1}, 0.225),
            _aggregate(_step("sms", "wechat_article", 1, 1, 0, 0, 0, {}, 0.0)),
        ],
        "variants": [],
        "cost": pytest.approx(0.225),
        # (120/8 − 30/4) × 8 = 60 incremental; ROI = (60 − 0.225) / 0.225
        "revenue": pytest.approx(60.0),
        "currency": "CNY",
        "roi": pytest.approx((60.0 - 0.225) / 0.225),
        # The money compares the same small arms: it carries the uplift's warning.
        "money_warning": ("too few users to judge: the incremental revenue and ROI compare "
                          "the same arms as the recall uplift (control 2/4, treatment 5/8); "
                          "read them as unknown, neither a loss nor a gain"),
        "sms_price_per_segment": 0.045,
        "period": {"from": "2026-03-02T02:00:00Z", "to": "2026-03-22T02:00:00Z"},
        "wecom_senders": [
            {"sender": "(default sender)", "created": 1, "confirmed": 0, "timed_out": 0,
             "pending": 1, "median_confirmation_s": None},
            {"sender": "alice", "created": 2, "confirmed": 2, "timed_out": 0, "pending": 0,
             "median_confirmation_s": 3600.0},
            {"sender": "bob", "created": 1, "confirmed": 0, "timed_out": 1, "pending": 0,
             "median_confirmation_s": None},
        ],
    }


def test_every_number_is_recomputable_from_the_exports(dataset: Dataset) -> None:
    report = journey_report(dataset.engine, dataset.journey, dataset.policy)
    touches = list(rows(dataset.engine, "touches", JOURNEY_ID))
    enrollments = list(rows(dataset.engine, "enrollments", JOURNEY_ID))

    by_step: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for touch in touches:
        by_step[(touch["step_id"], touch["channel"])].append(touch)
    assert {(s["step_id"], s["channel"]) for s in report["steps"]} == set(by_step)
    for step in report["steps"]:
        group = by_step[(step["step_id"], step["channel"])]
        assert step["eligible"] == len({t["enrollment_id"] for t in group
                                        if t["arm"] == "treatment"})
        assert step["sent"] == sum(t["status"] in ("sent", "delivered") for t in group)
        if step["channel"] == "wechat_article":  # aggregate-only: never counted per touch
            assert step["delivered"] is None
        else:
            assert step["delivered"] == sum(t["delivered_at"] is not None
                                            or t["status"] == "delivered" for t in group)
        assert step["converted"] == sum(t["converted_at"] is not None for t in group)
        assert step["suppressed"] == dict(Counter(
            t["reason"] or "unspecified" for t in group if t["status"] == "suppressed"))
        assert step["cost"] == pytest.approx(sum(t["cost"] for t in group))
    assert report["cost"] == pytest.approx(sum(t["cost"] for t in touches))

    first: dict[str, dict[str, Any]] = {}
    converted: set[str] = set()
    for e in sorted(enrollments, key=lambda e: (e["entered_at"], e["enrollment_id"])):
        first.setdefault(e["user_id"], e)
        if e["converted_at"] is not None:
            converted.add(e["user_id"])
    for arm in ("control", "treatment"):
        users = [u for u, e in first.items() if e["arm"] == arm]
        assert report["arms"][arm]["enrolled"] == len(users)
        assert report["arms"][arm]["converted"] == len(converted.intersection(users))


def test_a_journey_without_rows_reports_zeros_and_nones(dataset: Dataset) -> None:
    empty = dataset.journey.model_copy(update={"id": "never-ran"})
    report = journey_report(dataset.engine, empty, dataset.policy)
    nothing = {"7d": None, "30d": None}
    assert report["arms"] == {
        "control": {"enrolled": 0, "converted": 0, "rate": None, "revenue": 0.0, "ci95": None,
                    "retention": nothing},
        "treatment": {"enrolled": 0, "converted": 0, "rate": None, "revenue": 0.0,
                      "ci95": None, "retention": nothing},
    }
    assert report["uplift"] == {"absolute": None, "relative": None, "ci95": None,
                                "p_value": None, "significant": None, "warning": None}
    assert report["period"]["from"] is None
    assert [(s["step_id"], s["channel"], s["sent"]) for s in report["steps"]] == [
        ("article", "wechat_article", 0), ("invite", "wecom_group_invite", 0),
        ("sms", "sms", 0)]
    assert (report["cost"], report["revenue"], report["roi"]) == (0.0, None, None)
    assert report["wecom_senders"] == []


def test_a_carrier_refusal_after_sending_still_counts_as_sent(dataset: Dataset) -> None:
    """Sent means the provider accepted it; an unconfirmed WeCom task never went out."""
    later = dataset.journey.model_copy(update={"id": "late-failures"})
    touch = {**_touch(900, "late-user", "sms", "sms", "failed"), "journey_id": "late-failures"}
    with dataset.engine.begin() as conn:
        conn.execute(insert(TOUCHES), [
            {**touch, "reason": "provider:30003", "sent_at": T0},
            {**touch, "enrollment_id": 901, "step_id": "invite",
             "channel": "wecom_group_invite", "reason": "unconfirmed", "sent_at": T0},
            {**touch, "enrollment_id": 902, "reason": "retries_exhausted:20429"},
        ])
    steps = {s["step_id"]: s for s in journey_report(dataset.engine, later,
                                                     dataset.policy)["steps"]}
    assert (steps["sms"]["sent"], steps["invite"]["sent"]) == (1, 0)


def test_an_article_step_shows_wechats_own_delivery_counts(dataset: Dataset) -> None:
    """Mass sends report counts only: the step says so and adds up the job reports, instead
    of showing 0 delivered."""
    article = {**_batch("a1", None, "sent", T0, None), "channel": "wechat_article",
               "step_id": "article"}
    with dataset.engine.begin() as conn:
        conn.execute(insert(BATCHES), [
            {**article, "result": {"msg_data_id": 7, "status": "send success",
                                   "total_count": 4, "filter_count": 3, "sent_count": 2,
                                   "error_count": 1}},
            {**article, "id": "a2", "result": {"msg_data_id": 8}},  # not reported yet
            {**article, "id": "a3", "state": "failed",
             "result": {"sent_count": 50}},  # refused: not a send
        ])
    report = journey_report(dataset.engine, dataset.journey, dataset.policy, now=NOW)
    step = report["steps"][0]
    assert step["delivered"] is None
    # WeChat's FilterCount (3) is what is left after its filter: 1 of 4 was filtered out,
    # and FilterCount = SentCount + ErrorCount.
    assert step["delivered_reported"] == {"batches": 2, "reported": 1, "total_count": 4,
                                          "filter_count": 3, "sent_count": 2, "error_count": 1,
                                          "filtered_out": 1}
    assert step["note"] == (
        "WeChat reports a mass-sent article's delivery in aggregate only, not per touch: "
        "of 4 listed, 1 filtered out by WeChat, 3 sent to: 2 delivered, 1 failed "
        "(from 1 of 2 mass sends' reports)")
