"""ERA5 daily covariates on the region's grid (bilinear, as Table 2 prescribes)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from tasks.features import METEO_NAMES
from tasks.grid import Grid


class MeteorologyError(ValueError):
    pass


def era5_files_for_day(era5_dir: Path, day: date) -> list[Path]:
    """ERA5 files a day needs: the day itself and the next (its 00 UTC step closes the day's sums)."""
    return [era5_dir / f"era5_single_levels_{d:%Y%m%d}.nc" for d in (day, day + timedelta(days=1))]


def era5_available(era5_dir: Path, day: date) -> bool:
    return all(p.is_file() for p in era5_files_for_day(era5_dir, day))


def _bilinear_weights(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Dense [len(dst), len(src)] linear-interpolation matrix along one axis (src increasing)."""
    if src.size == 1:
        return np.ones((dst.size, 1))
    if dst.min() < src[0] - 1e-9 or dst.max() > src[-1] + 1e-9:
        raise MeteorologyError(
            f"ERA5 grid [{src[0]:.3f}, {src[-1]:.3f}] does not cover the region [{dst.min():.3f}, {dst.max():.3f}]"
        )
    pos = np.clip(np.interp(dst, src, np.arange(src.size)), 0, src.size - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, src.size - 2)
    frac = pos - i0
    w = np.zeros((dst.size, src.size))
    w[np.arange(dst.size), i0] = 1 - frac
    w[np.arange(dst.size), i0 + 1] += frac
    return w


def regrid_bilinear(daily: xr.Dataset, grid: Grid, names=METEO_NAMES) -> np.ndarray:
    """[len(names), ny, nx] float32 from one day of a (latitude, longitude) dataset."""
    lat = daily["latitude"].values.astype(np.float64)
    lon = daily["longitude"].values.astype(np.float64)
    lat_order = np.argsort(lat)
    wy = _bilinear_weights(lat[lat_order], grid.lats)
    wx = _bilinear_weights(lon, grid.lons)
    out = np.empty((len(names), grid.ny, grid.nx), dtype=np.float32)
    for i, name in enumerate(names):
        field = daily[name].values.astype(np.float64)[lat_order]
        if not np.isfinite(field).all():
            field = np.where(np.isfinite(field), field, np.nanmean(field))
        out[i] = wy @ field @ wx.T
    return out


def meteo_for_day(era5_dir: Path, day: date, grid: Grid) -> np.ndarray:
    from tasks.readers import era5_daily, read_era5

    files = era5_files_for_day(era5_dir, day)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise MeteorologyError(f"ERA5 input missing for {day}: {', '.join(missing)}")
    hourly = read_era5(files)
    daily = era5_daily(hourly, [day])
    return regrid_bilinear(daily.isel(day=0), grid)
