"""The report's window and calendar: the days asked for, the archived ones among them, the seasons
(December counts in the following year's winter) and the calendar days of a period."""

from __future__ import annotations

import calendar
from datetime import date
from pathlib import Path

from tasks.archive import archived_days
from tasks.archive.layout import region_dir

SEASONS = ("DJF", "MAM", "JJA", "SON")
SEASON_NAMES = {"DJF": "winter", "MAM": "spring", "JJA": "summer", "SON": "autumn"}
_SEASON_OF_MONTH = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM",
                    6: "JJA", 7: "JJA", 8: "JJA", 9: "SON", 10: "SON", 11: "SON"}
MONTH_ABBR = tuple(calendar.month_abbr[m] for m in range(1, 13))


def _parse_day(value: str | date, name: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date: expected YYYY-MM-DD") from None


def report_window(start: str | date, end: str | date) -> tuple[date, date]:
    """The window as dates; a ValueError naming the problem if a date is bad or start > end."""
    first, last = _parse_day(start, "start"), _parse_day(end, "end")
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    return first, last


def select_days(archive_root: Path | str, region_name: str, start: date, end: date) -> list[date]:
    """Archived days in [start, end]; a ValueError naming window, region and archive when none."""
    start, end = report_window(start, end)
    days = [d for d in archived_days(archive_root, region_name) if start <= d <= end]
    if not days:
        raise ValueError(f"no archived days between {start} and {end} for region {region_name!r} "
                         f"in the archive {region_dir(archive_root, region_name)}")
    return days


def season_of(day: date) -> tuple[int, str]:
    """(season year, season). December belongs to the following year's winter (DJF)."""
    return (day.year + 1 if day.month == 12 else day.year), _SEASON_OF_MONTH[day.month]


def month_days(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def season_days(season_year: int, season: str) -> int:
    if season == "DJF":
        return month_days(season_year - 1, 12) + month_days(season_year, 1) + month_days(season_year, 2)
    first = {"MAM": 3, "JJA": 6, "SON": 9}[season]
    return sum(month_days(season_year, m) for m in range(first, first + 3))


def year_days(year: int) -> int:
    return 366 if calendar.isleap(year) else 365
