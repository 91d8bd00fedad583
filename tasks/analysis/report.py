"""Analysis of the archive: the paper's results section (Table 6, Figures 8-10) for any window.

    first, last = report_window("2020-01-01", "2022-12-31")
    days = select_days(archive_root, region_name, first, last)        # ValueError when none
    daily, maps = scan_and_map(archive_root, region_name, grid, days, out_dir)
    tables = summarise(daily)
    written = write_outputs(out_dir, tables, maps, context)            # CSV, PNG, summary.md
    # or all at once: build_report(archive_root, region_name, grid, start, end, out_dir)

What is computed, and how:
- The area: the cells of the region's boundary polygon (a cell counts when its centre lies inside;
  tasks/regions/boundary.py), or the whole box when the region has none. Everything below (means,
  coverage, growth, maps) is over those cells only, so a Sichuan report is over the province
  (about 0.48 M km2), not its bounding box (1.40 M km2), and compares with the paper's Table 6
  (PAPER_TABLE6_ANNUAL_PPM, set beside the annual means).
- Daily regional mean: the mean of band 1 (XCO2, ppm) over the area's cells with a value (NaN is
  no data), each cell weighted by cos(latitude). A 0.01 degree cell's area shrinks with the cosine
  of its latitude; over Sichuan's 8.3 degrees (26-34 N) that is a 10 % difference between the
  southern and northern edges, so an unweighted mean would over-count the north. Coverage is
  the area fraction of the region with a value.
- Monthly, seasonal and annual means: the mean of the daily regional means of the archived days
  in the period (each day counts once, whatever its coverage), with the number of days, the
  period's calendar days and their ratio (`day_coverage`). A period covered below
  `PARTIAL_BELOW` of its days is marked partial: its mean leans towards the part of the
  seasonal cycle that was archived (about 5 ppm peak to trough in the paper).
- Seasons are DJF, MAM, JJA, SON. December counts in the FOLLOWING year's winter: "DJF 2021" is
  December 2020 + January and February 2021 (the usual climatological convention, so a winter is
  one unbroken season).
- Climatologies (the paper's Fig. 9 and Fig. 10): per calendar month and per season, the mean of
  the daily means of all such days in the window, whatever their year.
- Growth rates: year-over-year differences of the annual means (divided by the gap when a year
  is missing) and, with at least 2 years, the least-squares linear trend of the annual means in
  ppm/yr (its standard error needs at least 3 years).
- Mean maps: per-cell sums and counts accumulated day by day, never stacking days: one
  accumulator for the current year (written out as soon as the year ends) and one per season
  (all days of that season in the window, as in Fig. 9). For Sichuan (1585 x 827 cells) that is
  5 accumulators of about 16 MB, whatever the window's length.

- The true column's interval (issue 22): the mean over the window of each cell's 68 % half-width
  of the true XCO2 column (the band described `TRUE_COLUMN_BAND`), mapped beside the means; its
  regional mean per day in the daily table. Days archived before that band existed are skipped
  and counted (`true_column_interval.days_without_band`).

Band 1 (XCO2) is read by index; the true column's interval by its description, as it may or may
not exist; band 2, the retrieval's interval, is not read.
When the window is short (the demo archives a few days) everything still works, and the report
lists which statistics need more data (`needs_more_data`).
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import rasterio

from tasks.archive import archived_days, day_cog_path
from tasks.archive.cog import TRUE_COLUMN_BAND, band_index
from tasks.archive.layout import region_dir
from tasks.io.atomic import atomic_path, publish_text
from tasks.gridding.geometry import Grid
from tasks.regions.boundary import boundary_mask, read_boundary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from shapely.geometry.base import BaseGeometry

    from tasks.settings import Region

SEASONS = ("DJF", "MAM", "JJA", "SON")
SEASON_NAMES = {"DJF": "winter", "MAM": "spring", "JJA": "summer", "SON": "autumn"}
_SEASON_OF_MONTH = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM",
                    6: "JJA", 7: "JJA", 8: "JJA", 9: "SON", 10: "SON", 11: "SON"}
MONTH_ABBR = tuple(calendar.month_abbr[m] for m in range(1, 13))
PARTIAL_BELOW = 0.9  # a period with fewer than 90 % of its days archived is "partial"
XCO2_BAND_INDEX = 1
_MAX_MAP_PIXELS_WIDE = 800

SUMMARY_FILE = "summary.md"
CSV_FILES = {
    "daily": "daily_means.csv",
    "monthly": "monthly_means.csv",
    "seasonal": "seasonal_means.csv",
    "annual": "annual_means.csv",
    "monthly_climatology": "monthly_climatology.csv",
    "seasonal_climatology": "seasonal_climatology.csv",
    "growth": "growth_rates.csv",
}
# Zhang et al. (2024), the project's reference paper (its text does not ship with the project):
# Table 6, annual mean XCO2 over Sichuan province from their ResNet-LSTM maps (ppm), and the growth
# rate its text gives for 2015-2022. The table's own least-squares slope is about 2.49 ppm/yr and
# (2022 - 2015) / 7 is 2.53, so the text's 2.21 is reported as the paper states it, beside both.
PAPER_CITATION = ("Zhang H., Chang Z., Teng Y., Wei Y., Chen Y., Ma S. (2024), Reconstruction on High-Resolution "
                  "XCO2 Spatiotemporal Distribution in Sichuan Province Using ResNet-LSTM Model, Table 6")
PAPER_TABLE6_ANNUAL_PPM = {2015: 398.92, 2016: 402.52, 2017: 404.93, 2018: 407.07,
                           2019: 409.72, 2020: 412.38, 2021: 414.57, 2022: 416.60}
PAPER_GROWTH_PPM_PER_YR = 2.21  # 2015-2022, as the paper's text states it
PAPER_AREA = "Sichuan province"
EARTH_RADIUS_KM = 6371.0072  # authalic: a sphere of the WGS84 ellipsoid's area

TIMESERIES_PNG = "timeseries.png"
TRUE_COLUMN_MAP_PNG = "true_column_interval.png"
INTERVAL_KIND = "true_column_interval"
SEASONAL_CYCLE_PNG = "seasonal_cycle.png"


# ---------------------------------------------------------------------------------------------
# window and days


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


def _month_days(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _season_days(season_year: int, season: str) -> int:
    if season == "DJF":
        return _month_days(season_year - 1, 12) + _month_days(season_year, 1) + _month_days(season_year, 2)
    first = {"MAM": 3, "JJA": 6, "SON": 9}[season]
    return sum(_month_days(season_year, m) for m in range(first, first + 3))


def _year_days(year: int) -> int:
    return 366 if calendar.isleap(year) else 365


# ---------------------------------------------------------------------------------------------
# one pass over the archive


@dataclass
class DayStat:
    day: date
    mean_ppm: float | None  # None when the day has no cell with a value
    valid_cells: int
    coverage: float  # area fraction of the region with a value
    model_name: str | None = None
    model_version: str | None = None
    synthetic: bool = False
    # The regional mean of the true column's 68 % half-width (ppm); None when the day's file has no
    # such band (`true_column_band` False) or no cell with a value.
    true_column_interval_ppm: float | None = None
    true_column_band: bool = False

    def row(self) -> dict:
        return {"day": self.day.isoformat(), "mean_ppm": _r(self.mean_ppm), "valid_cells": self.valid_cells,
                "coverage": _r(self.coverage, 4), "model_name": self.model_name,
                "model_version": self.model_version, "synthetic": self.synthetic,
                "true_column_interval_ppm": _r(self.true_column_interval_ppm)}


@dataclass
class MeanAccumulator:
    """Per-cell sums and counts of a period, built day by day (never stacking the days)."""

    kind: str  # "annual", "season" or INTERVAL_KIND (the true column's half-width over the window)
    label: str  # "2021", "DJF" or "window"
    shape: tuple[int, int]
    sums: np.ndarray = field(init=False, repr=False)
    counts: np.ndarray = field(init=False, repr=False)
    n_days: int = 0
    first: date | None = None
    last: date | None = None

    def __post_init__(self) -> None:
        self.sums = np.zeros(self.shape, dtype=np.float64)
        self.counts = np.zeros(self.shape, dtype=np.int32)

    def add(self, day: date, xco2: np.ndarray, valid: np.ndarray) -> None:
        np.add(self.sums, np.where(valid, xco2, 0.0), out=self.sums)
        np.add(self.counts, valid, out=self.counts, casting="unsafe")
        self.n_days += 1
        self.first = day if self.first is None else min(self.first, day)
        self.last = day if self.last is None else max(self.last, day)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan).astype(np.float32)


@dataclass
class MapInfo:
    kind: str
    label: str
    path: str
    n_days: int
    first: str
    last: str
    mean_ppm: float | None


@dataclass(frozen=True)
class ReportArea:
    """The cells a report averages over: inside the region's boundary, or the whole box."""

    inside: np.ndarray | None = None  # bool [ny, nx]; None: every cell of the box
    outline: BaseGeometry | None = None  # the boundary polygon, drawn on the maps
    boundary: str | None = None  # its file

    @classmethod
    def for_region(cls, region: Region, grid: Grid) -> "ReportArea":
        """From a tasks.settings.Region; the boundary file is read now (nothing is cached)."""
        if region.boundary is None:
            return cls()
        outline = read_boundary(region.boundary)
        return cls(boundary_mask(outline, grid), outline, str(region.boundary))

    def describe(self, grid: Grid) -> dict:
        """Cells and km2 of the area and of the box (cell areas on the authalic sphere)."""
        north = np.radians(grid.north - np.arange(grid.ny) * grid.step)
        row_km2 = EARTH_RADIUS_KM ** 2 * np.radians(grid.step) * (np.sin(north) - np.sin(north - np.radians(grid.step)))
        box_km2 = float(row_km2.sum() * grid.nx)
        if self.inside is None:
            return {"boundary": None, "cells": grid.n_cells, "km2": round(box_km2), "box_cells": grid.n_cells,
                    "box_km2": round(box_km2)}
        return {"boundary": self.boundary, "cells": int(self.inside.sum()),
                "km2": round(float((self.inside * row_km2[:, None]).sum())), "box_cells": grid.n_cells,
                "box_km2": round(box_km2)}


