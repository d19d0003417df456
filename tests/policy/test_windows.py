"""Cap arithmetic: calendar windows, local-time resolution, rolling retry times."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.policy.windows import (
    CALENDAR_LONGEST_S,
    CALENDAR_UNITS,
    calendar_window,
    from_ms,
    latest_retry,
    local_midnight,
    resolve_local,
    rolling_retry_ms,
    to_ms,
)

# Zones with DST gaps at 02:00 (New York), at midnight (Havana, Santiago), of 30 minutes
# (Lord Howe), at 02:45 (Chatham), and none (Shanghai, Kolkata).
ZONES = [
    "Asia/Shanghai",
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
    "UTC",
]
zones = st.sampled_from(ZONES).map(ZoneInfo)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31), timezones=st.just(UTC)
)
walls = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2037, 12, 31))


def wall_of(at: datetime, tz: ZoneInfo) -> datetime:
    return at.astimezone(tz).replace(tzinfo=None)


@given(walls, zones)
@example(datetime(2026, 3, 8, 2, 30), ZoneInfo("America/New_York"))  # skipped: 03:00 EDT
@example(datetime(2026, 11, 1, 1, 30), ZoneInfo("America/New_York"))  # repeated: first one
@example(datetime(2026, 9, 6, 0, 0), ZoneInfo("America/Santiago"))  # midnight skipped
@example(datetime(2026, 10, 4, 2, 10), ZoneInfo("Australia/Lord_Howe"))  # 30-min gap
def test_resolve_local_is_the_first_instant_at_or_after_the_wall_time(
    wall: datetime, tz: ZoneInfo
) -> None:
    at = resolve_local(wall, tz)
    assert at.tzinfo is not None
    assert wall_of(at, tz) >= wall
    assert wall_of(at - timedelta(seconds=1), tz) < wall


@pytest.mark.parametrize(
    ("wall", "zone", "expected_utc"),
    [
        (datetime(2026, 3, 8, 2, 30), "America/New_York", datetime(2026, 3, 8, 7, 0)),
        (datetime(2026, 3, 8, 3, 0), "America/New_York", datetime(2026, 3, 8, 7, 0)),
        (datetime(2026, 11, 1, 1, 30), "America/New_York", datetime(2026, 11, 1, 5, 30)),
        (datetime(2026, 9, 6, 0, 0), "America/Santiago", datetime(2026, 9, 6, 4, 0)),
        (datetime(2026, 10, 4, 2, 10), "Australia/Lord_Howe", datetime(2026, 10, 3, 15, 30)),
    ],
)
def test_resolve_local_known_transitions(wall: datetime, zone: str, expected_utc: datetime) -> None:
    assert resolve_local(wall, ZoneInfo(zone)) == expected_utc.replace(tzinfo=UTC)


@given(instants, zones, st.sampled_from(CALENDAR_UNITS))
def test_calendar_window_contains_now_and_tiles_time(
    now: datetime, tz: ZoneInfo, unit: str
) -> None:
    start, end = calendar_window(now, unit, tz)  # type: ignore[arg-type]
    assert start <= now < end
    assert (end - start).total_seconds() <= CALENDAR_LONGEST_S[unit]  # type: ignore[index]
    assert calendar_window(start, unit, tz) == (start, end)  # type: ignore[arg-type]
    assert calendar_window(end, unit, tz)[0] == end  # type: ignore[arg-type]
    assert calendar_window(end - timedelta(microseconds=1), unit, tz) == (start, end)  # type: ignore[arg-type]


@given(instants, zones, st.sampled_from(CALENDAR_UNITS))
def test_calendar_window_starts_at_local_midnight_of_the_period(
    now: datetime, tz: ZoneInfo, unit: str
) -> None:
    start, _ = calendar_window(now, unit, tz)  # type: ignore[arg-type]
    today = now.astimezone(tz).date()
    first_day = {
        "day": today,
        "week": today - timedelta(days=today.weekday()),  # Monday
        "month": today.replace(day=1),
    }[unit]
    assert start == local_midnight(first_day, tz)
    assert wall_of(start, tz).date() == first_day


def test_calendar_month_in_shanghai() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    # 2026-01-31 17:00 UTC is already February 1st in Shanghai.
    start, end = calendar_window(datetime(2026, 1, 31, 17, 0, tzinfo=UTC), "month", tz)
    assert start == datetime(2026, 1, 31, 16, 0, tzinfo=UTC)
    assert end == datetime(2026, 2, 28, 16, 0, tzinfo=UTC)


def test_local_midnight_skipped_by_dst_moves_forward() -> None:
    # Santiago jumps from 00:00 to 01:00 on 2026-09-06: the day starts at 01:00 local.
    start = local_midnight(date(2026, 9, 6), ZoneInfo("America/Santiago"))
    assert wall_of(start, ZoneInfo("America/Santiago")) == datetime(2026, 9, 6, 1, 0)


@given(instants)
def test_ms_round_trip_floors_to_the_millisecond(at: datetime) -> None:
    assert from_ms(to_ms(at)) == at.replace(microsecond=at.microsecond // 1000 * 1000)
    assert to_ms(at + timedelta(milliseconds=1)) == to_ms(at) + 1


def test_to_ms_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        to_ms(datetime(2026, 1, 1))


@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
    st.integers(1, 12),
    st.integers(1, 10**5),
)
def test_rolling_retry_is_the_first_moment_the_window_has_a_slot(
    scores: list[int], cap_max: int, rolling_ms: int
) -> None:
    if len(scores) < cap_max:
        return  # not full: no retry to speak of

    def counted_at(t: int) -> int:
        return sum(1 for s in scores if s > t - rolling_ms)

    retry = rolling_retry_ms(scores, cap_max, rolling_ms)
    assert retry is not None
    assert counted_at(retry) < cap_max
    assert counted_at(retry - 1) >= cap_max


def test_a_cap_of_zero_never_frees_and_poisons_the_latest_retry() -> None:
    assert rolling_retry_ms([1, 2], 0, 100) is None
    assert latest_retry([5, None, 9]) is None
    assert latest_retry([5, 9, 7]) == 9


def test_week_starts_on_monday() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    sunday_night = datetime.combine(date(2026, 3, 8), time(23, 0), tzinfo=tz)
    start, end = calendar_window(sunday_night, "week", tz)
    assert wall_of(start, tz) == datetime(2026, 3, 2) and wall_of(end, tz) == datetime(2026, 3, 9)
