"""Retention by arm: the share of enrolled users active again in each window after entry.

Intention-to-treat, each user once: a user counts in the arm of their first enrollment in
the journey, from that enrollment's ``entered_at``. The windows follow each other: with
``retention: [7d, 30d]`` the first is days 1–7 after entry, ``(entered, entered + 7d]``,
the second days 8–30, ``(entered + 7d, entered + 30d]``. A user is *retained* in a window
when they have an activity event (the audience's ``activity_events``) inside it. Only users
whose window has fully passed at the report's ``now`` count (the window's *eligible*
users): a window still open says nothing yet, in either arm. Each window says why when
some or all of its users are not counted yet (``pending``, ``note``).

One grouped query per report (all windows at once), no Python loop over users or events.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, select

from orchestrator.clock import as_utc
from orchestrator.journeys.durations import format_duration
from orchestrator.reports.stats import ArmCount, compare, wilson_interval
from orchestrator.store.tables import ENROLLMENTS, EVENTS

ARMS = ("control", "treatment")
DAY = timedelta(days=1)


def retention(conn: Connection, journey_id: str, windows: Sequence[timedelta],
              activity_events: Sequence[str], now: datetime) -> list[dict[str, Any]]:
    """One entry per window: its label and days, each arm's eligible and retained users
    with the rate and its Wilson interval, and the uplift (as for the recall rate)."""
    if not windows:
        return []
    bounds = list(zip([timedelta(0), *windows[:-1]], windows, strict=True))
    counts, users, first_entry = _counts(conn, journey_id, bounds, activity_events, now)
    report = []
    for i, (start, end) in enumerate(bounds):
        arms = {arm: ArmCount(*counts.get((arm, i), (0, 0))) for arm in ARMS}
        window = {
            "window": format_duration(end), "first_day": start // DAY + 1,
            "last_day": end // DAY,
            **{arm: _arm(count) for arm, count in arms.items()},
            "uplift": compare(arms["control"], arms["treatment"]).as_dict(),
        }
        eligible = sum(count.enrolled for count in arms.values())
        window["pending"] = users - eligible
        window["note"] = _note(window, eligible, first_entry, end, now)
        report.append(window)
    return report


def _note(window: dict[str, Any], eligible: int, first_entry: datetime | None,
          end: timedelta, now: datetime) -> str | None:
    """Why a window's rates are missing or partial: its users' windows are still open."""
    days = f"days {window['first_day']}–{window['last_day']} after entry"
    if eligible == 0 and first_entry is not None:
        closes = as_utc(first_entry) + end
        return (f"not observable yet: the window ({days}) ends after the data, which ends "
                f"{as_utc(now):%Y-%m-%d %H:%M} UTC; the earliest closes "
                f"{closes:%Y-%m-%d %H:%M} UTC")
    if window["pending"] > 0 and eligible > 0:
        return (f"{eligible:,} users counted; {window['pending']:,} who entered later are not "
                f"counted yet (their window, {days}, ends after the data)")
    return None


def by_arm(windows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{arm: {"7d": rate, …}}``: the rates in the arms' own entries of the report."""
    return {arm: {w["window"]: w[arm]["rate"] for w in windows} for arm in ARMS}


def _arm(count: ArmCount) -> dict[str, Any]:
    ci95 = wilson_interval(count)
    return {"eligible": count.enrolled, "retained": count.converted, "rate": count.rate,
            "ci95": list(ci95) if ci95 is not None else None}


Bounds = list[tuple[timedelta, timedelta]]


def _counts(conn: Connection, journey_id: str, bounds: Bounds, activity_events: Sequence[str],
            now: datetime) -> tuple[dict[tuple[str, int], tuple[int, int]], int, datetime | None]:
    """``{(arm, window index): (eligible, retained)}``, the users counted once each (both
    arms) and the first entry."""
    e = ENROLLMENTS.c
    ranked = select(
        e.user_id, e.arm, e.entered_at,
        func.row_number().over(partition_by=e.user_id, order_by=(e.entered_at, e.id)).label("rn"),
    ).where(e.journey_id == journey_id).subquery()
    first = select(ranked.c.user_id, ranked.c.arm, ranked.c.entered_at).where(
        ranked.c.rn == 1).subquery()
    after_ms = _millis_between(conn, first.c.entered_at, EVENTS.c.ts)
    # Per user: 1 when they had an activity event in window i (0 when none at all).
    per_user = select(
        first.c.user_id, first.c.arm, first.c.entered_at,
        *(func.max(case((and_(after_ms > _ms(start), after_ms <= _ms(end)), 1), else_=0))
          .label(f"in_{i}") for i, (start, end) in enumerate(bounds)),
    ).select_from(first.outerjoin(EVENTS, and_(
        EVENTS.c.user_id == first.c.user_id,
        EVENTS.c.name.in_(list(activity_events)),
        EVENTS.c.ts > first.c.entered_at,
        EVENTS.c.ts <= now,
    ))).group_by(first.c.user_id, first.c.arm, first.c.entered_at).subquery()
    columns = []
    for i, (_, end) in enumerate(bounds):
        closed = per_user.c.entered_at <= now - end  # the whole window lies before now
        columns += [func.sum(case((closed, 1), else_=0)),
                    func.sum(case((closed, per_user.c[f"in_{i}"]), else_=0))]
    found: dict[tuple[str, int], tuple[int, int]] = {}
    users, first_entry = 0, None
    for arm, n, entered, *sums in conn.execute(
            select(per_user.c.arm, func.count(), func.min(per_user.c.entered_at), *columns)
            .group_by(per_user.c.arm)):
        users += int(n)
        if entered is not None:
            entered = as_utc(entered)
            first_entry = entered if first_entry is None else min(first_entry, entered)
        for i in range(len(bounds)):
            found[(arm, i)] = (int(sums[2 * i] or 0), int(sums[2 * i + 1] or 0))
    return found, users, first_entry


def _ms(span: timedelta) -> Any:
    return literal(int(span.total_seconds() * 1000))


def _millis_between(conn: Connection, earlier: Any, later: Any) -> Any:
    """Whole milliseconds from ``earlier`` to ``later`` (portable: SQLite and PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        return func.round((func.julianday(later) - func.julianday(earlier)) * 86_400_000.0)
    return func.round(func.extract("epoch", later - earlier) * 1000)
