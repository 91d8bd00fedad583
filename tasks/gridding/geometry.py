"""The region's 0.01 degree grid: cell numbering, coordinates and the GeoTIFF transform.

Rows run north to south (row 0 is the northern edge, as in a north-up GeoTIFF), columns west to
east; a cell's id is `row * nx + col`. Edges are snapped outwards to multiples of the step so
every region's pixels line up with one global lattice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from affine import Affine


class Box(Protocol):
    """A bounding box in degrees (WGS84), such as tasks.settings.Region; the grid needs no more of a region."""

    @property
    def west(self) -> float: ...
    @property
    def south(self) -> float: ...
    @property
    def east(self) -> float: ...
    @property
    def north(self) -> float: ...


def _snap(value: float, step: float, up: bool) -> float:
    # Rounding to 1e-9 first keeps 92.35 / 0.01 from becoming 9234.999999.
    q = round(value / step, 6)
    return (math.ceil(q) if up else math.floor(q)) * step


@dataclass(frozen=True)
class Grid:
    west: float
    south: float
    east: float
    north: float
    step: float

    @classmethod
    def for_region(cls, region: Box, step: float) -> "Grid":
        return cls(
            west=round(_snap(region.west, step, up=False), 9),
            south=round(_snap(region.south, step, up=False), 9),
            east=round(_snap(region.east, step, up=True), 9),
            north=round(_snap(region.north, step, up=True), 9),
            step=step,
        )

    @property
    def nx(self) -> int:
        return int(round((self.east - self.west) / self.step))

    @property
    def ny(self) -> int:
        return int(round((self.north - self.south) / self.step))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def n_cells(self) -> int:
        return self.nx * self.ny

    @property
    def transform(self) -> Affine:
        return Affine(self.step, 0.0, self.west, 0.0, -self.step, self.north)

    @property
    def lons(self) -> np.ndarray:
        """Cell-centre longitudes, west to east."""
        return self.west + (np.arange(self.nx) + 0.5) * self.step

    @property
    def lats(self) -> np.ndarray:
        """Cell-centre latitudes, north to south."""
        return self.north - (np.arange(self.ny) + 0.5) * self.step

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        lat = np.asarray(lat)
        lon = np.asarray(lon)
        return (lon >= self.west) & (lon < self.east) & (lat > self.south) & (lat <= self.north)

    def rowcol(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the cells holding the points (may fall outside the grid)."""
        row = np.floor((self.north - np.asarray(lat, dtype=np.float64)) / self.step).astype(np.int64)
        col = np.floor((np.asarray(lon, dtype=np.float64) - self.west) / self.step).astype(np.int64)
        return row, col

    def cell_id(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return np.asarray(row, dtype=np.int64) * self.nx + np.asarray(col, dtype=np.int64)

    def cell_rowcol(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cell = np.asarray(cell, dtype=np.int64)
        return cell // self.nx, cell % self.nx

    def centre(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) of the centres of the cells at (row, col); a row or column may lie outside
        the grid (a footprint over its edge), so they are not read from `lats` and `lons`."""
        return self.north - (np.asarray(row) + 0.5) * self.step, self.west + (np.asarray(col) + 0.5) * self.step
