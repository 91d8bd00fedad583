"""One pass over the archive: each day's area-weighted regional mean and tags (`scan_archive`,
`regional_mean`, `DayStat`), and the per-cell mean maps built day by day (`MeanAccumulator`) over
the report's area (`ReportArea`: the region's boundary, or the whole box)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import rasterio

from tasks.analysis.report.window import SEASONS, season_of
from tasks.archive import day_cog_path
from tasks.archive.cog import TRUE_COLUMN_BAND, band_index
from tasks.gridding.geometry import Grid
from tasks.regions.boundary import boundary_mask, read_boundary

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tasks.settings import Region

XCO2_BAND_INDEX = 1
EARTH_RADIUS_KM = 6371.0072  # authalic: a sphere of the WGS84 ellipsoid's area
INTERVAL_KIND = "true_column_interval"


def rounded(value: float | None, digits: int = 3) -> float | None:
    """`value` to `digits` decimals for the tables; None for a missing or non-finite one (an empty cell)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


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
        return {"day": self.day.isoformat(), "mean_ppm": rounded(self.mean_ppm), "valid_cells": self.valid_cells,
                "coverage": rounded(self.coverage, 4), "model_name": self.model_name,
                "model_version": self.model_version, "synthetic": self.synthetic,
                "true_column_interval_ppm": rounded(self.true_column_interval_ppm)}


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
