"""Quiet hours in the user's zone: deferral, midnight-crossing windows, DST, holidays, 调休."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ConfigError
from orchestrator.policy.quiet import (
    DayHours,
    HolidayCalendar,
    HolidayWindows,
    next_send_time,
    parse_hours,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
SMS_HOURS = parse_hours("08:00-21:00")
NIGHT = parse_hours("22:00-06:00")
CN = HolidayCalendar("CN")


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(SHANGHAI, 2026, 3, 3, 10, 0), local(SHANGHAI, 2026, 3, 3, 10, 0)),  # inside
        (local(SHANGHAI, 2026, 3, 3, 8, 0), local(SHANGHAI, 2026, 3, 3, 8, 0)),  # start included
        (local(SHANGHAI, 2026, 3, 3, 7, 59), local(SHANGHAI, 2026, 3, 3, 8, 0)),
        (local(SHANGHAI, 2026, 3, 3, 21, 0), local(SHANGHAI, 2026, 3, 4, 8, 0)),  # end excluded
        (local(SHANGHAI, 2026, 3, 3, 23, 30), local(SHANGHAI, 2026, 3, 4, 8, 0)),
    ],
)
def test_sms_outside_its_hours_is_deferred_to_the_next_opening(
    at: datetime, expected: datetime
) -> None:
    assert next_send_time(at, SHANGHAI, SMS_HOURS) == expected


def test_the_same_instant_is_night_or_day_depending_on_the_users_zone() -> None:
    at = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai, 09:00 in New York
    assert next_send_time(at, SHANGHAI, SMS_HOURS) == local(SHANGHAI, 2026, 3, 4, 8, 0)
    assert next_send_time(at, NEW_YORK, SMS_HOURS) == at
    london = ZoneInfo("Europe/London")  # 14:00 there
    assert next_send_time(at, london, SMS_HOURS) == at


def test_no_send_hours_means_any_time() -> None:
    at = local(SHANGHAI, 2026, 3, 3, 3, 0)
    assert next_send_time(at, SHANGHAI, None) == at


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (local(SHANGHAI, 2026, 3, 3, 12, 0), local(SHANGHAI, 2026, 3, 3, 22, 0)),
        (local(SHANGHAI, 2026, 3, 3, 23, 0), local(SHANGHAI, 2026, 3, 3, 23, 0)),
        (local(SHANGHAI, 2026, 3, 4, 3, 0), local(SHANGHAI, 2026, 3, 4, 3, 0)),  # yesterday's
        (local(SHANGHAI, 2026, 3, 4, 6, 0), local(SHANGHAI, 2026, 3, 4, 22, 0)),
    ],
)
def test_a_window_may_cross_midnight(at: datetime, expected: datetime) -> None:
    assert next_send_time(at, SHANGHAI, NIGHT) == expected


def test_dst_skipped_window_start_moves_forward_in_new_york() -> None:
    # 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT; 02:30 does not exist.
    at = local(NEW_YORK, 2026, 3, 8, 1, 0)
    assert next_send_time(at, NEW_YORK, (time(2, 30), time(5, 0))) == datetime(
        2026, 3, 8, 7, 0, tzinfo=UTC
    )  # 03:00 EDT


def test_deferral_across_spring_forward_lands_on_local_eight() -> None:
    at = local(NEW_YORK, 2026, 3, 7, 21, 30)  # EST evening before the jump
    assert next_send_time(at, NEW_YORK, SMS_HOURS) == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    # ...and after the fall-back night, 08:00 EST is 13:00 UTC.
    at = local(NEW_YORK, 2026, 10, 31, 22, 0)
    assert next_send_time(at, NEW_YORK, SMS_HOURS) == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)


def test_a_window_inside_the_skipped_hour_is_empty_that_day() -> None:
    at = local(NEW_YORK, 2026, 3, 8, 0, 0)
    window = (time(2, 10), time(2, 50))
    assert next_send_time(at, NEW_YORK, window) == local(NEW_YORK, 2026, 3, 9, 2, 10)


# ---------------------------------------------------------------- holidays


def test_cn_holidays_and_makeup_workdays_come_from_the_holidays_package() -> None:
    assert CN.is_holiday(date(2025, 10, 1)) and CN.name(date(2025, 10, 1))
    assert CN.is_holiday(date(2025, 10, 8))  # a weekday off, moved from Saturday Oct 11
    assert not CN.is_holiday(date(2025, 10, 9))
    assert CN.is_makeup_workday(date(2025, 9, 28))  # Sunday worked for National Day
    assert CN.is_makeup_workday(date(2025, 10, 11))  # Saturday worked
    assert not CN.is_makeup_workday(date(2025, 10, 12))  # an ordinary Sunday
    assert CN.is_makeup_workday(date(2026, 1, 4))  # Sunday worked for New Year 2026
    # The weekend inside the National Day break is part of it; an ordinary one is not.
    assert CN.is_holiday(date(2025, 10, 4)) and not CN.is_public_holiday(date(2025, 10, 4))
    assert not CN.is_holiday(date(2025, 10, 18))
    assert CN.is_holiday(date(2025, 4, 6))  # Qingming: Friday 4th to Sunday 6th


def test_unknown_holiday_calendar_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown holiday calendar 'XX'"):
        HolidayCalendar("XX")


def test_holiday_send_hours_apply_on_a_cn_public_holiday() -> None:
    special = HolidayWindows(CN, holiday=parse_hours("10:00-20:00"))
    national_day = local(SHANGHAI, 2025, 10, 1, 8, 30)
    assert next_send_time(national_day, SHANGHAI, SMS_HOURS, holidays_windows=special) == local(
        SHANGHAI, 2025, 10, 1, 10, 0
    )
    workday = local(SHANGHAI, 2025, 10, 9, 8, 30)
    assert next_send_time(workday, SHANGHAI, SMS_HOURS, holidays_windows=special) == workday


def test_makeup_workday_send_hours_apply_on_a_tiaoxiu_day() -> None:
    special = HolidayWindows(CN, holiday="closed", makeup_workday=parse_hours("09:00-18:00"))
    sunday_worked = local(SHANGHAI, 2025, 9, 28, 8, 30)
    assert next_send_time(sunday_worked, SHANGHAI, SMS_HOURS, holidays_windows=special) == local(
        SHANGHAI, 2025, 9, 28, 9, 0
    )
    late = local(SHANGHAI, 2025, 9, 28, 18, 0)  # its window has closed: on to Monday
    assert next_send_time(late, SHANGHAI, SMS_HOURS, holidays_windows=special) == local(
        SHANGHAI, 2025, 9, 29, 8, 0
    )


def test_rest_day_hours_can_cover_ordinary_weekends_too() -> None:
    rest = parse_hours("10:00-20:00")
    special = HolidayWindows(CN, holiday=rest, weekend=rest)
    saturday = local(SHANGHAI, 2025, 10, 18, 9, 0)
    assert next_send_time(saturday, SHANGHAI, SMS_HOURS, holidays_windows=special) == local(
        SHANGHAI, 2025, 10, 18, 10, 0
    )
    worked_saturday = local(SHANGHAI, 2025, 10, 11, 9, 0)  # 调休: the regular window
    assert next_send_time(worked_saturday, SHANGHAI, SMS_HOURS, holidays_windows=special) == (
        worked_saturday
    )


def test_closed_holidays_defer_past_the_whole_golden_week() -> None:
    special = HolidayWindows(CN, holiday="closed")
    at = local(SHANGHAI, 2025, 9, 30, 21, 30)
    assert next_send_time(at, SHANGHAI, SMS_HOURS, holidays_windows=special) == local(
        SHANGHAI, 2025, 10, 9, 8, 0
    )


def test_every_day_closed_is_a_config_error() -> None:
    class AlwaysHoliday(HolidayCalendar):
        def is_holiday(self, day: date) -> bool:
            return True

    special = HolidayWindows(AlwaysHoliday("CN"), holiday="closed")
    with pytest.raises(ConfigError, match="no send hours in the 400 days after"):
        next_send_time(local(SHANGHAI, 2026, 1, 1), SHANGHAI, SMS_HOURS, holidays_windows=special)


@pytest.mark.parametrize(
    ("text", "hours"),
    [("08:00-21:00", (time(8), time(21))), ("22:00-06:00", (time(22), time(6))),
     ("20:00-24:00", (time(20), time(0))), ("closed", "closed"), ("any", None), (None, None)],
)  # fmt: skip
def test_parse_hours(text: str | None, hours: DayHours) -> None:
    assert parse_hours(text) == hours


@pytest.mark.parametrize("text", ["8-21", "08:00", "08:00-08:00", "25:00-26:00"])
def test_parse_hours_refuses_bad_text(text: str) -> None:
    with pytest.raises(ConfigError, match="bad send hours"):
        parse_hours(text)


# ---------------------------------------------------------------- against brute force


def allowed(at: datetime, tz: ZoneInfo, regular: DayHours, special: HolidayWindows | None) -> bool:
    """Is ``at`` inside the send hours? Minute by minute, from the local wall clock."""
    wall = at.astimezone(tz)
    day, now = wall.date(), wall.time().replace(tzinfo=None)

    def hours(d: date) -> DayHours:
        return special.hours_on(d, regular) if special else regular

    today, yesterday = hours(day), hours(day - timedelta(days=1))
    if today is None:
        return True
    if today != "closed":
        start, end = today
        if (start <= now < end) if start < end else now >= start:
            return True
    if yesterday not in (None, "closed"):
        start, end = yesterday  # type: ignore[misc]
        if start > end and now < end:  # the tail of yesterday's window
            return True
    return False


minutes = st.integers(0, 24 * 60 - 1).map(lambda m: time(m // 60, m % 60))
windows = st.tuples(minutes, minutes).filter(lambda w: w[0] != w[1])
day_hours = st.one_of(st.none(), windows)


@settings(max_examples=80, deadline=None)
@given(
    at=st.datetimes(datetime(2025, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    tz=st.sampled_from(["Asia/Shanghai", "Asia/Kathmandu", "America/New_York"]).map(ZoneInfo),
    regular=day_hours,
    holiday=st.one_of(st.just("same"), day_hours),
    makeup=st.one_of(st.just("same"), day_hours),
    weekend=st.one_of(st.just("same"), day_hours),
)
def test_next_send_time_is_the_first_allowed_minute(
    at: datetime,
    tz: ZoneInfo,
    regular: DayHours,
    holiday: DayHours,
    makeup: DayHours,
    weekend: DayHours,
) -> None:
    at = at.replace(second=0, microsecond=0)
    if tz == NEW_YORK:  # around DST nights wall-clock membership is ambiguous by design
        assume(all(NEW_YORK.dst(at + timedelta(days=d)) == NEW_YORK.dst(at) for d in (-1, 3)))
    special = HolidayWindows(CN, holiday=holiday, makeup_workday=makeup, weekend=weekend)
    got = next_send_time(at, tz, regular, holidays_windows=special)
    expected = at
    while not allowed(expected, tz, regular, special):
        expected += timedelta(minutes=1)
    assert got == expected
