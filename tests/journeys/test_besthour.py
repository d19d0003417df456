"""``at: best_hour``: the chosen time stays inside every bound, whatever the profile and zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.journeys.besthour import (
    HOURS_OF_WEEK,
    allowed_hours,
    best_time,
    candidates,
    hour_of_week,
    hour_scores,
    placement,
)
from orchestrator.journeys.durations import LocalWindow
from orchestrator.journeys.model import Policy

SMS = {"signature": "【校园外卖】", "opt_out_suffix": "拒收请回复R", "price_per_segment": 0.045}
# Zones with DST (whole-hour and half-hour jumps), and fixed half and quarter hours.
ZONES = ("Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe",
         "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "UTC")
NY = ZoneInfo("America/New_York")


def _policy(sms_hours: str | None = "08:00-21:00", **extra: object) -> Policy:
    hours = {"sms": sms_hours} if sms_hours else {}
    return Policy(sms=SMS, send_hours=hours, **extra)  # type: ignore[arg-type]


def _peak(*hours_of_week: int, weight: float = 10.0) -> list[float]:
    profile = [0.0] * HOURS_OF_WEEK
    for h in hours_of_week:
        profile[h] = weight
    return profile


windows = st.builds(
    lambda a, b: LocalWindow(time(a // 4, a % 4 * 15), time(b // 4, b % 4 * 15)),
    st.integers(0, 95), st.integers(0, 95),
).filter(lambda w: w.start != w.end)


@settings(max_examples=300, deadline=None)
@given(
    due=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31),
                     timezones=st.just(UTC)),
    zone=st.sampled_from(ZONES),
    profile=st.lists(st.integers(0, 30), min_size=HOURS_OF_WEEK, max_size=HOURS_OF_WEEK),
    send_hours=st.one_of(st.none(), windows),
    window=st.one_of(st.none(), windows),
)
def test_the_chosen_time_is_inside_every_bound_and_the_best_there_is(
    due: datetime, zone: str, profile: list[int], send_hours: LocalWindow | None,
    window: LocalWindow | None,
) -> None:
    tz = ZoneInfo(zone)
    policy = _policy(str(send_hours) if send_hours else None)
    allowed = allowed_hours(policy, "sms", window)
    chosen = best_time(due, tz, [float(p) for p in profile], allowed)

    assert due <= chosen <= due + timedelta(hours=24)
    options = [c for c in candidates(due, tz) if allowed(c.astimezone(tz))]
    if not options:
        assert chosen == due  # nothing allowed within a day: quiet hours defer it as before
        return
    local = chosen.astimezone(tz)
    assert allowed(local)
    assert (send_hours is None or send_hours.contains(local.time()))
    assert (window is None or window.contains(local.time()))
    assert chosen == due or (local.minute, local.second, local.microsecond) == (0, 0, 0)
    scores = hour_scores([float(p) for p in profile])
    best = max(scores[hour_of_week(c.astimezone(tz))] for c in options)
    assert scores[hour_of_week(local)] == best
    assert chosen == min(c for c in options if scores[hour_of_week(c.astimezone(tz))] == best)


def test_goes_at_the_users_hour_within_the_send_hours() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    due = datetime(2026, 3, 2, 1, 20, tzinfo=UTC)  # Monday 09:20 local
    lunch = [day * 24 + 12 for day in range(7)]
    assert best_time(due, shanghai, _peak(*lunch), allowed_hours(_policy(), "sms", None)) \
        == datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 local the same day
    late = [day * 24 + 23 for day in range(7)]  # a night owl: 23:00 is outside 08-21
    chosen = best_time(due, shanghai, _peak(*late), allowed_hours(_policy(), "sms", None))
    assert chosen == due  # every allowed hour scores 0: the earliest, the due time itself
    # With a little evening activity too, the latest allowed evening hour wins.
    evening = _peak(*late)
    evening[20] = evening[24 + 20] = 3.0
    chosen = best_time(due, shanghai, evening, allowed_hours(_policy(), "sms", None))
    assert chosen.astimezone(shanghai) == datetime(2026, 3, 2, 20, 0, tzinfo=shanghai)


def test_the_steps_window_bounds_the_choice() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    due = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 local
    profile = _peak(*(day * 24 + 18 for day in range(7)))  # dinner
    allowed = allowed_hours(_policy(), "sms", LocalWindow(time(10), time(14)))
    assert best_time(due, shanghai, profile, allowed) == due  # 18:00 is outside 10-14


def test_never_more_than_a_day_late() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    due = datetime(2026, 3, 2, 4, 30, tzinfo=UTC)  # Monday 12:30 local
    profile = _peak(12)  # Monday 12:00 only: next week's is too far
    chosen = best_time(due, shanghai, profile, allowed_hours(_policy(None), "sms", None))
    assert chosen == due  # the due time is inside Monday's 12 o'clock hour itself
    profile = _peak(24 + 12, weight=5)  # Tuesday 12:00: 23 h 30 min later
    chosen = best_time(due, shanghai, profile, allowed_hours(_policy(None), "sms", None))
    assert chosen - due == timedelta(hours=23, minutes=30)


def test_a_skipped_hour_is_never_chosen_and_a_repeated_one_goes_first() -> None:
    # New York springs forward on Sunday 2026-03-08: 02:00-03:00 does not exist.
    due = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # Sunday 00:00 EST
    sunday_2am = 6 * 24 + 2
    profile = _peak(sunday_2am)
    profile[6 * 24 + 3] = 1.0
    chosen = best_time(due, NY, profile, allowed_hours(_policy(None), "sms", None))
    assert chosen.astimezone(NY).hour == 3 and chosen == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    # It falls back on Sunday 2026-11-01: 01:00-02:00 happens twice; the first is chosen.
    due = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # Sunday 00:00 EDT
    chosen = best_time(due, NY, _peak(6 * 24 + 1), allowed_hours(_policy(None), "sms", None))
    assert chosen == datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 01:00 EDT, not 01:00 EST
    assert len([c for c in candidates(due, NY) if c.astimezone(NY).hour == 1]) == 2


def test_holiday_send_hours_apply_on_holidays() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    policy = _policy(holidays="CN", holiday_send_hours={"sms": "10:00-20:00"})
    due = datetime(2026, 10, 1, 0, 0, tzinfo=UTC)  # National Day, 08:00 local
    profile = _peak(*(day * 24 + 9 for day in range(7)))  # 09:00 habit
    profile[3 * 24 + 11] = 1.0  # and a little at 11:00 on Thursdays (1 October 2026)
    chosen = best_time(due, shanghai, profile, allowed_hours(policy, "sms", None))
    # 09:00 is outside the holiday's 10-20 hours, and the next day (a holiday too) is
    # beyond reach after 08:00 + 24 h only at 09:00 ... also outside: 11:00 wins.
    assert chosen.astimezone(shanghai) == datetime(2026, 10, 1, 11, 0, tzinfo=shanghai)


def test_a_profile_must_cover_the_week() -> None:
    with pytest.raises(ValueError, match="a profile has 168 hours of the week, got 24"):
        hour_scores([0.0] * 24)


def test_placement_ranks_the_hour_in_the_persons_day() -> None:
    """Top hours, active hours, outside: by the same scores as the best hour."""
    monday = 0
    # Lunch peak (12:00), dinner peak (18:00), some 21:00, a little 09:00; every Monday.
    profile = [0.0] * HOURS_OF_WEEK
    for hour, count in ((12, 9.0), (18, 8.0), (21, 4.0), (9, 1.0), (15, 0.5)):
        profile[monday * 24 + hour] = count
    at = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    found = {h: placement(profile, at.replace(hour=h)) for h in (12, 18, 21, 9, 15, 3)}
    # Active hours: a score at least the day's mean (22.5 × 8/7 / 24 ≈ 1.07): 09:00 (1.14)
    # is, 15:00 (0.57) is not.
    assert found == {12: "top", 18: "top", 21: "top", 9: "inside", 15: "outside",
                     3: "outside"}
    assert placement(profile, at.replace(hour=21), top=2) == "inside"
    # Tuesday has no activity of its own; the same hour of the other days still counts.
    assert placement(profile, at.replace(day=3, hour=12)) == "top"
    assert placement([0.0] * HOURS_OF_WEEK, at) is None


@given(st.lists(st.floats(0, 50), min_size=HOURS_OF_WEEK, max_size=HOURS_OF_WEEK),
       st.integers(0, HOURS_OF_WEEK - 1))
@settings(max_examples=80, deadline=None)
def test_the_best_hour_of_a_day_is_always_a_top_hour(profile: list[float], hour: int) -> None:
    scores = hour_scores(profile)
    day = hour // 24
    best = max(range(day * 24, day * 24 + 24), key=lambda h: scores[h])
    local = datetime(2026, 3, 2 + day, best % 24, tzinfo=UTC)
    assert placement(profile, local) in (("top",) if any(profile) else (None,))
