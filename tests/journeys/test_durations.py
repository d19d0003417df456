from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.journeys.durations import (
    LocalWindow,
    format_duration,
    next_in_window,
    parse_duration,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("90m", timedelta(minutes=90)),
        ("24h", timedelta(hours=24)),
        ("1d", timedelta(days=1)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1", "1x", "d1", "1.5h", "-1d", "1 d", "one day"])
def test_parse_duration_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"^bad duration .*: write a number and a unit"):
        parse_duration(text)


def test_parse_duration_refuses_a_number() -> None:
    with pytest.raises(ValueError, match=r"^bad duration 30: "):
        parse_duration(30)  # type: ignore[arg-type]


@settings(database=None)
@given(st.integers(min_value=0, max_value=10**8))
def test_format_duration_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


def test_format_duration_prefers_days() -> None:
    assert format_duration(timedelta(days=7)) == "7d"
    assert format_duration(timedelta(days=1, hours=12, minutes=5)) == "1d12h5m"


def test_window_parse_and_contains() -> None:
    day = LocalWindow.parse("10:00-20:00")
    assert (day.start, day.end) == (time(10), time(20))
    assert day.contains(time(10)) and day.contains(time(19, 59, 59))
    assert not day.contains(time(20)) and not day.contains(time(9, 59))
    night = LocalWindow.parse("22:00-06:00")
    assert night.contains(time(23)) and night.contains(time(0)) and night.contains(time(5, 59))
    assert not night.contains(time(6)) and not night.contains(time(12))


def test_window_until_midnight() -> None:
    evening = LocalWindow.parse("08:00-24:00")
    assert evening.contains(time(23, 59)) and not evening.contains(time(0))
    assert str(evening) == "08:00-24:00"
    assert evening.length == timedelta(hours=16)


@pytest.mark.parametrize("text", ["10-20", "25:00-26:00", "10:00-10:00", "10:00 - 20:00", "x"])
def test_window_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="^bad window"):
        LocalWindow.parse(text)


def test_window_within() -> None:
    assert LocalWindow.parse("09:00-20:00").within(LocalWindow.parse("08:00-21:00"))
    assert not LocalWindow.parse("07:00-20:00").within(LocalWindow.parse("08:00-21:00"))
    assert LocalWindow.parse("23:00-01:00").within(LocalWindow.parse("22:00-06:00"))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "tz", "window", "expected"),
    [
        # Inside: unchanged.
        (utc(2025, 1, 1, 3), SHANGHAI, "10:00-20:00", utc(2025, 1, 1, 3)),
        # Before the window (local 07:00): today 10:00 local = 02:00 UTC.
        (utc(2024, 12, 31, 23), SHANGHAI, "10:00-20:00", utc(2025, 1, 1, 2)),
        # After the window (local 21:00): tomorrow 10:00.
        (utc(2025, 1, 1, 13), SHANGHAI, "10:00-20:00", utc(2025, 1, 2, 2)),
        # Crossing midnight, local 12:00: tonight 22:00 local = 14:00 UTC.
        (utc(2025, 1, 1, 4), SHANGHAI, "22:00-06:00", utc(2025, 1, 1, 14)),
        # Crossing midnight, local 02:00: inside.
        (utc(2024, 12, 31, 18), SHANGHAI, "22:00-06:00", utc(2024, 12, 31, 18)),
        # New York spring forward (2025-03-09 02:00 EST -> 03:00 EDT): 02:30 does not exist;
        # the first instant inside 02:30-04:00 is the jump itself, 03:00 EDT = 07:00 UTC.
        (utc(2025, 3, 9, 5), NEW_YORK, "02:30-04:00", utc(2025, 3, 9, 7)),
        # New York fall back (2025-11-02 02:00 EDT -> 01:00 EST): at 01:45 EDT the clocks fall
        # back into 01:00-01:30 at 06:00 UTC, earlier than the next day's 01:00.
        (utc(2025, 11, 2, 5, 45), NEW_YORK, "01:00-01:30", utc(2025, 11, 2, 6)),
        # Berlin spring forward (2025-03-30 02:00 CET -> 03:00 CEST): window start 02:15.
        (utc(2025, 3, 29, 23), BERLIN, "02:15-05:00", utc(2025, 3, 30, 1)),
        # Berlin summer: 10:00 CEST = 08:00 UTC.
        (utc(2025, 7, 1, 4), BERLIN, "10:00-20:00", utc(2025, 7, 1, 8)),
    ],
)
def test_next_in_window(at: datetime, tz: ZoneInfo, window: str, expected: datetime) -> None:
    assert next_in_window(at, tz, LocalWindow.parse(window)) == expected


def test_next_in_window_accepts_other_offsets() -> None:
    at = datetime(2025, 1, 1, 7, tzinfo=SHANGHAI)
    assert next_in_window(at, SHANGHAI, LocalWindow.parse("10:00-20:00")) == utc(2025, 1, 1, 2)


ZONES = st.sampled_from(
    [SHANGHAI, NEW_YORK, BERLIN, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]
)
INSTANTS = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
WINDOWS = st.tuples(st.integers(0, 24 * 4 - 1), st.integers(1, 24 * 4 - 1)).map(
    lambda t: LocalWindow(_quarter(t[0]), _quarter((t[0] + t[1]) % 96))
)


def _quarter(n: int) -> time:
    return time(n // 4, (n % 4) * 15)


def _inside(at: datetime, tz: ZoneInfo, window: LocalWindow) -> bool:
    return window.contains(at.astimezone(tz).time())


@settings(max_examples=300, deadline=None, database=None)
@given(at=INSTANTS, tz=ZONES, window=WINDOWS)
def test_next_in_window_invariants(at: datetime, tz: ZoneInfo, window: LocalWindow) -> None:
    result = next_in_window(at, tz, window)
    assert result >= at
    assert _inside(result, tz, window)
    # Nothing earlier is inside: just before the result is outside, and so is every minute
    # between the input and the result.
    if result > at:
        assert not _inside(result - timedelta(microseconds=1), tz, window)
        probe = at
        while probe < result:
            assert not _inside(probe, tz, window), probe
            probe += timedelta(minutes=1)
