"""Static covariates (Table 2) on the region's grid: area-weighted, then neighbourhood means.

Inputs are GeoTIFFs in any CRS and resolution, finer or coarser than the grid:
`elevation.tif` (m), `population.tif` (people/km2), `landcover.tif` (ESA-CCI-like classes,
see LANDCOVER_CLASSES), `ndvi/ndvi_YYYYDDD.tif` (16-day composites, MOD13Q1 scaling). They are
averaged onto the grid by area (GDAL's `average`), on a grid extended by a margin so the widest
neighbourhood window is not cut at the region's edge, then cropped.

Outputs, under `<region_dir>/covariates/`: `static.npy` [29, ny, nx] float32 in STATIC_NAMES
order, `ndvi/ndvi_YYYYDDD.npy` [5, ny, nx], and `static.json` describing both.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from tasks.atomic import save_npy, write_json
from tasks.features import FEATURE_SET_VERSION, LANDCOVER_CLASSES, NDVI_NAMES, SCALES_KM, STATIC_NAMES
from tasks.grid import Grid

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
KM_PER_DEGREE = 111.32
NDVI_NAME = re.compile(r"ndvi_(\d{4})(\d{3})\.tif$")
NDVI_COMPOSITE_DAYS = 16


class CovariateError(ValueError):
    pass


def window_cells(km: float, step: float) -> int:
    """Odd window width in cells covering about `km` kilometres."""
    n = max(1, int(round(km / (step * KM_PER_DEGREE))))
    return n if n % 2 == 1 else n + 1


def extended_grid(grid: Grid) -> tuple[Grid, int]:
    margin = window_cells(max(SCALES_KM), grid.step) // 2 + 1
    pad = margin * grid.step
    ext = Grid(
        west=round(grid.west - pad, 9),
        south=round(grid.south - pad, 9),
        east=round(grid.east + pad, 9),
        north=round(grid.north + pad, 9),
        step=grid.step,
    )
    return ext, margin


def _crop(a: np.ndarray, margin: int) -> np.ndarray:
    return a[..., margin:-margin, margin:-margin]


def area_weighted(path: Path, grid: Grid, band: int = 1, scale: float = 1.0,
                  valid_range: tuple[float, float] | None = None) -> np.ndarray:
    """One band of a GeoTIFF averaged by area onto `grid` (NaN where no data)."""
    if not path.is_file():
        raise CovariateError(f"{path}: static covariate file is missing")
    try:
        with rasterio.open(path) as src:
            data = src.read(band).astype(np.float32)
            nodata = src.nodata
            src_transform, src_crs = src.transform, src.crs or WGS84
    except rasterio.errors.RasterioIOError as exc:
        raise CovariateError(f"{path}: not a readable GeoTIFF ({exc})") from None
    if nodata is not None:
        data[data == nodata] = np.nan
    data *= scale
    if valid_range is not None:
        data[(data < valid_range[0]) | (data > valid_range[1])] = np.nan
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(
        data, out, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
        dst_transform=grid.transform, dst_crs=WGS84, dst_nodata=np.nan,
        resampling=Resampling.average,
    )
    return out


def class_fractions(path: Path, grid: Grid, classes: int) -> np.ndarray:
    """Area fraction of each class 1..classes in every cell: [classes, ny, nx]."""
    with rasterio.open(path) as src:
        labels = src.read(1)
        nodata = src.nodata
        src_transform, src_crs = src.transform, src.crs or WGS84
    valid = labels != (nodata if nodata is not None else 0)
    out = np.full((classes,) + grid.shape, np.nan, dtype=np.float32)
    for k in range(classes):
        indicator = np.where(valid, (labels == k + 1).astype(np.float32), np.nan)
        reproject(
            indicator, out[k], src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
            dst_transform=grid.transform, dst_crs=WGS84, dst_nodata=np.nan,
            resampling=Resampling.average,
        )
    return out


def neighbourhood_mean(a: np.ndarray, width: int) -> np.ndarray:
    """NaN-aware moving mean over a width x width window."""
    valid = np.isfinite(a)
    filled = np.where(valid, a, 0.0).astype(np.float64)
    num = ndimage.uniform_filter(filled, size=width, mode="constant")
    den = ndimage.uniform_filter(valid.astype(np.float64), size=width, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-9, num / den, np.nan).astype(np.float32)


def neighbourhood_std(a: np.ndarray, width: int) -> np.ndarray:
    mean = neighbourhood_mean(a, width)
    mean_sq = neighbourhood_mean(a.astype(np.float64) ** 2, width)
    return np.sqrt(np.clip(mean_sq - mean.astype(np.float64) ** 2, 0, None)).astype(np.float32)


def slope_degrees(elevation: np.ndarray, grid: Grid) -> np.ndarray:
    lat = np.deg2rad(grid.lats)[:, None]
    dy = grid.step * KM_PER_DEGREE * 1000.0
    dx = dy * np.cos(lat)
    gy, gx = np.gradient(np.nan_to_num(elevation, nan=float(np.nanmean(elevation))))
    return np.degrees(np.arctan(np.hypot(gx / dx, gy / dy))).astype(np.float32)


def _fill_nan(a: np.ndarray) -> np.ndarray:
    """Cells with no data take the nearest valid value (the model needs finite inputs)."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return a
    if bad.all():
        return np.zeros_like(a)
    idx = ndimage.distance_transform_edt(bad, return_distances=False, return_indices=True)
    return a[tuple(idx)]


