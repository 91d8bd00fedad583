"""The input products and how their real file names are recognised and dated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class Product:
    name: str
    pattern: re.Pattern
    day_format: str | None  # strptime format of the first group, None for undated files

    def matches(self, filename: str) -> bool:
        return self.pattern.search(filename) is not None

    def day(self, filename: str) -> date | None:
        m = self.pattern.search(filename)
        if m is None or self.day_format is None:
            return None
        return datetime.strptime(m.group(1), self.day_format).date()


PRODUCTS: dict[str, Product] = {
    "oco2": Product("oco2", re.compile(r"^oco2_LtCO2_(\d{6})_.*\.nc4$"), "%y%m%d"),
    "oco3": Product("oco3", re.compile(r"^oco3_LtCO2_(\d{6})_.*\.nc4$"), "%y%m%d"),
    "gosat": Product("gosat", re.compile(r"^(\d{8})-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT.*\.nc$"), "%Y%m%d"),
    "era5": Product("era5", re.compile(r"^era5_single_levels_(\d{8})\.nc$"), "%Y%m%d"),
    "static": Product("static", re.compile(r"^(elevation|population|landcover|ndvi_\d{7})\.tif$"), None),
}
SATELLITES = ("oco2", "oco3", "gosat")
