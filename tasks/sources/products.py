"""The input products and how their real file names are recognised and dated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

# A granule dated after tomorrow (UTC) cannot exist yet: its name, or the clock that wrote it, is
# wrong. One day of slack covers time zones and files written just after midnight.
FUTURE_SLACK_DAYS = 1


@dataclass(frozen=True)
class Product:
    name: str
    pattern: re.Pattern
    day_format: str | None  # strptime format of the first group, None for undated files
    first_day: date | None = None  # the product's first day of data (launch, start of the record)

    def matches(self, filename: str) -> bool:
        """The product's name pattern, with a day that can be a granule's (see name_problem)."""
        return self.pattern.search(filename) is not None and self.name_problem(filename) is None

    def name_problem(self, filename: str, today: date | None = None) -> str | None:
        """Why a name that has the product's pattern cannot be one of its granules (its date does
        not parse, lies in the future or before the product existed); None when it can (or when
        the name is not the product's at all)."""
        m = self.pattern.search(filename)
        if m is None or self.day_format is None:
            return None
        try:
            day = datetime.strptime(m.group(1), self.day_format).date()
        except ValueError as exc:
            return f"the date {m.group(1)!r} in the name is impossible ({exc})"
        today = today or datetime.now(timezone.utc).date()
        if day > today + timedelta(days=FUTURE_SLACK_DAYS):
            return f"dated {day}, in the future (today is {today} UTC): clock skew or a wrong name"
        if self.first_day is not None and day < self.first_day:
            return f"dated {day}, before {self.name}'s first day of data {self.first_day}"
        return None

    def day(self, filename: str) -> date | None:
        """The granule's day; None for undated products and for names name_problem refuses."""
        m = self.pattern.search(filename)
        if m is None or self.day_format is None or self.name_problem(filename) is not None:
            return None
        return datetime.strptime(m.group(1), self.day_format).date()


PRODUCTS: dict[str, Product] = {
    "oco2": Product("oco2", re.compile(r"^oco2_LtCO2_(\d{6})_.*\.nc4$"), "%y%m%d", date(2014, 9, 6)),
    "oco3": Product("oco3", re.compile(r"^oco3_LtCO2_(\d{6})_.*\.nc4$"), "%y%m%d", date(2019, 8, 6)),
    "gosat": Product("gosat", re.compile(r"^(\d{8})-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT.*\.nc$"), "%Y%m%d",
                     date(2009, 4, 1)),
    "era5": Product("era5", re.compile(r"^era5_single_levels_(\d{8})\.nc$"), "%Y%m%d", date(1940, 1, 1)),
    "static": Product("static", re.compile(r"^(elevation|population|landcover|ndvi_\d{7})\.tif$"), None),
}
SATELLITES = ("oco2", "oco3", "gosat")
