"""Quiet hours: when a touch may go out, in the user's own time zone.

A touch outside its channel's send hours is deferred to the next allowed moment, never
dropped. Windows are local wall times ``[start, end)``; ``start > end`` crosses midnight
(``22:00-06:00``) and such a window belongs to the day it starts on. A window edge that a
DST jump skips moves forward to the jump (``windows.resolve_local``).

Send hours may differ on public holidays and on make-up working days (调休: a weekend day
that is a working day), from the maintained ``holidays`` package (``HolidayCalendar``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import holidays as holidays_lib

from orchestrator.errors import ConfigError
from orchestrator.policy.windows import local_midnight, resolve_local

Window = tuple[time, time]
# One day's send hours: a window, None (any time), or "closed" (no sends that day).
DayHours = Window | None | Literal["closed"]
# How far ahead to look for an open window before concluding there is none.
_SEARCH_DAYS = 400


class HolidayCalendar:
    """Public holidays and make-up working days of a country (``holidays`` package).

    ``is_holiday``: the day is inside a holiday break (放假), i.e. a public holiday, a day off
    moved onto a weekday (for CN e.g. 2025-10-08), or a weekend day in an unbroken run of
    days off that contains one (Saturday 2025-10-04 in the National Day week). An ordinary
    weekend is not a holiday. ``is_makeup_workday``: a weekend day declared a working day
    (调休, for CN e.g. Sunday 2025-09-28); the package lists them in ``weekend_workdays``,
    which its ``is_working_day`` reads. A year's make-up days may be published with the next
    year's schedule (a late-December weekend worked for New Year), so both years are loaded.
    """

    def __init__(self, country: str, subdiv: str | None = None) -> None:
        if country not in holidays_lib.list_supported_countries():
            raise ConfigError(
                f"unknown holiday calendar {country!r}: use a country code of the holidays "
                "package, e.g. CN"
            )
        self.country = country
        self._days = holidays_lib.country_holidays(country, subdiv=subdiv)
        self._holiday_cache: dict[date, bool] = {}

    def _load(self, year: int) -> None:
        for y in (year, year + 1):
            if y not in self._days.years:
                _ = date(y, 1, 1) in self._days  # a lookup loads the year (expand=True)

    def is_public_holiday(self, day: date) -> bool:
        """Listed by the package itself (public holiday or a day off moved onto a weekday)."""
        self._load(day.year)
        return day in self._days

    def is_holiday(self, day: date) -> bool:
        known = self._holiday_cache.get(day)
        if known is None:
            known = self._holiday_cache[day] = self.is_public_holiday(day) or (
                not self._is_working_day(day)
                and any(self.is_public_holiday(d) for d in self._break_around(day))
            )
        return known

    def is_weekend(self, day: date) -> bool:
        """Saturday or Sunday (the country's weekend), whatever else the day is."""
        return bool(self._days.is_weekend(day))

    def is_makeup_workday(self, day: date) -> bool:
        self._load(day.year)
        return self._days.is_weekend(day) and self._days.is_working_day(day)

    def name(self, day: date) -> str | None:
        """The holiday's name (in the package's default language), if ``day`` is one."""
        self._load(day.year)
        return self._days.get(day)

    def _is_working_day(self, day: date) -> bool:
        self._load(day.year)
        return bool(self._days.is_working_day(day))

    def _break_around(self, day: date) -> list[date]:
        """The other days off in the unbroken run of days off around ``day``."""
        run = []
        for step in (timedelta(days=-1), timedelta(days=1)):
            other = day + step
            while not self._is_working_day(other) and abs((other - day).days) <= 14:
                run.append(other)
                other += step
        return run


@lru_cache(maxsize=8)
def holiday_calendar(country: str) -> HolidayCalendar:
    """One ``HolidayCalendar`` per country per process (it caches what it has looked up)."""
    return HolidayCalendar(country)


@dataclass(frozen=True)
class HolidayWindows:
    """Send hours by kind of day; ``"same"`` keeps the regular window for that kind.

    Kinds, first match wins: a day in a holiday break (``holiday``), a make-up working day
    (``makeup_workday``), any other weekend day (``weekend``), else a working day (the
    regular window). "Rest days use other hours" is ``holiday=H, weekend=H``.
    """

    calendar: HolidayCalendar
    holiday: DayHours | Literal["same"] = "same"
    makeup_workday: DayHours | Literal["same"] = "same"
    weekend: DayHours | Literal["same"] = "same"

    def hours_on(self, day: date, regular: DayHours) -> DayHours:
        if self.holiday != "same" and self.calendar.is_holiday(day):
            return self.holiday
        if self.makeup_workday != "same" and self.calendar.is_makeup_workday(day):
            return self.makeup_workday
        if self.weekend != "same" and self.calendar.is_weekend(day):
            if not (self.calendar.is_holiday(day) or self.calendar.is_makeup_workday(day)):
                return self.weekend
        return regular


def parse_hours(text: str | None) -> DayHours:
    """``"08:00-21:00"`` (``24:00`` allowed as an end), ``"closed"``, or ``None``/``"any"``."""
    if text is None or text.strip().lower() == "any":
        return None
    if text.strip().lower() == "closed":
        return "closed"
    try:
        first, second = (part.strip() for part in text.split("-"))
        start = time.fromisoformat(first)
        end = time(0) if second == "24:00" else time.fromisoformat(second)
    except ValueError:
        raise ConfigError(
            f"bad send hours {text!r}: write HH:MM-HH:MM (e.g. 08:00-21:00; it may cross "
            "midnight, e.g. 22:00-06:00), closed, or any"
        ) from None
    if start == end:
        raise ConfigError(f"bad send hours {text!r}: start and end are the same time")
    return start, end


def next_send_time(
    at_utc: datetime,
    tz: ZoneInfo,
    window: DayHours,
    *,
    holidays_windows: HolidayWindows | None = None,
) -> datetime:
    """The first moment at or after ``at_utc`` inside the send hours, in UTC.

    ``window`` is the regular send hours in the user's zone ``tz`` (``None``: any time);
    ``holidays_windows`` replaces it on holidays, make-up working days or weekends. Returns
    ``at_utc`` itself when it is already inside. Raises ``ConfigError`` if no day of the
    next ``_SEARCH_DAYS`` has open hours (every one closed).
    """
    if at_utc.tzinfo is None:
        raise ValueError(f"naive datetime {at_utc.isoformat()}: pass an aware UTC time")
    at = at_utc.astimezone(UTC)
    if window is None and holidays_windows is None:
        return at
    days = _Days(tz, window, holidays_windows)
    first_day = at.astimezone(tz).date() - timedelta(days=1)  # yesterday's window may run on
    for offset in range(_SEARCH_DAYS):
        interval = days.interval(first_day + timedelta(days=offset))
        if interval is not None and at < interval[1]:
            return max(at, interval[0])
    raise ConfigError(
        f"no send hours in the {_SEARCH_DAYS} days after {at.isoformat()} ({tz.key}): every "
        "day is closed; open some hours in send_hours"
    )


@dataclass(frozen=True)
class _Days:
    tz: ZoneInfo
    regular: DayHours
    special: HolidayWindows | None

    def interval(self, day: date) -> tuple[datetime, datetime] | None:
        """The UTC ``[start, end)`` of ``day``'s send hours; ``None`` when closed or empty."""
        hours = self.special.hours_on(day, self.regular) if self.special else self.regular
        if hours == "closed":
            return None
        if hours is None:
            start, end = local_midnight(day, self.tz), local_midnight(day + timedelta(1), self.tz)
        else:
            start = resolve_local(datetime.combine(day, hours[0]), self.tz)
            end_day = day if hours[0] < hours[1] else day + timedelta(days=1)
            end = resolve_local(datetime.combine(end_day, hours[1]), self.tz)
        return (start, end) if start < end else None  # both edges in one DST gap: empty


__all__ = [
    "holiday_calendar",
    "DayHours",
    "HolidayCalendar",
    "HolidayWindows",
    "Window",
    "next_send_time",
    "parse_hours",
]