def build_static_layers(static_dir: Path, grid: Grid) -> np.ndarray:
    """[29, ny, nx] float32 in STATIC_NAMES order."""
    ext, margin = extended_grid(grid)
    w = {k: window_cells(k, grid.step) for k in SCALES_KM}
    layers: dict[str, np.ndarray] = {}

    elevation = _fill_nan(area_weighted(static_dir / "elevation.tif", ext, valid_range=(-500, 9000)))
    layers["elevation_m"] = elevation
    for k in SCALES_KM:
        layers[f"elevation_mean_{k}km"] = neighbourhood_mean(elevation, w[k])
    layers["slope_deg"] = slope_degrees(elevation, ext)
    layers["elevation_std_25km"] = neighbourhood_std(elevation, w[25])

    population = area_weighted(static_dir / "population.tif", ext, valid_range=(0, 1e6))
    pop_log = _fill_nan(np.log1p(population))
    layers["population_log"] = pop_log
    for k in SCALES_KM:
        layers[f"population_log_mean_{k}km"] = neighbourhood_mean(pop_log, w[k])

    fractions = class_fractions(static_dir / "landcover.tif", ext, len(LANDCOVER_CLASSES))
    for i, c in enumerate(LANDCOVER_CLASSES):
        frac = _fill_nan(fractions[i])
        layers[f"landcover_{c}_frac"] = frac
        layers[f"landcover_{c}_frac_mean_25km"] = neighbourhood_mean(frac, w[25])
        if c in ("cropland", "forest", "urban"):
            layers[f"landcover_{c}_frac_mean_75km"] = neighbourhood_mean(frac, w[75])

    missing = set(STATIC_NAMES) - set(layers)
    if missing:
        raise CovariateError(f"static layers not built: {sorted(missing)}")
    cube = np.stack([_crop(layers[n], margin) for n in STATIC_NAMES]).astype(np.float32)
    return cube


def build_ndvi_layers(path: Path, grid: Grid) -> np.ndarray:
    """[5, ny, nx]: NDVI (MOD13Q1 int16 scaled by 1e-4) and its neighbourhood means."""
    ext, margin = extended_grid(grid)
    ndvi = _fill_nan(area_weighted(path, ext, scale=1e-4, valid_range=(-0.2, 1.0)))
    out = [ndvi] + [neighbourhood_mean(ndvi, window_cells(k, grid.step)) for k in SCALES_KM]
    return np.stack([_crop(a, margin) for a in out]).astype(np.float32)


def ndvi_composite_start(path: Path) -> date:
    m = NDVI_NAME.search(path.name)
    if not m:
        raise CovariateError(f"{path}: NDVI file name must look like ndvi_YYYYDDD.tif")
    return (datetime(int(m.group(1)), 1, 1) + timedelta(days=int(m.group(2)) - 1)).date()


