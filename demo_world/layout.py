"""Where everything of a demo world lies: extents, raster lattices, days and file paths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from affine import Affine

from tasks.gridding.geometry import Grid
from tasks.settings import Region

STATIC_MARGIN_DEG = 0.5  # neighbourhood features need the cells around the region
ERA5_STEP_DEG = 0.25
GPW_STEP_DEG = 2.5 / 60.0  # 2.5 arc-minutes, like GPW's coarser product


@dataclass(frozen=True)
class RasterGrid:
    """A north-up lattice of pixels: origin at the north-west corner, square pixels."""

    west: float
    north: float
    res: float
    width: int
    height: int

    @classmethod
    def covering(cls, west: float, south: float, east: float, north: float, res: float
                 ) -> "RasterGrid":
        """Edges snapped outwards to multiples of `res` (one global lattice per resolution)."""
        def snap(v: float, up: bool) -> float:
            q = round(v / res, 6)
            return (math.ceil(q) if up else math.floor(q)) * res
        w, s, e, n = snap(west, False), snap(south, False), snap(east, True), snap(north, True)
        return cls(round(w, 9), round(n, 9), res, int(round((e - w) / res)),
                   int(round((n - s) / res)))

    @classmethod
    def points_covering(cls, west: float, south: float, east: float, north: float, step: float
                        ) -> "RasterGrid":
        """A lattice whose pixel CENTRES are the multiples of `step` spanning the box, like
        ERA5's grid points (a request's area returns the points on or inside it)."""
        w = math.floor(round(west / step, 6)) * step
        e = math.ceil(round(east / step, 6)) * step
        s = math.floor(round(south / step, 6)) * step
        n = math.ceil(round(north / step, 6)) * step
        return cls(round(w - step / 2, 9), round(n + step / 2, 9), step,
                   int(round((e - w) / step)) + 1, int(round((n - s) / step)) + 1)

    @property
    def east(self) -> float:
        return self.west + self.width * self.res

    @property
    def south(self) -> float:
        return self.north - self.height * self.res

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def lats(self) -> np.ndarray:
        """Pixel-centre latitudes, north to south."""
        return self.north - (np.arange(self.height) + 0.5) * self.res

    @property
    def lons(self) -> np.ndarray:
        return self.west + (np.arange(self.width) + 0.5) * self.res

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, self.west, 0.0, -self.res, self.north)

    def refined(self, factor: int) -> "RasterGrid":
        """The same extent with pixels `factor` times smaller (aligned sub-pixels)."""
        return RasterGrid(self.west, self.north, self.res / factor, self.width * factor,
                          self.height * factor)


def expanded(region: Region, margin: float) -> tuple[float, float, float, float]:
    return (max(region.west - margin, -180.0), max(region.south - margin, -90.0),
            min(region.east + margin, 180.0), min(region.north + margin, 90.0))


@dataclass(frozen=True)
class WorldLayout:
    root: Path
    region: Region
    start: date
    end: date
    grid_step: float

    # ---- extents --------------------------------------------------------------------------
    @property
    def grid(self) -> Grid:
        """The region's analysis grid: the truth GeoTIFFs are exactly this."""
        return Grid.for_region(self.region, self.grid_step)

    @property
    def margin_box(self) -> tuple[float, float, float, float]:
        return expanded(self.region, STATIC_MARGIN_DEG)

    @property
    def cells(self) -> RasterGrid:
        """Region plus margin at the grid step: where the truth is computed and soundings fall.
        The region grid is an aligned window of it (both snap to multiples of the step)."""
        return RasterGrid.covering(*self.margin_box, self.grid_step)

    @property
    def region_window(self) -> tuple[slice, slice]:
        g, c = self.grid, self.cells
        r0 = int(round((c.north - g.north) / self.grid_step))
        c0 = int(round((g.west - c.west) / self.grid_step))
        return slice(r0, r0 + g.ny), slice(c0, c0 + g.nx)

    @property
    def elevation_raster(self) -> RasterGrid:
        return self.cells.refined(2)  # finer than the grid, like SRTM

    @property
    def ndvi_raster(self) -> RasterGrid:
        return self.cells.refined(2)  # 250 m-ish, like MOD13Q1

    @property
    def landcover_raster(self) -> RasterGrid:
        return self.cells.refined(4)  # ~300 m-ish and finer than NDVI, like ESA CCI

    @property
    def population_raster(self) -> RasterGrid:
        # Coarser than the grid, like GPW at 2.5': several grid steps per pixel if the grid is
        # coarse itself.
        res = GPW_STEP_DEG * max(1, math.ceil(1.5 * self.grid_step / GPW_STEP_DEG))
        return RasterGrid.covering(*self.margin_box, res)

    @property
    def era5_raster(self) -> RasterGrid:
        return RasterGrid.points_covering(*self.margin_box, ERA5_STEP_DEG)

    # ---- days -----------------------------------------------------------------------------
    @property
    def days(self) -> list[date]:
        n = (self.end - self.start).days + 1
        return [self.start + timedelta(days=i) for i in range(n)]

    @property
    def era5_days(self) -> list[date]:
        """One more day than the window: its 00 UTC step closes the last day's accumulations."""
        return self.days + [self.end + timedelta(days=1)]

    # ---- paths ----------------------------------------------------------------------------
    @property
    def remote(self) -> Path:
        return self.root / "remote"

    def source_dir(self, source: str) -> Path:
        return self.remote / source

    @property
    def static_dir(self) -> Path:
        return self.remote / "static"

    def truth_path(self, day: date) -> Path:
        return truth_path(self.root, day)

    def ndvi_path(self, year: int, doy: int) -> Path:
        return self.static_dir / "ndvi" / f"ndvi_{year}{doy:03d}.tif"


def truth_path(root: Path, day: date) -> Path:
    return Path(root) / "truth" / f"xco2_truth_{day:%Y%m%d}.tif"
