"""ERA5 daily covariates on the region's grid (bilinear, as Table 2 prescribes).

A damaged or implausible ERA5 file is quarantined by era5_readiness and only the days it feeds
wait. A sound file whose grid does not reach over the region's box (made for another region) is
not damaged: meteo_for_day raises Era5CoverageError naming it, its extent and the region's box,
and leaves it where it is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import xarray as xr

from tasks.covariates.features import METEO_NAMES
from tasks.covariates.static import Box, CoverageError, leaves_uncovered
from tasks.gridding.geometry import Grid
from tasks.io.quarantine import InputFileError, last_quarantine_note, quarantine

log = logging.getLogger(__name__)


class MeteorologyError(ValueError):
    pass


class Era5CoverageError(CoverageError, MeteorologyError):
    """Sound ERA5 files whose grid does not reach over the region's box: made for another region."""


# ERA5's native spacing: a file of a single grid point stands for the 0.25-degree cell around it.
ERA5_STEP_DEG = 0.25
ERA5_REMEDY = ("Pull ERA5 for this region's box (in local mode: put files covering it in the source folder), "
               "or run with the region these files were made for (XCO2_REGION__NAME, __WEST, __SOUTH, __EAST, "
               "__NORTH)")


def era5_files_for_day(era5_dir: Path, day: date) -> list[Path]:
    """ERA5 files a day needs: the day itself and the next (its 00 UTC step closes the day's sums)."""
    return [era5_dir / f"era5_single_levels_{d:%Y%m%d}.nc" for d in (day, day + timedelta(days=1))]


# Files that read and passed the plausibility check, by identity (path, inode, size, mtime): each
# file feeds two days and is asked about by the samples and the archive, but is read once.
_checked: set[tuple] = set()
_checked_lock = threading.Lock()


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def check_era5_file(path: Path) -> None:
    """InputFileError when an ERA5 file is damaged, foreign, of hostile size, or holds NaN or
    implausible values (tasks.gridding.plausibility); the message names the file, variable and values."""
    from tasks.readers.era5 import read_era5_file

    key = _identity(path)
    with _checked_lock:
        if key in _checked:
            return
    read_era5_file(path)
    with _checked_lock:
        _checked.add(key)


@dataclass
class Era5Readiness:
    """Whether a day's meteorology is in the raw cache and usable, and if not, why."""

    day: date
    missing: list[str] = field(default_factory=list)  # file names not in the raw cache
    quarantined: list[dict] = field(default_factory=list)  # files set aside by this check
    reasons: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.missing

    @property
    def why(self) -> str:
        return "; ".join(self.reasons)


def era5_readiness(era5_dir: Path, day: date, quarantine_dir: Path | None = None,
                   manifest_path: Path | None = None) -> Era5Readiness:
    """Are the day's ERA5 files (the day and the next) present and plausible?

    A file that fails its check is moved to `quarantine_dir` with a note (and, with
    `manifest_path`, marked 'quarantined' in the manifest so the next pull fetches it again):
    the days it feeds wait, every other day goes on. Without `quarantine_dir` a bad file stays
    where it is and the day only waits."""
    out = Era5Readiness(day)
    for path in era5_files_for_day(era5_dir, day):
        if not path.is_file():
            out.missing.append(path.name)
            earlier = last_quarantine_note(quarantine_dir, path.name)
            out.reasons.append(f"{path.name} not in the raw cache" + (f" (last {earlier})" if earlier else ""))
            continue
        try:
            check_era5_file(path)
        except FileNotFoundError:  # another run quarantined or replaced it meanwhile
            out.missing.append(path.name)
            out.reasons.append(f"{path.name} left the raw cache while being checked")
            continue
        except InputFileError as exc:
            out.missing.append(path.name)
            out.reasons.append(f"{path.name}: {exc.problem}")
            if quarantine_dir is None:
                log.warning("%s: ERA5 %s is unusable: %s", day, path, exc.problem)
                continue
            try:
                moved = quarantine(path, exc.problem, quarantine_dir)
            except FileNotFoundError:  # another run set it aside first
                continue
            out.quarantined.append({"source": "era5", "file": path.name, "problem": exc.problem,
                                    "quarantined_as": str(moved)})
            if manifest_path is not None:
                from tasks.sources.manifest import Manifest

                Manifest(manifest_path).mark_unusable("era5", path, f"quarantined after the pull as "
                                                                   f"{moved.name}: {exc.problem}")
    return out


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


def regrid_bilinear(daily: xr.Dataset, grid: Grid, names: Sequence[str] = METEO_NAMES) -> np.ndarray:
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


def era5_box(data: xr.Dataset) -> Box:
    """(west, south, east, north) of the ERA5 grid points: bilinear interpolation reaches no further."""
    lat = data["latitude"].values.astype(np.float64)
    lon = data["longitude"].values.astype(np.float64)
    pad_lat = ERA5_STEP_DEG / 2 if lat.size == 1 else 0.0
    pad_lon = ERA5_STEP_DEG / 2 if lon.size == 1 else 0.0
    return (float(lon.min()) - pad_lon, float(lat.min()) - pad_lat,
            float(lon.max()) + pad_lon, float(lat.max()) + pad_lat)


def check_era5_coverage(data: xr.Dataset, files: list[Path], grid: Grid) -> None:
    """Era5CoverageError unless the ERA5 grid points reach over every cell centre of `grid`."""
    file_box = era5_box(data)
    # Cell centres, not the box's edges: those are what is interpolated.
    centres = (float(grid.lons.min()), float(grid.lats.min()), float(grid.lons.max()), float(grid.lats.max()))
    if not leaves_uncovered(file_box, centres, 1e-9):
        return
    others = "".join(f" (and that of {p.name})" for p in files[1:])
    raise Era5CoverageError(files[0], f"its ERA5 grid{others}", file_box,
                            (grid.west, grid.south, grid.east, grid.north), ERA5_REMEDY)


def meteo_for_day(era5_dir: Path, day: date, grid: Grid) -> np.ndarray:
    from tasks.readers import era5_daily, read_era5

    files = era5_files_for_day(era5_dir, day)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise MeteorologyError(f"ERA5 input missing for {day}: {', '.join(missing)}")
    hourly = read_era5(files)
    check_era5_coverage(hourly, files, grid)
    daily = era5_daily(hourly, [day])
    return regrid_bilinear(daily.isel(day=0), grid)