def covariates_dir(region_dir: Path) -> Path:
    return region_dir / "covariates"


def build_covariates(static_dir: Path, grid: Grid, region_dir: Path, progress=None) -> dict:
    """Grid every static layer and NDVI composite once; skip what is already built for this grid."""
    out_dir = covariates_dir(region_dir)
    meta_path = out_dir / "static.json"
    ndvi_files = sorted(static_dir.rglob("ndvi_*.tif"))
    if not ndvi_files:
        raise CovariateError(f"{static_dir}: no NDVI composites (ndvi_YYYYDDD.tif)")
    grid_desc = {"west": grid.west, "south": grid.south, "east": grid.east, "north": grid.north,
                 "step": grid.step, "ny": grid.ny, "nx": grid.nx}
    meta = _read_meta(meta_path)
    # A re-imported or rebuilt input layer (new size or time) invalidates what was gridded from it.
    inputs = {name: _signature(static_dir / f"{name}.tif") for name in ("elevation", "population", "landcover")}
    fresh = (meta is not None and meta.get("grid") == grid_desc and meta.get("inputs") == inputs
             and meta.get("feature_set_version") == FEATURE_SET_VERSION)
    total = 1 + len(ndvi_files)
    if not (fresh and (out_dir / "static.npy").is_file()):
        save_npy(out_dir / "static.npy", build_static_layers(static_dir, grid))
        meta = {"grid": grid_desc, "feature_set_version": FEATURE_SET_VERSION, "inputs": inputs,
                "static_names": list(STATIC_NAMES), "ndvi_names": list(NDVI_NAMES), "ndvi": {}, "ndvi_inputs": {}}
    if progress:
        progress("covariates", 1, total)
    for i, f in enumerate(ndvi_files, 2):
        start = ndvi_composite_start(f)
        target = out_dir / "ndvi" / f"ndvi_{start:%Y%m%d}.npy"
        signature = _signature(f)
        if (start.isoformat() not in meta["ndvi"] or not target.is_file()
                or meta.get("ndvi_inputs", {}).get(start.isoformat()) != signature):
            save_npy(target, build_ndvi_layers(f, grid))
            meta["ndvi"][start.isoformat()] = target.name
            meta.setdefault("ndvi_inputs", {})[start.isoformat()] = signature
        if progress:
            progress("covariates", i, total)
    write_json(meta_path, meta)
    return meta


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_meta(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StaticCovariates:
    """Read side: the static cube (memory-mapped) and NDVI interpolated to any day."""

    def __init__(self, region_dir: Path) -> None:
        self.dir = covariates_dir(region_dir)
        meta = _read_meta(self.dir / "static.json")
        if meta is None:
            raise CovariateError(f"{self.dir}: covariates not built yet (run the daily flow or `xco2 covariates build`)")
        self.meta = meta
        self.static = _load_layers(self.dir / "static.npy", mmap_mode="r")
        # Composite centre dates: a 16-day composite represents its middle.
        self.ndvi_centres = sorted(
            (date.fromisoformat(d) + timedelta(days=NDVI_COMPOSITE_DAYS // 2), self.dir / "ndvi" / name)
            for d, name in meta["ndvi"].items()
        )

    def ndvi_for_day(self, day: date) -> np.ndarray:
        centres = self.ndvi_centres
        if day <= centres[0][0]:
            return _load_layers(centres[0][1])
        if day >= centres[-1][0]:
            return _load_layers(centres[-1][1])
        for (d0, p0), (d1, p1) in zip(centres, centres[1:]):
            if d0 <= day <= d1:
                w = (day - d0).days / max((d1 - d0).days, 1)
                return ((1 - w) * _load_layers(p0) + w * _load_layers(p1)).astype(np.float32)
        raise AssertionError("unreachable")


def _load_layers(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    # numpy's own errors ("mmap length is greater than file size") do not say which file.
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as exc:
        raise CovariateError(f"{path}: unreadable covariate layers ({exc}); the next run's state check "
                             "sets it aside and rebuilds it from raw/static") from None
