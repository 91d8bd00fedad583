"""One source's good soundings of one day onto the 0.01 degree grid.

A sounding fills every cell its footprint covers, judged by the cell centre:

* OCO footprints are quadrilaterals given by their four vertices (about 1.29 x 2.25 km, so 1-4
  cells); a cell is covered when its centre lies inside the polygon.
* GOSAT footprints are circles of `footprint_diameter_km` (10.5 km, about 80 cells at 30N); a
  cell is covered when its centre lies within the radius, measured with the ellipsoid's km per
  degree at the sounding's latitude.
* A sounding that covers no cell centre (a tiny or skewed footprint), or whose footprint is
  missing or corrupt, fills the cell holding its centre so that no good sounding is lost.

Coverage is decided on the global 0.01 degree lattice before clipping to the grid, so a cell's
value does not depend on where a region's edge happens to fall; covered cells outside the grid
are then dropped. Soundings sharing a cell are combined by inverse variance.

Each cell also carries `weight`, the number of independent soundings it stands for: the sum,
over the soundings averaged into it, of 1 / (the number of cells that sounding covers on the
global lattice). A GOSAT sounding spread over ~80 cells thus counts 1/80 in each, an OCO one
~1/3, and a day's weights add up to its number of soundings (less the part of a footprint that
falls outside the grid), so training and fit counts see each sounding once.

Everything is vectorised over soundings: each footprint's bounding box of candidate cells is
expanded into one flat array (np.repeat), the candidates are tested in one pass and the
survivors aggregated with np.bincount.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.gridding.geometry import Grid
from tasks.gridding.soundings import VERTEX_LAT, VERTEX_LON

CELL_COLUMNS = ["cell", "xco2", "xco2_uncertainty", "n_soundings", "weight"]
CELL_DTYPES = {"cell": "int64", "xco2": "float64", "xco2_uncertainty": "float64",
               "n_soundings": "int32", "weight": "float64"}
# Each sounding's footprint on the grid, one row per covered cell: what the GOSAT -> OCO fit
# collocates (tasks.fusion.merge.collocations). weight = 1 / cells the sounding covers.
FOOTPRINT_COLUMNS = ["sounding", "cell", "xco2", "xco2_uncertainty", "weight"]
FOOTPRINT_DTYPES = {"sounding": "int32", "cell": "int64", "xco2": "float64", "xco2_uncertainty": "float64",
                    "weight": "float64"}

# WGS84: km per degree must follow the ellipsoid's radii of curvature at the footprint's
# latitude, or a 10.5 km circle at 30N is stretched by ~0.5% north-south.
WGS84_A_KM = 6378.137
WGS84_E2 = 6.69437999014e-3

# An OCO footprint spans ~0.02 degree; vertices further apart than this are corrupt (or wrap
# the antimeridian) and would expand into a huge candidate box, so the sounding falls back to
# its centre cell instead.
MAX_POLYGON_SPAN_DEG = 0.1

_REQUIRED = ["latitude", "longitude", "xco2", "xco2_uncertainty"]


def km_per_degree(latitude: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(km per degree of latitude, km per degree of longitude) on the WGS84 ellipsoid."""
    phi = np.radians(np.asarray(latitude, dtype=np.float64))
    w = 1.0 - WGS84_E2 * np.sin(phi) ** 2
    meridional = WGS84_A_KM * (1.0 - WGS84_E2) / w**1.5
    prime_vertical = WGS84_A_KM / np.sqrt(w)
    per_deg = np.pi / 180.0
    return meridional * per_deg, prime_vertical * np.cos(phi) * per_deg


def empty_cells() -> pd.DataFrame:
    """A gridded day with no covered cell, with the columns and dtypes of a full one."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CELL_DTYPES.items()})


def grid_soundings(soundings: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Average one source's good soundings of one day into the cells their footprints cover.

    Returns one row per covered cell, sorted by cell: cell (int64), xco2 (float64, ppm),
    xco2_uncertainty (float64, ppm, 1 sigma of the weighted mean), n_soundings (int32),
    weight (float64, independent soundings the cell stands for; see the module's note).
    Soundings sharing a cell are weighted by 1 / xco2_uncertainty**2.
    """
    sounding, cell, n_cells = footprint_cells(soundings, grid)
    if len(sounding) == 0:
        return empty_cells()
    return _inverse_variance_cells(
        cell,
        soundings["xco2"].to_numpy(np.float64)[sounding],
        soundings["xco2_uncertainty"].to_numpy(np.float64)[sounding],
        1.0 / n_cells[sounding],
    )


