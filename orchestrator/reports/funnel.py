"""The report of one journey: per-arm recall rates and uplift, the per-step funnel, cost,
incremental revenue and ROI, and the WeCom staff senders.

Every number is a SQL aggregate over ``enrollments``, ``conversions``, ``touches`` and
``send_batches`` (a handful of grouped queries; no Python loop over touches). The
definitions are in ``docs/reports.md``; the touch and arm counts can be recomputed from
``recall export touches|enrollments``.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, distinct, func, not_, or_, select

from orchestrator.audience.config import AudienceConfig
from orchestrator.clock import as_utc, utcnow
from orchestrator.journeys.model import Journey, Policy
from orchestrator.reports.retention import by_arm as retention_by_arm
from orchestrator.reports.retention import retention
from orchestrator.reports.rungs import rungs
from orchestrator.reports.stats import ArmCount, compare, wilson_interval
from orchestrator.reports.variants import variants
from orchestrator.store.clock import StoredClock
from orchestrator.store.tables import CONVERSIONS, ENROLLMENTS, TOUCHES
from orchestrator.store.tables import SEND_BATCHES as BATCHES

ARMS = ("control", "treatment")
SENT = ("sent", "delivered")
WECOM = "wecom_group_invite"
# A mass-sent article's result event carries counts only: no per-touch delivery.
AGGREGATE_DELIVERY = "wechat_article"
DEFAULT_SENDER = "(default sender)"  # a task created without a named staff member
NO_REASON = "unspecified"  # a suppressed touch whose reason was not recorded

Report = dict[str, Any]


def journey_report(engine: Engine, journey: Journey, policy: Policy, *,
                   now: datetime | None = None,
                   activity_events: Sequence[str] | None = None) -> Report:
    """The report of ``journey`` (all its versions) as of business time ``now`` (default:
    the store's clock); every key is defined in ``docs/reports.md``. ``activity_events``
    (default: the audience defaults) are the events that count a user as retained."""
    now = as_utc(now) if now is not None else StoredClock(engine).now()
    active = activity_events or AudienceConfig().activity_events
    with engine.connect() as conn:
        counts = _arm_counts(conn, journey.id)
        revenue_by_arm = _revenue_by_arm(conn, journey.id)
        steps = _steps(conn, journey)
        senders = _wecom_senders(conn, journey.id)
        ab = variants(conn, journey)
        windows = retention(conn, journey.id, journey.retention, active, now)
        first_entry = conn.execute(select(func.min(ENROLLMENTS.c.entered_at))
                                   .where(ENROLLMENTS.c.journey_id == journey.id)).scalar()
    control, treatment = counts["control"], counts["treatment"]
    cost = sum(step["cost"] for step in steps)
    revenue = _incremental_revenue(control, treatment, revenue_by_arm)
    retained = retention_by_arm(windows)
    uplift = compare(control, treatment).as_dict()
    return {
        "journey_id": journey.id,
        "journey_name": journey.name,
        "arms": {arm: _arm(counts[arm], revenue_by_arm[arm]) | {"retention": retained[arm]}
                 for arm in ARMS},
        "uplift": uplift,
        "retention": windows,
        "steps": steps,
        "variants": ab,
        "cost": cost,
        "revenue": revenue,
        "currency": policy.currency,
        "roi": (revenue - cost) / cost if revenue is not None and cost > 0 else None,
        "money_warning": money_warning(uplift, revenue, control, treatment),
        "sms_price_per_segment": policy.sms.price_per_segment,
        "wecom_senders": senders,
        "period": {"from": _iso(first_entry), "to": _iso(now)},
        "generated_at": _iso(utcnow()),
    }


def money_warning(uplift: dict[str, Any], revenue: float | None, control: ArmCount,
                  treatment: ArmCount) -> str | None:
    """The recall uplift's small-sample warning, said of the money: the incremental revenue
    and ROI are the same comparison of the arms, in currency, and no surer than it."""
    if revenue is None or not uplift.get("warning"):
        return None
    return (f"too few users to judge: the incremental revenue and ROI compare the same arms "
            f"as the recall uplift (control {control.converted:,}/{control.enrolled:,}, "
            f"treatment {treatment.converted:,}/{treatment.enrolled:,}); read them as "
            "unknown, neither a loss nor a gain")


def _arm(count: ArmCount, revenue: float) -> dict[str, Any]:
    ci95 = wilson_interval(count)
    return {"enrolled": count.enrolled, "converted": count.converted, "rate": count.rate,
            "ci95": list(ci95) if ci95 is not None else None, "revenue": revenue}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat().replace("+00:00", "Z")


def _arm_counts(conn: Connection, journey_id: str) -> dict[str, ArmCount]:
    """Users per arm, each counted once: the arm of their first enrollment, converted when
    any of their enrollments has a conversion row (intention-to-treat)."""
    ranked = select(
        ENROLLMENTS.c.user_id,
        ENROLLMENTS.c.arm,
        func.row_number().over(partition_by=ENROLLMENTS.c.user_id,
                               order_by=(ENROLLMENTS.c.entered_at, ENROLLMENTS.c.id)).label("rn"),
    ).where(ENROLLMENTS.c.journey_id == journey_id).subquery()
    converters = select(CONVERSIONS.c.user_id).where(CONVERSIONS.c.journey_id == journey_id)
    rows = conn.execute(
        select(ranked.c.arm, func.count(),
               func.sum(case((ranked.c.user_id.in_(converters), 1), else_=0)))
        .where(ranked.c.rn == 1).group_by(ranked.c.arm)
    ).all()
    found = {arm: ArmCount(int(n), int(converted or 0)) for arm, n, converted in rows}
    return {arm: found.get(arm, ArmCount(0, 0)) for arm in ARMS}


def _revenue_by_arm(conn: Connection, journey_id: str) -> dict[str, float]:
    rows = conn.execute(
        select(CONVERSIONS.c.arm, func.coalesce(func.sum(CONVERSIONS.c.value), 0.0))
        .where(CONVERSIONS.c.journey_id == journey_id).group_by(CONVERSIONS.c.arm)
    ).all()
    found = {arm: float(total) for arm, total in rows}
    return {arm: found.get(arm, 0.0) for arm in ARMS}


def _incremental_revenue(control: ArmCount, treatment: ArmCount,
                         revenue_by_arm: dict[str, float]) -> float | None:
    """``(revenue per enrollment, treatment − control) × n_treatment``; ``None`` without a
    control group (no counterfactual) or without treatment."""
    if control.enrolled == 0 or treatment.enrolled == 0:
        return None
    per_treated = revenue_by_arm["treatment"] / treatment.enrolled
    per_control = revenue_by_arm["control"] / control.enrolled
    return (per_treated - per_control) * treatment.enrolled


def reached_provider(t: Any) -> Any:
    """Sent: the provider accepted it (``sent_at`` set), whatever happened after — delivered,
    or refused by the carrier later. A WeCom task nobody confirmed never went out."""
    failed_later = and_(t.status == "failed", t.sent_at.is_not(None),
                        or_(t.reason.is_(None), t.reason != "unconfirmed"))
    return or_(t.status.in_(SENT), failed_later)


def _live_touches(journey_id: str) -> Any:
    # Test sends (recall send-test, journey test_recipients) are never counted.
    return and_(TOUCHES.c.journey_id == journey_id, TOUCHES.c.test.is_(False))


def _live_batches(journey_id: str) -> Any:
    """The journey's batches but those of test sends (which hold test touches only)."""
    tests = select(TOUCHES.c.batch_id).where(
        TOUCHES.c.journey_id == journey_id, TOUCHES.c.test.is_(True),
        TOUCHES.c.batch_id.is_not(None))
    return and_(BATCHES.c.journey_id == journey_id, BATCHES.c.id.not_in(tests))


def _steps(conn: Connection, journey: Journey) -> list[dict[str, Any]]:
    """One row per step and channel a touch went out on (a fallback adds a row)."""
    t = TOUCHES.c
    counted = conn.execute(
        select(
            t.step_id, t.channel,
            func.count(distinct(case((t.arm == "treatment", t.enrollment_id)))),
            _count_if(reached_provider(t)),
            _count_if(or_(t.delivered_at.is_not(None), t.status == "delivered")),
            _count_if(or_(t.clicked_at.is_not(None), t.joined_at.is_not(None))),
            _count_if(t.converted_at.is_not(None)),
            func.coalesce(func.sum(t.cost), 0.0),
        ).where(_live_touches(journey.id)).group_by(t.step_id, t.channel)
    ).all()
    suppressed: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for step_id, channel, reason, n in conn.execute(
        select(t.step_id, t.channel, t.reason, func.count())
        .where(_live_touches(journey.id), t.status == "suppressed")
        .group_by(t.step_id, t.channel, t.reason)
    ).all():
        suppressed[(step_id, channel)][reason or NO_REASON] += int(n)
    rows = {
        (step_id, channel): {
            "step_id": step_id, "channel": channel, "eligible": int(eligible),
            "sent": int(sent), "delivered": int(delivered), "clicked": int(clicked),
            "converted": int(converted), "suppressed": dict(sorted(
                suppressed[(step_id, channel)].items())),
            "cost": float(cost),
        }
        for step_id, channel, eligible, sent, delivered, clicked, converted, cost in counted
    }
    reported = _mass_send_reports(conn, journey.id)
    by_step = rungs(conn, journey)
    steps = [rows.get(key) or _empty_step(*key) for key in _step_order(journey, rows)]
    for step in steps:
        if step["channel"] == AGGREGATE_DELIVERY:
            _aggregate_only(step, reported.get((step["step_id"], step["channel"])))
        # On the step's first row (its planned channel): the rung covers all its channels.
        step["rung"] = by_step.pop(step["step_id"], None)
    return steps


def _mass_send_reports(conn: Connection, journey_id: str) -> dict[tuple[str, str], Counter[str]]:
    """Per step and channel, WeChat's job reports (``MASSSENDJOBFINISH``) of the article
    batches it accepted, added up: ``batches``, ``reported`` and the reported counts."""
    b = BATCHES.c
    found: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for step_id, channel, result in conn.execute(
        select(b.step_id, b.channel, b.result)
        .where(_live_batches(journey_id), b.channel == AGGREGATE_DELIVERY, b.state == "sent")
    ).all():
        totals = found[(step_id, channel)]
        totals["batches"] += 1
        if (result or {}).get("sent_count") is not None:
            totals["reported"] += 1
            for key in ("total_count", "filter_count", "sent_count", "error_count"):
                totals[key] += int(result.get(key) or 0)
    return found


def _aggregate_only(step: dict[str, Any], reported: Counter[str] | None) -> None:
    """A mass-sent article has no per-touch delivery: ``delivered`` is ``None`` and the
    step carries WeChat's own counts instead (``delivered_reported``) and says so."""
    step["delivered"] = None
    totals = reported or Counter()
    counts = {key: int(totals[key]) for key in (
        "batches", "reported", "total_count", "filter_count", "sent_count", "error_count")}
    # WeChat's FilterCount is what is left *after* its filter (quota, refusals): the count
    # it went on to send, SentCount + ErrorCount. Filtered out is TotalCount − FilterCount.
    counts["filtered_out"] = counts["total_count"] - counts["filter_count"]
    step["delivered_reported"] = counts
    note = "WeChat reports a mass-sent article's delivery in aggregate only, not per touch"
    if totals["reported"]:
        note += (f": of {counts['total_count']:,} listed, {counts['filtered_out']:,} filtered "
                 f"out by WeChat, {counts['filter_count']:,} sent to: "
                 f"{counts['sent_count']:,} delivered, {counts['error_count']:,} failed "
                 f"(from {counts['reported']:,} of {counts['batches']:,} mass sends' reports)")
    elif totals["batches"]:
        note += f": none of its {totals['batches']:,} mass sends has reported yet"
    step["note"] = note


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _step_order(journey: Journey, rows: dict[tuple[str, str], Any]) -> list[tuple[str, str]]:
    """The journey's send steps in order (planned channel first, then any fallback), then
    steps only older versions had, by id."""
    order: list[tuple[str, str]] = []
    for step in journey.send_steps():
        channels = sorted(c for s, c in rows if s == step.id and c != step.channel)
        order += [(step.id, step.channel), *((step.id, c) for c in channels)]
    return order + sorted(key for key in rows if key not in order)


def _empty_step(step_id: str, channel: str) -> dict[str, Any]:
    return {"step_id": step_id, "channel": channel, "eligible": 0, "sent": 0, "delivered": 0,
            "clicked": 0, "converted": 0, "suppressed": {}, "cost": 0.0}


def _wecom_senders(conn: Connection, journey_id: str) -> list[dict[str, Any]]:
    """Per staff sender: WeCom tasks created (accepted by WeCom), confirmed, timed out
    (a touch failed as ``unconfirmed``), still pending, and the median confirmation delay."""
    b = BATCHES.c
    timed_out = b.id.in_(
        select(TOUCHES.c.batch_id).where(TOUCHES.c.journey_id == journey_id,
                                         TOUCHES.c.reason == "unconfirmed",
                                         TOUCHES.c.batch_id.is_not(None)))
    confirmed = and_(b.confirmed_at.is_not(None), not_(timed_out))
    sender = func.coalesce(b.sender, DEFAULT_SENDER)
    tasks = and_(_live_batches(journey_id), b.channel == WECOM, b.state == "sent")
    counted = conn.execute(
        select(sender, func.count(), _count_if(confirmed), _count_if(timed_out))
        .where(tasks).group_by(sender)
    ).all()
    # One row per confirmed task (not per touch): the median is not portable SQL.
    delays: dict[str, list[float]] = defaultdict(list)
    for name, created_at, confirmed_at in conn.execute(
        select(sender, b.created_at, b.confirmed_at)
        .where(tasks, confirmed, b.created_at.is_not(None))
    ).all():
        delays[name].append((confirmed_at - created_at).total_seconds())
    return [
        {"sender": name, "created": int(created), "confirmed": int(ok),
         "timed_out": int(late), "pending": int(created) - int(ok) - int(late),
         "median_confirmation_s": _median(delays[name])}
        # Sorted here: collations order "(default sender)" differently per database.
        for name, created, ok, late in sorted(counted, key=lambda row: str(row[0]))
    ]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