def _area_weights(grid: Grid) -> np.ndarray:
    # cos(latitude) of the cell centres, (ny, 1): a cell's area is proportional to it.
    return np.cos(np.radians(grid.lats))[:, None]


def regional_mean(xco2: np.ndarray, grid: Grid, inside: np.ndarray | None = None) -> tuple[float | None, int, float]:
    """(area-weighted mean ppm or None, cells with a value, area fraction with a value), over the
    cells `inside` (bool [ny, nx]; None: all)."""
    xco2 = np.asarray(xco2, dtype=np.float64)
    valid = np.isfinite(xco2)
    weights = np.broadcast_to(_area_weights(grid), xco2.shape)
    if inside is not None:
        valid &= inside
        total = float(weights[inside].sum())
    else:
        total = float(weights.sum())
    w_valid = float(weights[valid].sum())
    n = int(valid.sum())
    if n == 0 or w_valid <= 0:
        return None, 0, 0.0
    mean = float((weights * np.where(valid, xco2, 0.0)).sum() / w_valid)
    return mean, n, w_valid / total


def _read_day(path: Path, grid: Grid) -> tuple[np.ndarray, dict[str, str], np.ndarray | None]:
    """Band 1, the dataset tags and the true column's half-width (None when the file lacks it)."""
    with rasterio.open(path) as src:
        if (src.height, src.width) != grid.shape or not src.transform.almost_equals(grid.transform):
            raise ValueError(f"{path}: {src.height} x {src.width} cells at {tuple(src.transform)[:6]} does not "
                             f"match the configured region's grid {grid.ny} x {grid.nx} at "
                             f"{tuple(grid.transform)[:6]}: is the region configured as when it was archived?")
        xco2 = src.read(XCO2_BAND_INDEX).astype(np.float32, copy=False)
        tags = src.tags()
        index = band_index(src, TRUE_COLUMN_BAND)
        true_column = src.read(index).astype(np.float32, copy=False) if index is not None else None
    return xco2, tags, true_column