def empty_footprints() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in FOOTPRINT_DTYPES.items()})


def sounding_footprints(soundings: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """Each sounding's covered cells inside the grid (FOOTPRINT_COLUMNS), sorted by sounding
    then cell; `sounding` is the row's position in `soundings`."""
    sounding, cell, n_cells = footprint_cells(soundings, grid)
    if len(sounding) == 0:
        return empty_footprints()
    order = np.lexsort((cell, sounding))
    sounding, cell = sounding[order], cell[order]
    return pd.DataFrame({
        "sounding": sounding.astype(np.int32),
        "cell": cell,
        "xco2": soundings["xco2"].to_numpy(np.float64)[sounding],
        "xco2_uncertainty": soundings["xco2_uncertainty"].to_numpy(np.float64)[sounding],
        "weight": 1.0 / n_cells[sounding],
    })


def footprint_cells(soundings: pd.DataFrame, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which grid cells each sounding covers: (sounding index, cell id) pairs inside the grid, and
    per sounding the number of cells it covers on the global lattice (at least 1, outside the
    grid included, so a footprint cut by the region's edge counts only its inside share)."""
    _check_soundings(soundings)
    n = len(soundings)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)

    lat = soundings["latitude"].to_numpy(np.float64)
    lon = soundings["longitude"].to_numpy(np.float64)

    diameter = _column(soundings, "footprint_diameter_km", n)
    vertex_lat = np.column_stack([_column(soundings, c, n) for c in VERTEX_LAT])
    vertex_lon = np.column_stack([_column(soundings, c, n) for c in VERTEX_LON])

    is_circle = np.isfinite(diameter) & (diameter > 0)
    is_polygon = (
        ~is_circle
        & np.isfinite(vertex_lat).all(axis=1)
        & np.isfinite(vertex_lon).all(axis=1)
        & (np.ptp(vertex_lat, axis=1) <= MAX_POLYGON_SPAN_DEG)
        & (np.ptp(vertex_lon, axis=1) <= MAX_POLYGON_SPAN_DEG)
    )

    polygon_pairs = _polygon_cover(grid, np.flatnonzero(is_polygon), vertex_lat, vertex_lon)
    circle_pairs = _circle_cover(grid, np.flatnonzero(is_circle), lat, lon, diameter)
    sounding = np.concatenate([polygon_pairs[0], circle_pairs[0]])
    row = np.concatenate([polygon_pairs[1], circle_pairs[1]])
    col = np.concatenate([polygon_pairs[2], circle_pairs[2]])

    # Point soundings and footprints that caught no cell centre fall back to the centre cell.
    uncovered = np.bincount(sounding, minlength=n) == 0
    fallback = np.flatnonzero(uncovered)
    fallback_row, fallback_col = grid.rowcol(lat[fallback], lon[fallback])
    sounding = np.concatenate([sounding, fallback])
    row = np.concatenate([row, fallback_row])
    col = np.concatenate([col, fallback_col])

    n_cells = np.bincount(sounding, minlength=n)
    inside = (row >= 0) & (row < grid.ny) & (col >= 0) & (col < grid.nx)
    sounding, row, col = sounding[inside], row[inside], col[inside]
    return sounding, grid.cell_id(row, col).astype(np.int64), n_cells


def _check_soundings(soundings: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in soundings.columns]
    if missing:
        raise ValueError(f"grid_soundings: soundings lack column(s) {missing}")
    if "source" in soundings.columns and soundings["source"].nunique() > 1:
        # OCO-2 and OCO-3 are merged by a plain mean and GOSAT by a fit, never by inverse
        # variance, so mixing sources here would silently bypass the fusion steps.
        raise ValueError(
            "grid_soundings grids one source at a time; got "
            f"{sorted(soundings['source'].unique())}"
        )
    xco2 = soundings["xco2"].to_numpy(np.float64)
    sigma = soundings["xco2_uncertainty"].to_numpy(np.float64)
    if not np.isfinite(xco2).all():
        raise ValueError("grid_soundings: xco2 holds NaN/inf; pass usable_soundings(...) output")
    if not (np.isfinite(sigma) & (sigma > 0)).all():
        raise ValueError(
            "grid_soundings: xco2_uncertainty must be finite and > 0 for inverse-variance "
            "weighting; pass usable_soundings(...) output"
        )


def _column(soundings: pd.DataFrame, name: str, n: int) -> np.ndarray:
    # Hand-built or GOSAT-only tables may omit the footprint geometry; treat it as missing.
    if name in soundings.columns:
        return soundings[name].to_numpy(np.float64)
    return np.full(n, np.nan)


def _candidate_cells(
    grid: Grid, south: np.ndarray, north: np.ndarray, west: np.ndarray, east: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(footprint index, row, col) of every cell whose centre may lie in each footprint's box.

    The box is widened to whole cells on each side (floor/ceil) so rounding can never drop a
    cell whose centre sits on the box edge; the exact test that follows discards the extras.
    """
    row0 = np.floor((grid.north - north) / grid.step - 0.5).astype(np.int64)
    row1 = np.ceil((grid.north - south) / grid.step - 0.5).astype(np.int64)
    col0 = np.floor((west - grid.west) / grid.step - 0.5).astype(np.int64)
    col1 = np.ceil((east - grid.west) / grid.step - 0.5).astype(np.int64)
    n_rows = row1 - row0 + 1
    n_cols = col1 - col0 + 1
    per_footprint = n_rows * n_cols
    footprint = np.repeat(np.arange(len(row0)), per_footprint)
    first = np.cumsum(per_footprint) - per_footprint
    k = np.arange(per_footprint.sum()) - first[footprint]
    row = row0[footprint] + k // n_cols[footprint]
    col = col0[footprint] + k % n_cols[footprint]
    return footprint, row, col


_NO_PAIRS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _polygon_cover(
    grid: Grid, which: np.ndarray, vertex_lat: np.ndarray, vertex_lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sounding, row, col) for cells whose centre lies inside an OCO quadrilateral."""
    if len(which) == 0:
        return _NO_PAIRS
    vy = vertex_lat[which]
    vx = vertex_lon[which]
    footprint, row, col = _candidate_cells(
        grid, vy.min(axis=1), vy.max(axis=1), vx.min(axis=1), vx.max(axis=1)
    )
    py, px = grid.centre(row, col)
    vy = vy[footprint]
    vx = vx[footprint]
    # Even-odd ray casting: right for any simple quadrilateral whatever the vertex order's
    # handedness; in degrees, since the test is unchanged by the km/degree scaling.
    inside = np.zeros(len(footprint), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(4):
            j = (i - 1) % 4
            yi, yj, xi, xj = vy[:, i], vy[:, j], vx[:, i], vx[:, j]
            straddles = (yi > py) != (yj > py)
            x_cross = xi + (py - yi) * (xj - xi) / (yj - yi)
            inside ^= straddles & (px < x_cross)
    return which[footprint[inside]], row[inside], col[inside]


def _circle_cover(
    grid: Grid, which: np.ndarray, lat: np.ndarray, lon: np.ndarray, diameter_km: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sounding, row, col) for cells whose centre lies within a circular footprint."""
    if len(which) == 0:
        return _NO_PAIRS
    clat, clon = lat[which], lon[which]
    radius = diameter_km[which] / 2.0
    km_lat, km_lon = km_per_degree(clat)
    half_lat = radius / km_lat
    half_lon = radius / km_lon
    footprint, row, col = _candidate_cells(
        grid, clat - half_lat, clat + half_lat, clon - half_lon, clon + half_lon
    )
    py, px = grid.centre(row, col)
    dy = (py - clat[footprint]) * km_lat[footprint]
    dx = (px - clon[footprint]) * km_lon[footprint]
    inside = dy * dy + dx * dx <= radius[footprint] ** 2
    return which[footprint[inside]], row[inside], col[inside]


def _inverse_variance_cells(
    cell: np.ndarray, xco2: np.ndarray, sigma: np.ndarray, share: np.ndarray
) -> pd.DataFrame:
    cells, slot = np.unique(cell, return_inverse=True)
    weight = 1.0 / sigma**2
    sum_w = np.bincount(slot, weights=weight)
    # Weighting deviations from a reference keeps ~400 ppm magnitudes out of the sums.
    reference = float(np.median(xco2))
    sum_wx = np.bincount(slot, weights=weight * (xco2 - reference))
    count = np.bincount(slot)
    return pd.DataFrame({
        "cell": cells.astype(np.int64),
        "xco2": reference + sum_wx / sum_w,
        "xco2_uncertainty": np.sqrt(1.0 / sum_w),
        "n_soundings": count.astype(np.int32),
        "weight": np.bincount(slot, weights=share),
    })
