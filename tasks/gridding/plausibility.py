"""What values an input may hold: the plausible ranges of every input variable, in one place.

A value outside its range is not a measurement but damage (a fill value the file does not
declare, a unit error, a corrupt block) and must never reach a sample or a map. What happens to
it depends on the input:
- meteorology (ERA5): one value outside its range (or NaN: ERA5 single levels are complete over
  the globe) makes the whole file suspect, so the file is quarantined and the days it feeds wait;
- soundings: each sounding stands alone, so a bad one is dropped and its granule kept;
- static covariates: a few values outside their range are masked, filled from their neighbours
  and logged; a layer mostly outside it (wrong units or scale) is quarantined, naming the file,
  the variable, the count and a value (tasks.covariates.static).

The bounds are generous physical limits, not climatology: they catch damage without ever
refusing a real extreme (Vostok's -89 degC, Everest's 330 hPa, a cloudburst).
Hostile sizes (`MAX_*`) are checked from what a file declares, before anything is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    unit: str

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}] {self.unit}".rstrip()


# ERA5 hourly single levels, in the units the CDS delivers (docs/formats.md). The accumulations'
# lower bounds leave room for the rounding of the old CDS's int16 packing around zero.
METEOROLOGY = {
    "t2m": Range(170.0, 345.0, "K"),
    "d2m": Range(150.0, 330.0, "K"),
    "sp": Range(30_000.0, 110_000.0, "Pa"),
    "u10": Range(-100.0, 100.0, "m s-1"),
    "v10": Range(-100.0, 100.0, "m s-1"),
    "tp": Range(-1e-4, 0.5, "m per hour"),
    "e": Range(-0.01, 0.01, "m of water equivalent per hour"),
    "sund": Range(-10.0, 3610.0, "s per hour"),
}
# Coordinates of any gridded input.
LATITUDE = Range(-90.0, 90.0, "degree")
LONGITUDE = Range(-180.0, 360.0, "degree")  # some converters write 0..360
ERA5_YEARS = (1940, 2100)  # ERA5 starts in 1940

# Soundings (ppm, degrees, years). XCO2 outside this range is a failed retrieval.
XCO2_PPM = Range(330.0, 480.0, "ppm")
XCO2_UNCERTAINTY_PPM = Range(0.0, 20.0, "ppm")  # 0 itself is excluded: it would weigh infinitely
SOUNDING_YEARS = (1979, 2100)
# A daily granule's soundings lie within its UTC day; a day either side covers files that
# start before midnight (and any product that labels by local day).
SOUNDING_DAY_SLACK_DAYS = 1

# The land cover layer's classes, stored as codes 1..7 in this order (0 is no data); the features
# (tasks.covariates.features) are named after them, and tasks/sources/static_layers/landcover_codes.py
# maps the ESA CCI legend onto them. Defined here, the lowest room that needs them.
LANDCOVER_CLASSES = ("cropland", "forest", "grassland", "shrubland", "urban", "water", "bare")

# Static covariates as the raw layers hold them (before area-weighting and log1p); NDVI after
# MOD13Q1's 1e-4 scaling, whose valid range is -2000..10000.
COVARIATES = {
    "elevation": Range(-500.0, 9000.0, "m"),
    "population": Range(0.0, 1e6, "people/km2"),
    "ndvi": Range(-0.2, 1.0, ""),
    "landcover": Range(1, len(LANDCOVER_CLASSES), "class code"),  # 0 is no data
    "landcover_fraction": Range(0.0, 1.0, "fraction"),
}

# Declared sizes. A file may declare dimensions of any length while holding no data (the HDF5
# fill value stands in), so an 11 KB file can ask for tens of GB when read: refuse before reading.
# A daily OCO-2/OCO-3 Lite file holds 1e5-1e6 soundings, a daily C3S GOSAT file ~1e4.
MAX_SOUNDINGS = {"oco2_lite": 5_000_000, "oco3_lite": 5_000_000, "gosat_c3s": 1_000_000}
# ERA5: a whole month of hours on the global 0.25 degree grid is the most a file may declare
# along each axis; the reader loads a file whole, so one variable may hold at most a day on the
# global grid (24 x 721 x 1440 = 2.5e7 values), with room to spare.
MAX_ERA5_TIME_STEPS = 31 * 24 + 1
MAX_ERA5_LATITUDES = 721
MAX_ERA5_LONGITUDES = 1440
MAX_ERA5_VALUES_PER_VARIABLE = 100_000_000
# Any one variable of any input (the guard behind the per-product limits).
MAX_VALUES_PER_VARIABLE = 100_000_000
# ZIP members (CDS ERA5 archives) are inflated into memory: their declared size and ratio.
MAX_ZIP_MEMBER_BYTES = 1 << 30
# NetCDF members are mostly compressed inside already; deflating zeros reaches ~1000:1.
MAX_ZIP_COMPRESSION_RATIO = 100.0
ZIP_RATIO_CHECKED_ABOVE_BYTES = 10 << 20


@dataclass(frozen=True)
class Finding:
    """What is wrong with one variable's values."""

    variable: str
    total: int
    non_finite: int
    below: int
    above: int
    range: Range
    worst: float | None  # the value furthest outside the range

    @property
    def bad(self) -> int:
        return self.non_finite + self.below + self.above

    def describe(self) -> str:
        parts = []
        if self.non_finite:
            parts.append(f"{self.non_finite} NaN/inf")
        if self.below or self.above:
            parts.append(f"{self.below + self.above} outside {self.range.describe()} "
                         f"(e.g. {self.worst:.6g})")
        return f"{self.variable}: {' and '.join(parts)} of {self.total} values"


def check_values(variable: str, values: np.ndarray, bounds: Range) -> Finding | None:
    """None when every value is finite and inside `bounds`, else what is wrong."""
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    shown = values[finite]
    below = shown < bounds.low
    above = shown > bounds.high
    n_nonfinite = int(values.size - finite.sum())
    n_below, n_above = int(below.sum()), int(above.sum())
    if not (n_nonfinite or n_below or n_above):
        return None
    worst = None
    if n_below or n_above:
        outside = shown[below | above]
        distance = np.maximum(bounds.low - outside, outside - bounds.high)
        worst = float(outside[np.argmax(distance)])
    return Finding(variable, int(values.size), n_nonfinite, n_below, n_above, bounds, worst)


def inside(values: np.ndarray, bounds: Range) -> np.ndarray:
    """Boolean mask: finite and inside `bounds` (for dropping values one by one)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values >= bounds.low) & (values <= bounds.high)