def scan_archive(
    archive_root: Path | str,
    region_name: str,
    grid: Grid,
    days: Iterable[date],
    on_map: Callable[[MeanAccumulator], None] | None = None,
    area: ReportArea | None = None,
) -> list[DayStat]:
    """One pass over the days: their regional means and tags; `on_map` gets each finished mean map.
    `area`: the cells to average and map (default: the whole box).

    Annual accumulators are handed over as soon as their year ends (days are processed in
    order), the four season ones at the end with the true column's interval over the window (when
    any day has that band), so at most six exist at a time.
    """
    days = sorted(days)
    stats: list[DayStat] = []
    year_acc: MeanAccumulator | None = None
    season_accs: dict[str, MeanAccumulator] = {}
    interval_acc = MeanAccumulator(INTERVAL_KIND, "window", grid.shape)
    for day in days:
        xco2, tags, true_column = _read_day(day_cog_path(archive_root, region_name, day), grid)
        inside = area.inside if area is not None else None
        mean, n, coverage = regional_mean(xco2, grid, inside)
        interval = regional_mean(true_column, grid, inside)[0] if true_column is not None else None
        stats.append(DayStat(day=day, mean_ppm=mean, valid_cells=n, coverage=coverage,
                             model_name=tags.get("model_name"), model_version=tags.get("model_version"),
                             synthetic=tags.get("synthetic", "").strip().lower() == "true",
                             true_column_interval_ppm=interval, true_column_band=true_column is not None))
        if on_map is None or n == 0:
            continue
        if true_column is not None:
            has_interval = np.isfinite(true_column) if inside is None else np.isfinite(true_column) & inside
            if has_interval.any():
                interval_acc.add(day, true_column, has_interval)
        valid = np.isfinite(xco2) if inside is None else np.isfinite(xco2) & inside
        if year_acc is not None and year_acc.label != str(day.year):
            on_map(year_acc)
            year_acc = None
        if year_acc is None:
            year_acc = MeanAccumulator("annual", str(day.year), grid.shape)
        year_acc.add(day, xco2, valid)
        _, season = season_of(day)
        season_accs.setdefault(season, MeanAccumulator("season", season, grid.shape)).add(day, xco2, valid)
    if on_map is not None:
        if year_acc is not None:
            on_map(year_acc)
        for season in SEASONS:
            if season in season_accs:
                on_map(season_accs.pop(season))
        if interval_acc.n_days:
            on_map(interval_acc)
    return stats


# ---------------------------------------------------------------------------------------------
# tables


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _period_row(stats: list[DayStat], period_days: int | None) -> dict:
    means = np.array([s.mean_ppm for s in stats], dtype=np.float64)
    row: dict[str, Any] = {
        "mean_ppm": _r(float(means.mean())),
        "std_daily_ppm": _r(float(means.std(ddof=1))) if len(means) > 1 else None,
        "n_days": len(stats),
    }
    if period_days is not None:
        row["period_days"] = period_days
        row["day_coverage"] = _r(len(stats) / period_days, 3)
        row["partial"] = len(stats) < PARTIAL_BELOW * period_days
    row["mean_cell_coverage"] = _r(float(np.mean([s.coverage for s in stats])), 4)
    row["first_day"] = min(s.day for s in stats).isoformat()
    row["last_day"] = max(s.day for s in stats).isoformat()
    return row


def _group(stats: Iterable[DayStat], key: Callable[[DayStat], Any]) -> dict[Any, list[DayStat]]:
    groups: dict[Any, list[DayStat]] = {}
    for s in stats:
        groups.setdefault(key(s), []).append(s)
    return dict(sorted(groups.items()))


def monthly_means(daily: list[DayStat]) -> list[dict]:
    rows = []
    for (year, month), group in _group(_with_values(daily), lambda s: (s.day.year, s.day.month)).items():
        rows.append({"month": f"{year:04d}-{month:02d}", "year": year, "month_of_year": month,
                     **_period_row(group, _month_days(year, month))})
    return rows


def seasonal_means(daily: list[DayStat]) -> list[dict]:
    """Per season of each year; DJF of year Y is December Y-1 + January and February Y."""
    order = {s: i for i, s in enumerate(SEASONS)}
    groups = _group(_with_values(daily), lambda s: (season_of(s.day)[0], order[season_of(s.day)[1]]))
    rows = []
    for (season_year, index), group in groups.items():
        season = SEASONS[index]
        rows.append({"season_year": season_year, "season": season, "label": f"{season} {season_year}",
                     **_period_row(group, _season_days(season_year, season))})
    return rows


def with_paper(annual: list[dict]) -> list[dict]:
    """The annual rows with the paper's Table 6 mean of the year (None outside 2015-2022) and the
    difference (this archive - paper)."""
    rows = []
    for row in annual:
        paper = PAPER_TABLE6_ANNUAL_PPM.get(row["year"])
        rows.append({**row, "paper_ppm": paper,
                     "minus_paper_ppm": _r(row["mean_ppm"] - paper) if paper is not None and row["mean_ppm"] is not None
                     else None})
    return rows


def paper_growth() -> dict:
    years = sorted(PAPER_TABLE6_ANNUAL_PPM)
    values = [PAPER_TABLE6_ANNUAL_PPM[y] for y in years]
    return {"citation": PAPER_CITATION, "area": PAPER_AREA, "years": f"{years[0]}-{years[-1]}",
            "text_ppm_per_yr": PAPER_GROWTH_PPM_PER_YR,
            "table_slope_ppm_per_yr": _r(float(np.polyfit(years, values, 1)[0])),
            "table_mean_ppm": _r(float(np.mean(values)))}


def annual_means(daily: list[DayStat]) -> list[dict]:
    return [{"year": year, **_period_row(group, _year_days(year))}
            for year, group in _group(_with_values(daily), lambda s: s.day.year).items()]


def monthly_climatology(daily: list[DayStat]) -> list[dict]:
    """Per calendar month over all years in the window (the paper's Fig. 10)."""
    rows = []
    for month, group in _group(_with_values(daily), lambda s: s.day.month).items():
        row = _period_row(group, None)
        rows.append({"month_of_year": month, "month": MONTH_ABBR[month - 1], "mean_ppm": row["mean_ppm"],
                     "n_days": row["n_days"], "n_years": len({s.day.year for s in group}),
                     "first_day": row["first_day"], "last_day": row["last_day"]})
    return rows


def seasonal_climatology(daily: list[DayStat]) -> list[dict]:
    """Per season over all years in the window (the paper's Fig. 9)."""
    rows = []
    for season in SEASONS:
        group = [s for s in _with_values(daily) if season_of(s.day)[1] == season]
        if not group:
            continue
        row = _period_row(group, None)
        rows.append({"season": season, "name": SEASON_NAMES[season], "mean_ppm": row["mean_ppm"],
                     "n_days": row["n_days"], "n_seasons": len({season_of(s.day)[0] for s in group}),
                     "first_day": row["first_day"], "last_day": row["last_day"]})
    return rows


def growth_rates(annual: list[dict]) -> dict:
    """Year-over-year growth of the annual means and their linear trend (ppm/yr)."""
    years = [row["year"] for row in annual]
    means = [row["mean_ppm"] for row in annual]
    partial = {row["year"]: row.get("partial", False) for row in annual}
    yoy = []
    for (y0, m0), (y1, m1) in zip(zip(years, means), zip(years[1:], means[1:])):
        yoy.append({"from_year": y0, "to_year": y1, "growth_ppm_per_yr": _r((m1 - m0) / (y1 - y0)),
                    "partial_years": bool(partial[y0] or partial[y1])})
    trend = None
    if len(years) >= 2:
        x = np.array(years, dtype=np.float64)
        y = np.array(means, dtype=np.float64)
        slope, intercept = np.polyfit(x, y, 1)
        stderr = None
        if len(years) >= 3:
            residuals = y - (slope * x + intercept)
            stderr = math.sqrt(float((residuals ** 2).sum()) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
        trend = {"years": f"{years[0]}-{years[-1]}", "n_years": len(years),
                 "slope_ppm_per_yr": _r(float(slope)), "stderr_ppm_per_yr": _r(stderr),
                 "mean_growth_ppm_per_yr": _r((means[-1] - means[0]) / (years[-1] - years[0])),
                 "partial_years": [yr for yr in years if partial[yr]]}
    return {"year_over_year": yoy, "linear_trend": trend}


def _with_values(daily: Iterable[DayStat]) -> list[DayStat]:
    return [s for s in daily if s.mean_ppm is not None]


def needs_more_data(daily: list[DayStat], annual: list[dict], monthly_clim: list[dict],
                    seasonal_clim: list[dict], seasonal: list[dict]) -> list[str]:
    """Plain sentences: which statistics this window cannot support yet, and what they need."""
    notes = []
    empty = [s.day.isoformat() for s in daily if s.mean_ppm is None]
    if empty:
        notes.append(f"{len(empty)} archived day(s) have no cell with a value and are left out: "
                     f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}.")
    years = [row["year"] for row in annual]
    if len(years) < 2:
        notes.append(f"Growth rates (year-over-year and the linear trend, Table 6) need archived days in at "
                     f"least 2 calendar years; this window has {len(years)} ({', '.join(map(str, years)) or 'none'}).")
    elif len(years) < 3:
        notes.append("The linear trend's standard error needs at least 3 years; with 2 it is just their difference.")
    partial_years = [row["year"] for row in annual if row.get("partial")]
    if partial_years:
        notes.append(f"Annual means of {', '.join(map(str, partial_years))} come from partial years (under "
                     f"{100 * PARTIAL_BELOW:.0f} % of the days archived): they lean towards the archived part of the "
                     "seasonal cycle (about 5 ppm peak to trough), so annual means and growth rates using them "
                     "are indicative only.")
    missing_months = [MONTH_ABBR[m - 1] for m in range(1, 13) if m not in {r["month_of_year"] for r in monthly_clim}]
    if missing_months:
        notes.append(f"The seasonal cycle (Fig. 10: peak month, trough month, amplitude) needs all 12 calendar "
                     f"months; missing: {', '.join(missing_months)}.")
    missing_seasons = [s for s in SEASONS if s not in {r["season"] for r in seasonal_clim}]
    if missing_seasons:
        notes.append(f"The seasonal comparison (Fig. 9: highest and lowest season) needs all four seasons; "
                     f"missing: {', '.join(missing_seasons)}.")
    partial_seasons = [row["label"] for row in seasonal if row.get("partial")]
    if partial_seasons:
        notes.append(f"Partial seasons (under {100 * PARTIAL_BELOW:.0f} % of their days): "
                     f"{', '.join(partial_seasons)}.")
    return notes


def seasonal_cycle(monthly_clim: list[dict], seasonal_clim: list[dict]) -> dict:
    """Peak/trough month and amplitude (all 12 months needed), highest/lowest season (all 4)."""
    out: dict[str, Any] = {}
    if len(monthly_clim) == 12:
        peak = max(monthly_clim, key=lambda r: r["mean_ppm"])
        trough = min(monthly_clim, key=lambda r: r["mean_ppm"])
        out.update(peak_month=peak["month"], peak_ppm=peak["mean_ppm"], trough_month=trough["month"],
                   trough_ppm=trough["mean_ppm"], amplitude_ppm=_r(peak["mean_ppm"] - trough["mean_ppm"]))
    if len(seasonal_clim) == 4:
        high = max(seasonal_clim, key=lambda r: r["mean_ppm"])
        low = min(seasonal_clim, key=lambda r: r["mean_ppm"])
        out.update(highest_season=high["season"], highest_season_ppm=high["mean_ppm"],
                   lowest_season=low["season"], lowest_season_ppm=low["mean_ppm"],
                   season_range_ppm=_r(high["mean_ppm"] - low["mean_ppm"]))
    return out


def model_versions(daily: list[DayStat]) -> list[dict]:
    rows = []
    for (name, version), group in _group(daily, lambda s: (s.model_name or "", s.model_version or "")).items():
        rows.append({"model_name": name or None, "model_version": version or None, "n_days": len(group),
                     "first_day": min(s.day for s in group).isoformat(),
                     "last_day": max(s.day for s in group).isoformat()})
    return rows


def true_column_interval(daily: list[DayStat]) -> dict:
    """The true column's half-width over the window: the mean of its daily regional means, the days
    that had the band, and the days skipped for lacking it (archived before issue 22)."""
    values = [s.true_column_interval_ppm for s in daily if s.true_column_interval_ppm is not None]
    return {"mean_ppm": _r(float(np.mean(values))) if values else None, "n_days": len(values),
            "days_without_band": sum(not s.true_column_band for s in daily)}


def summarise(daily: list[DayStat]) -> dict:
    """Every table of the report, from the daily statistics (no file access)."""
    if not _with_values(daily):
        span = f" ({daily[0].day} .. {daily[-1].day})" if daily else ""
        raise ValueError(f"none of the {len(daily)} archived days in the window{span} has a cell with a value")
    monthly, seasonal, annual = monthly_means(daily), seasonal_means(daily), annual_means(daily)
    monthly_clim, seasonal_clim = monthly_climatology(daily), seasonal_climatology(daily)
    return {
        "daily": [s.row() for s in daily],
        "monthly": monthly,
        "seasonal": seasonal,
        "annual": with_paper(annual),
        "monthly_climatology": monthly_clim,
        "seasonal_climatology": seasonal_clim,
        "growth": growth_rates(annual),
        "paper": paper_growth(),
        "seasonal_cycle": seasonal_cycle(monthly_clim, seasonal_clim),
        "models": model_versions(daily),
        "synthetic_days": sum(s.synthetic for s in daily),
        "n_days": len(daily),
        "true_column_interval": true_column_interval(daily),
        "needs_more_data": needs_more_data(daily, annual, monthly_clim, seasonal_clim, seasonal),
    }


# ---------------------------------------------------------------------------------------------
# figures


def _figure(width: float, height: float) -> Figure:
    # A Figure without pyplot (the Agg canvas): no global state, no display, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png")
    return path


def _block_mean(acc: MeanAccumulator, factor: int) -> np.ndarray:
    # Block sums of sums and counts: each pixel is the exact mean of its cell-days.
    if factor == 1:
        return acc.mean()
    ny, nx = acc.shape
    pad = ((0, (-ny) % factor), (0, (-nx) % factor))
    sums, counts = np.pad(acc.sums, pad), np.pad(acc.counts, pad)
    by, bx = sums.shape[0] // factor, sums.shape[1] // factor
    sums = sums.reshape(by, factor, bx, factor).sum(axis=(1, 3))
    counts = counts.reshape(by, factor, bx, factor).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _draw_outline(axes: Axes, outline: BaseGeometry) -> None:
    for polygon in getattr(outline, "geoms", [outline]):
        for ring in (polygon.exterior, *polygon.interiors):
            x, y = ring.xy
            axes.plot(x, y, color="black", linewidth=0.8)


def plot_mean_map(acc: MeanAccumulator, grid: Grid, png_path: Path | str, title: str, outline: BaseGeometry | None = None,
                  label: str = "XCO2 (ppm)", cmap: str = "viridis") -> Path:
    """A mean map as PNG: lon/lat axes, colourbar in ppm (`label`), the period and its day count in the
    title, and the region's boundary (`outline`, a shapely polygon) when it has one."""
    from matplotlib.ticker import MaxNLocator

    png_path = Path(png_path)
    factor = max(1, math.ceil(grid.nx / _MAX_MAP_PIXELS_WIDE))
    values = _block_mean(acc, factor)
    west, north = grid.west, grid.north
    east = west + values.shape[1] * factor * grid.step
    south = north - values.shape[0] * factor * grid.step
    finite = values[np.isfinite(values)]
    # Percentiles, not min/max: a few odd cells should not wash out the gradients.
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-3:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    aspect = 1 / max(math.cos(math.radians((grid.south + grid.north) / 2)), 0.1)
    height_per_width = (grid.north - grid.south) * aspect / (grid.east - grid.west)
    map_width = min(6.0, 7.5 / height_per_width)
    figure = _figure(map_width + 1.9, max(map_width * height_per_width + 1.3, 2.8))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(values), extent=(west, east, south, north), origin="upper",
                        cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axes.set_xlim(grid.west, grid.east)
    axes.set_ylim(grid.south, grid.north)
    axes.set_aspect(aspect)
    axes.set_facecolor("0.85")  # cells never estimated in the period show grey
    axes.xaxis.set_major_locator(MaxNLocator(nbins=max(2, int(map_width))))
    axes.set_xlabel("Longitude (°E)")
    axes.set_ylabel("Latitude (°N)")
    axes.set_title(f"{title}\n{acc.n_days} day{'s' if acc.n_days != 1 else ''}, {acc.first} .. {acc.last}",
                   fontsize=10)
    if outline is not None:
        _draw_outline(axes, outline)
        axes.set_xlim(grid.west, grid.east)  # the outline may reach past the box
        axes.set_ylim(grid.south, grid.north)
    colourbar_axes = axes.inset_axes((1.03, 0.0, 0.035, 1.0))
    figure.colorbar(image, cax=colourbar_axes, label=label)
    return _save(figure, png_path)


def _month_mid(month: str) -> date:
    year, m = (int(p) for p in month.split("-"))
    return date(year, m, 15)


def plot_timeseries(daily: list[dict], monthly: list[dict], png_path: Path | str, title: str,
                    window: tuple[date, date] | None = None) -> Path:
    """Daily regional means (dots) and monthly means (bars across each month, dots at mid-month)."""
    import matplotlib.dates as mdates

    figure = _figure(9.0, 4.0)
    axes = figure.add_subplot()
    points = [(date.fromisoformat(r["day"]), r["mean_ppm"]) for r in daily if r["mean_ppm"] is not None]
    # The x values are dates, which matplotlib converts through its units registry (matplotlib.dates);
    # its stubs type them as numbers only, hence the arg-type ignores below.
    axes.plot([p[0] for p in points], [p[1] for p in points], ".", color="tab:blue", alpha=0.6,  # type: ignore[arg-type]
              markersize=4, label="daily regional mean", zorder=3)
    for i, row in enumerate(monthly):
        year, m = row["year"], row["month_of_year"]
        start = date(year, m, 1)
        end = date(year + (m == 12), m % 12 + 1, 1)
        axes.hlines(row["mean_ppm"], start, end, color="tab:red", linewidth=2,  # type: ignore[arg-type]
                    label="monthly mean" if i == 0 else "")
    axes.plot([_month_mid(r["month"]) for r in monthly], [r["mean_ppm"] for r in monthly], "o-",  # type: ignore[arg-type]
              color="tab:red", markersize=3, linewidth=0.8, alpha=0.7)
    if window is not None:
        pad = timedelta(days=max(1, ((window[1] - window[0]).days + 1) // 50))
        axes.set_xlim(window[0] - pad, window[1] + pad)  # type: ignore[arg-type]
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.set_ylabel("XCO2 (ppm)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(figure, Path(png_path))


def plot_seasonal_cycle(monthly_clim: list[dict], seasonal_clim: list[dict], png_path: Path | str,
                        title: str) -> Path:
    """Mean by calendar month (Fig. 10) with the season means (Fig. 9) as horizontal bars."""
    figure = _figure(7.5, 3.8)
    axes = figure.add_subplot()
    # NaN for months without data: the line breaks there instead of bridging the gap.
    by_month = np.full(12, np.nan)
    for r in monthly_clim:
        by_month[r["month_of_year"] - 1] = r["mean_ppm"]
    axes.plot(range(1, 13), by_month, "o-", color="tab:blue", label="calendar-month mean")
    season_months = {"DJF": (0.5, 2.5), "MAM": (2.5, 5.5), "JJA": (5.5, 8.5), "SON": (8.5, 11.5)}
    for i, row in enumerate(seasonal_clim):
        lo, hi = season_months[row["season"]]
        axes.hlines(row["mean_ppm"], lo, hi, color="tab:orange", linewidth=2,
                    label="season mean" if i == 0 else "")
        if row["season"] == "DJF":  # December sits at the right-hand end
            axes.hlines(row["mean_ppm"], 11.5, 12.5, color="tab:orange", linewidth=2)
    axes.set_xticks(range(1, 13), MONTH_ABBR)
    axes.set_xlim(0.5, 12.5)
    axes.set_ylabel("XCO2 (ppm)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(figure, Path(png_path))


def scan_and_map(archive_root: Path | str, region_name: str, grid: Grid, days: list[date],
                 out_dir: Path | str, area: ReportArea | None = None) -> tuple[list[DayStat], list[MapInfo]]:
    """Scan the days once, writing each annual and season mean map to `out_dir` as it finishes.
    `area`: the cells averaged and mapped (default: the whole box)."""
    out_dir = Path(out_dir)
    area = area or ReportArea()
    maps: list[MapInfo] = []

    def write(acc: MeanAccumulator) -> None:
        if acc.kind == INTERVAL_KIND:
            path = plot_mean_map(acc, grid, out_dir / TRUE_COLUMN_MAP_PNG,
                                 f"Mean 68 % half-width of the true XCO2 column, {region_name}", area.outline,
                                 label="true column, 68 % half-width (ppm)", cmap="magma")
            mean, _, _ = regional_mean(acc.mean(), grid, area.inside)
            maps.append(MapInfo(kind=acc.kind, label=acc.label, path=str(path), n_days=acc.n_days,
                                first=str(acc.first), last=str(acc.last), mean_ppm=_r(mean)))
            return
        if acc.kind == "annual":
            name, title = f"annual_{acc.label}.png", f"Mean XCO2 {acc.label}, {region_name}"
        else:
            name = f"season_{acc.label}.png"
            title = f"Mean XCO2 {acc.label} ({SEASON_NAMES[acc.label]}, all years in the window), {region_name}"
        path = plot_mean_map(acc, grid, out_dir / name, title, area.outline)
        mean, _, _ = regional_mean(acc.mean(), grid, area.inside)
        maps.append(MapInfo(kind=acc.kind, label=acc.label, path=str(path), n_days=acc.n_days,
                            first=str(acc.first), last=str(acc.last), mean_ppm=_r(mean)))

    daily = scan_archive(archive_root, region_name, grid, days, on_map=write, area=area)
    return daily, maps


# ---------------------------------------------------------------------------------------------
# files


def write_csv(path: Path | str, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return publish_text(path, buffer.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _md_table(rows: list[dict], columns: list[tuple[str, str]], digits: dict[str, int] | None = None) -> str:
    if not rows:
        return "_none_\n"
    digits = digits or {}
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), digits.get(key, 2)) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def summary_markdown(tables: dict, maps: list[MapInfo], context: dict, figures: dict[str, str]) -> str:
    """The report as Markdown; links to the PNGs are relative (they sit next to summary.md)."""
    region = context["region"]
    first, last = context["window"]
    lines = [f"# XCO2 archive report: {region}, {first} .. {last}", ""]
    if tables["synthetic_days"]:
        lines += [f"> **DEMO OUTPUT: SYNTHETIC DATA, NOT REAL XCO2.** {tables['synthetic_days']} of the "
                  f"{tables['n_days']} archived days in this window are tagged `synthetic=true` (made from the "
                  "demo world). Nothing below describes the real atmosphere.", ""]
    calendar_days = (date.fromisoformat(last) - date.fromisoformat(first)).days + 1
    area = context.get("area") or {}
    if area.get("boundary"):
        over = (f"the {area['cells']:,} cells inside the boundary `{area['boundary']}`, {area['km2']:,} km2 (of the "
                f"box's {area['box_cells']:,} cells, {area['box_km2']:,} km2)")
    elif area:
        over = f"the whole box, {area['cells']:,} cells, {area['km2']:,} km2 (the region has no boundary)"
    else:
        over = "the whole box"
    lines += [
        f"- region: `{region}`, {context['grid']}",
        f"- averaged over: {over}",
        f"- archive: `{context['archive']}`",
        f"- days archived in the window: {tables['n_days']} of {calendar_days} "
        f"({tables['daily'][0]['day']} .. {tables['daily'][-1]['day']})",
        f"- generated: {context.get('generated', '-')}",
        "",
        "Method: the daily regional mean is the cos(latitude) area-weighted mean of the cells with a value "
        "(NaN is no data); monthly, seasonal and annual means are means of the daily means of the archived "
        "days. Seasons: DJF, MAM, JJA, SON, with **December counted in the following year's winter** "
        "(DJF 2021 = Dec 2020 + Jan-Feb 2021). `coverage` = archived days / calendar days of the period; "
        f"`partial` = under {100 * PARTIAL_BELOW:.0f} % of the days. Growth: year-over-year difference of annual "
        "means; trend: least-squares slope of the annual means.",
        "",
    ]
    if tables["needs_more_data"]:
        lines += ["## Needs more data", ""] + [f"- {note}" for note in tables["needs_more_data"]] + [""]

    annual = tables["annual"]
    paper = tables["paper"]
    lines += ["## Annual means (Table 6)", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"]), "cells": _pct(r["mean_cell_coverage"])}
                         for r in annual],
                        [("year", "year"), ("mean_ppm", "mean (ppm)"), ("paper_ppm", "paper (ppm)"),
                         ("minus_paper_ppm", "minus paper"), ("n_days", "days"),
                         ("day_coverage", "coverage"), ("partial", "partial"), ("cells", "area with values")]),
              f"`paper`: {paper['citation']}, annual means over {paper['area']} {paper['years']} (mean "
              f"{paper['table_mean_ppm']:.2f} ppm); comparable only when this report averages over that province.",
              ""]

    growth = tables["growth"]
    lines += ["## Growth rates", ""]
    if growth["year_over_year"]:
        lines.append(_md_table(growth["year_over_year"],
                               [("from_year", "from"), ("to_year", "to"), ("growth_ppm_per_yr", "growth (ppm/yr)"),
                                ("partial_years", "partial years")]))
    trend = growth["linear_trend"]
    if trend:
        stderr = f" ± {trend['stderr_ppm_per_yr']:.2f}" if trend["stderr_ppm_per_yr"] is not None else ""
        lines += [f"Linear trend {trend['years']} ({trend['n_years']} years): **{trend['slope_ppm_per_yr']:.2f}"
                  f"{stderr} ppm/yr**; mean growth (last - first) / years: {trend['mean_growth_ppm_per_yr']:.2f} "
                  "ppm/yr." + (f" Partial years: {', '.join(map(str, trend['partial_years']))}."
                               if trend["partial_years"] else ""), ""]
    else:
        lines += ["_Needs at least 2 calendar years with archived days (see above)._", ""]
    lines += [f"Paper, {paper['area']} {paper['years']}: {paper['text_ppm_per_yr']:.2f} ppm/yr as its text states it; "
              f"the least-squares slope of its Table 6 means is {paper['table_slope_ppm_per_yr']:.2f} ppm/yr.", ""]

    cycle = tables["seasonal_cycle"]
    lines += ["## Seasonal means (Fig. 9)", "", "All years in the window:", "",
              _md_table(tables["seasonal_climatology"],
                        [("season", "season"), ("name", ""), ("mean_ppm", "mean (ppm)"), ("n_days", "days"),
                         ("n_seasons", "seasons")])]
    if "highest_season" in cycle:
        lines += [f"Highest: {cycle['highest_season']} {cycle['highest_season_ppm']:.2f} ppm; lowest: "
                  f"{cycle['lowest_season']} {cycle['lowest_season_ppm']:.2f} ppm; range "
                  f"{cycle['season_range_ppm']:.2f} ppm.", ""]
    lines += ["Each season:", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"])} for r in tables["seasonal"]],
                        [("label", "season"), ("mean_ppm", "mean (ppm)"), ("n_days", "days"),
                         ("day_coverage", "coverage"), ("partial", "partial"), ("first_day", "first"),
                         ("last_day", "last")])]

    lines += ["## Monthly means (Fig. 10)", "", "By calendar month, all years in the window:", "",
              _md_table(tables["monthly_climatology"],
                        [("month", "month"), ("mean_ppm", "mean (ppm)"), ("n_days", "days"), ("n_years", "years")])]
    if "peak_month" in cycle:
        lines += [f"Peak {cycle['peak_month']} {cycle['peak_ppm']:.2f} ppm, trough {cycle['trough_month']} "
                  f"{cycle['trough_ppm']:.2f} ppm: seasonal amplitude {cycle['amplitude_ppm']:.2f} ppm.", ""]
    lines += ["Each month:", "",
              _md_table([{**r, "day_coverage": _pct(r["day_coverage"])} for r in tables["monthly"]],
                        [("month", "month"), ("mean_ppm", "mean (ppm)"), ("std_daily_ppm", "std of days"),
                         ("n_days", "days"), ("day_coverage", "coverage"), ("partial", "partial")])]

    lines += ["## Figures", ""]
    for name, caption in (("timeseries", "Daily regional mean and monthly means"),
                          ("seasonal_cycle", "Mean by calendar month and season")):
        if name in figures:
            lines.append(f"- {caption}: [{Path(figures[name]).name}]({Path(figures[name]).name})")
    for m in maps:
        if m.kind == INTERVAL_KIND:
            what = "mean 68 % half-width of the true column"
        elif m.kind == "annual":
            what = f"annual mean {m.label}"
        else:
            what = f"{m.label} ({SEASON_NAMES[m.label]}) mean"
        lines.append(f"- Map, {what}, {m.n_days} days ({m.first} .. {m.last}): "
                     f"[{Path(m.path).name}]({Path(m.path).name})")
    lines.append("")
    for name in ("timeseries", "seasonal_cycle"):
        if name in figures:
            lines += [f"![{name}]({Path(figures[name]).name})", ""]
    for m in maps:
        lines += [f"![{m.kind} {m.label}]({Path(m.path).name})", ""]

    interval = tables.get("true_column_interval") or {}
    lines += ["## The true column's interval", ""]
    if interval.get("n_days"):
        lines.append(f"Mean 68 % half-width of the true XCO2 column over the area: **{interval['mean_ppm']:.2f} ppm** "
                     f"({interval['n_days']} days; map `{TRUE_COLUMN_MAP_PNG}`). It is the uncertainty of the "
                     "column itself (background, network and field), without the retrieval noise that band 2 "
                     "adds for comparing with a new retrieval (docs/data.md).")
    else:
        lines.append("No archived day of the window has the true column's interval band.")
    if interval.get("days_without_band"):
        lines.append(f"{interval['days_without_band']} day(s) archived without that band (before it existed) "
                     "were skipped for it.")
    lines += [""]
    lines += ["## Models that made these days", "",
              _md_table(tables["models"], [("model_name", "model"), ("model_version", "version"),
                                           ("n_days", "days"), ("first_day", "first"), ("last_day", "last")])]
    lines += ["Tables as CSV: " + ", ".join(f"[{name}]({name})" for name in CSV_FILES.values()), ""]
    return "\n".join(lines)


GROWTH_COLUMNS = ["kind", "period", "growth_ppm_per_yr", "stderr_ppm_per_yr", "partial_years"]


def _growth_rows(growth: dict) -> list[dict]:
    rows = [{"kind": "year_over_year", "period": f"{r['from_year']}-{r['to_year']}",
             "growth_ppm_per_yr": r["growth_ppm_per_yr"], "stderr_ppm_per_yr": None,
             "partial_years": r["partial_years"]} for r in growth["year_over_year"]]
    trend = growth["linear_trend"]
    if trend:
        rows.append({"kind": "linear_trend", "period": trend["years"], "growth_ppm_per_yr": trend["slope_ppm_per_yr"],
                     "stderr_ppm_per_yr": trend["stderr_ppm_per_yr"], "partial_years": bool(trend["partial_years"])})
    return rows


def _remove_stale_maps(out_dir: Path, keep: set[str]) -> None:
    # A rerun into the same folder must not leave maps of years no longer in the report.
    for pattern in ("annual_*.png", "season_*.png", TRUE_COLUMN_MAP_PNG):
        for path in out_dir.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def write_outputs(out_dir: Path | str, tables: dict, maps: list[MapInfo], context: dict) -> dict:
    """CSV tables, the time-series figures, summary.md and report.json, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csvs = {}
    for key, name in CSV_FILES.items():
        rows = _growth_rows(tables["growth"]) if key == "growth" else tables[key]
        csvs[key] = str(write_csv(out_dir / name, rows, GROWTH_COLUMNS if key == "growth" else None))
    suffix = " (SYNTHETIC demo output)" if tables["synthetic_days"] else ""
    first, last = context["window"]
    figures = {
        "timeseries": str(plot_timeseries(tables["daily"], tables["monthly"], out_dir / TIMESERIES_PNG,
                                          f"Regional mean XCO2, {context['region']}, {first} .. {last}{suffix}",
                                          (date.fromisoformat(first), date.fromisoformat(last)))),
        "seasonal_cycle": str(plot_seasonal_cycle(tables["monthly_climatology"], tables["seasonal_climatology"],
                                                  out_dir / SEASONAL_CYCLE_PNG,
                                                  f"Seasonal cycle, {context['region']}, {first} .. {last}{suffix}")),
    }
    _remove_stale_maps(out_dir, {Path(m.path).name for m in maps})
    markdown = summary_markdown(tables, maps, context, figures)
    summary = publish_text(out_dir / SUMMARY_FILE, markdown)
    result = {
        "out_dir": str(out_dir),
        "summary": str(summary),
        "csv": csvs,
        "figures": figures,
        "maps": [asdict(m) for m in maps],
        "markdown": markdown,
        "context": context,
        "tables": tables,
    }
    report_json = out_dir / "report.json"
    publish_text(report_json, json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2,
                                         default=str))
    result["json"] = str(report_json)
    return result


def report_context(archive_root: Path | str, region_name: str, grid: Grid, start: date, end: date,
                   area: ReportArea | None = None) -> dict:
    from datetime import datetime, timezone

    return {
        "area": (area or ReportArea()).describe(grid),
        "region": region_name,
        "window": [start.isoformat(), end.isoformat()],
        "grid": f"{grid.west:.2f}-{grid.east:.2f} E, {grid.south:.2f}-{grid.north:.2f} N, "
                f"{grid.nx} x {grid.ny} cells of {grid.step} degree",
        "archive": str(region_dir(archive_root, region_name)),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_report(archive_root: Path | str, region_name: str, grid: Grid, start: str | date, end: str | date,
                 out_dir: Path | str, area: ReportArea | None = None) -> dict:
    """The whole report in one call (the flow runs the same steps as tasks); `area` as scan_and_map."""
    first, last = report_window(start, end)
    days = select_days(archive_root, region_name, first, last)
    daily, maps = scan_and_map(archive_root, region_name, grid, days, out_dir, area)
    tables = summarise(daily)
    return write_outputs(out_dir, tables, maps, report_context(archive_root, region_name, grid, first, last, area))
