"""Static covariates (Table 2) on the region's grid: area-weighted, then neighbourhood means.

Inputs are GeoTIFFs in any CRS and resolution, finer or coarser than the grid:
`elevation.tif` (m), `population.tif` (people/km2), `landcover.tif` (ESA-CCI-like classes,
see LANDCOVER_CLASSES), `ndvi/ndvi_YYYYDDD.tif` (16-day composites, MOD13Q1 scaling). They are
averaged onto the grid by area (GDAL's `average`), on a grid extended by a margin so the widest
neighbourhood window is not cut at the region's edge, then cropped.

Outputs, under `<region_dir>/covariates/`: `static.npy` [29, ny, nx] float32 in STATIC_NAMES
order, `ndvi/ndvi_YYYYDDD.npy` [5, ny, nx], and `static.json` describing both.

Every raw layer is checked against its plausible range (tasks.gridding.plausibility.COVARIATES) over the
region before it is used. A few bad cells are damage too small to matter: they are masked, filled
from their neighbours and logged as a warning naming the file. A layer that cannot be read, or
whose cells over the region are mostly implausible or missing (a layer in the wrong units, a tile
in the wrong place), is not data: with a quarantine folder it is moved there with a .json note
(and marked in the manifest, so the pull fetches it again). A bad NDVI composite then only holds
back the days it feeds (`ndvi_problem`), recorded under `ndvi_quarantined` in static.json; a bad
static layer feeds every day, so the build fails naming it (CovariateError).

A sound layer made for another area (its extent leaves part or all of the region's box
uncovered: the demo's layers under a data directory run for the whole province) is not damaged:
fetching it again would bring the same file. It stays where it is and the build fails with
CoverageError, naming the file, its extent, the region's box and what to do.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject
from rasterio.warp import transform_bounds
from scipy import ndimage

from tasks.io.atomic import save_npy, write_json
from tasks.covariates.features import FEATURE_SET_VERSION, NDVI_NAMES, SCALES_KM, STATIC_NAMES
from tasks.gridding.geometry import Grid
from tasks.gridding.plausibility import COVARIATES, LANDCOVER_CLASSES, Range
from tasks.io.quarantine import InputFileError, last_quarantine_note, quarantine

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
KM_PER_DEGREE = 111.32
NDVI_NAME = re.compile(r"ndvi_(\d{4})(\d{3})\.tif$")
NDVI_COMPOSITE_DAYS = 16
NDVI_SCALE = 1e-4  # MOD13Q1 stores NDVI as int16 x 1e4
STATIC_LAYERS = ("elevation", "population", "landcover")
# Above this fraction of a layer's cells over the region implausible or missing, the layer is
# refused whole: filling that much from neighbours would invent the layer, not repair it.
MAX_BAD_FRACTION = 0.5


class CovariateError(ValueError):
    # Set by the daily run's covariate task (tasks/prefect_tasks.py::build_static_covariates) on
    # the error it re-raises: the raw layers quarantined before it, for the run's artifacts. Only
    # declared: an error raised elsewhere has none (readers use getattr with a default).
    quarantined: list[dict[str, Any]]


class CovariateInputError(InputFileError, CovariateError):
    """A raw covariate layer that cannot be used: unreadable, or mostly implausible or missing."""


Box = tuple[float, float, float, float]  # west, south, east, north in degrees (WGS84)


class CoverageError(CovariateError):
    """A sound input file made for another area: its extent leaves part or all of the region's box
    uncovered. Not damage (a copy fetched again would be the same file), so it is never
    quarantined: the message names the file, its extent, the region's box and what to do."""

    def __init__(self, path: Path | str, what: str, file_box: Box, region_box: Box, remedy: str,
                 hint: str = "") -> None:
        self.path = Path(path)
        self.what, self.file_box, self.region_box, self.remedy, self.hint = what, file_box, region_box, remedy, hint
        share = covered_share(file_box, region_box)
        covered = "none" if share <= 0 else f"only {max(1, math.floor(100 * share))}%"
        super().__init__(
            f"{self.path}: {what} covers {describe_box(file_box)}, {covered} of the region's box "
            f"{describe_box(region_box)}: it was made for another area and is left where it is (not "
            f"quarantined). {remedy}" + (f" ({hint})" if hint else ""))

    def with_hint(self, hint: str) -> "CoverageError":
        return type(self)(self.path, self.what, self.file_box, self.region_box, self.remedy, hint)


def describe_box(box: Box) -> str:
    west, south, east, north = (round(v, 4) for v in box)
    return f"{west:g}..{east:g} E, {south:g}..{north:g} N"


def covered_share(file_box: Box, region_box: Box) -> float:
    """Fraction of `region_box`'s area (in square degrees: enough to say how much) inside `file_box`."""
    width = min(file_box[2], region_box[2]) - max(file_box[0], region_box[0])
    height = min(file_box[3], region_box[3]) - max(file_box[1], region_box[1])
    area = (region_box[2] - region_box[0]) * (region_box[3] - region_box[1])
    if width <= 0 or height <= 0 or area <= 0:
        return 0.0
    return min(1.0, width * height / area)


def leaves_uncovered(file_box: Box, region_box: Box, tolerance: float) -> bool:
    """Does `region_box` reach more than `tolerance` degrees beyond `file_box` on any side?"""
    return (file_box[0] - region_box[0] > tolerance or file_box[1] - region_box[1] > tolerance
            or region_box[2] - file_box[2] > tolerance or region_box[3] - file_box[3] > tolerance)


def layer_remedy(layer: str) -> str:
    """What to do about a `layer` made for another area (`xco2 covariates ...`, or the region)."""
    how = ("`xco2 covariates import ndvi FILE --start YYYY-MM-DD`" if layer == "ndvi"
           else f"`xco2 covariates import {layer} FILE`")
    return (f"Build or import {layer} for this region (`xco2 covariates build`, or {how}), or run with "
            f"the region this data directory was made for (XCO2_REGION__NAME, __WEST, __SOUTH, __EAST, __NORTH)")


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


def _read_band(path: Path, band: int = 1,
               default_nodata: float | None = None) -> tuple[np.ndarray, np.ndarray, Affine, CRS]:
    """(values, nodata mask, transform, crs) of one band; CovariateInputError naming the file.
    `default_nodata` stands for the file's nodata value when it declares none."""
    if not path.is_file():
        raise CovariateError(f"{path}: static covariate file is missing")
    try:
        with rasterio.open(path) as src:
            data = src.read(band)
            nodata = src.nodata if src.nodata is not None else default_nodata
            src_transform, src_crs = src.transform, src.crs or WGS84
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        # rasterio's own message ("Read failed. See previous exception") hides GDAL's, the cause.
        raise CovariateInputError(path, f"not a readable GeoTIFF ({exc.__cause__ or exc})") from None
    if nodata is None:
        missing = np.zeros(data.shape, dtype=bool)
    elif math.isnan(nodata):
        missing = np.isnan(data)
    else:
        missing = data == nodata
    return data, missing, src_transform, src_crs


def _region_window(shape: tuple[int, ...], transform: Affine, crs: CRS, region: Grid) -> tuple[slice, slice, int]:
    """The source pixels over `region`, and how many pixels of the region the file does not cover."""
    bounds = (region.west, region.south, region.east, region.north)
    if crs != WGS84:
        bounds = transform_bounds(WGS84, crs, *bounds)
    win = rasterio.windows.from_bounds(*bounds, transform=transform)
    r0, r1 = math.floor(win.row_off + 1e-6), math.ceil(win.row_off + win.height - 1e-6)
    c0, c1 = math.floor(win.col_off + 1e-6), math.ceil(win.col_off + win.width - 1e-6)
    full = max(r1 - r0, 0) * max(c1 - c0, 0)
    rows = slice(min(max(r0, 0), shape[0]), min(max(r1, 0), shape[0]))
    cols = slice(min(max(c0, 0), shape[1]), min(max(c1, 0), shape[1]))
    covered = (rows.stop - rows.start) * (cols.stop - cols.start)
    return rows, cols, full - covered


def check_plausible(path: Path, variable: str, values: np.ndarray, missing: np.ndarray, transform: Affine, crs: CRS,
                    region: Grid, bounds: Range) -> np.ndarray:
    """Mask of `values` (already scaled) that are usable: finite, not nodata, inside `bounds`.

    Over the part of `region` the file covers, a layer whose cells are mostly implausible (not
    finite, or outside `bounds`) raises CovariateInputError naming the file, the variable, the
    counts and an example value: it is damaged. A sound layer whose extent leaves part or all of
    the region's box uncovered (by more than half a grid cell) raises CoverageError: it was made for
    another area. A few bad cells are logged as a warning and left to the caller to mask and fill.
    Cells the file declares as nodata (sea, cloud) are not damage and are not counted."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(values)
        implausible = finite & ~missing & ((values < bounds.low) | (values > bounds.high))
    usable = finite & ~missing & ~implausible
    rows, cols, outside = _region_window(values.shape, transform, crs, region)
    here = (rows, cols)
    n_nodata = int(missing[here].sum())
    n_implausible = int(implausible[here].sum())
    n_nonfinite = int((~finite[here] & ~missing[here]).sum())
    example = None
    if n_implausible:
        shown = values[here][implausible[here]].astype(np.float64)
        example = float(shown[np.argmax(np.maximum(bounds.low - shown, shown - bounds.high))])
    parts = []
    if n_implausible:
        parts.append(f"{n_implausible} outside {bounds.describe()} (e.g. {example:.6g})")
    if n_nonfinite:
        parts.append(f"{n_nonfinite} NaN/inf")
    # Damage is judged over the cells the file has: a layer of another area can be damaged too.
    covered = values[here].size - n_nodata
    damaged = n_implausible + n_nonfinite
    if covered > 0 and damaged > MAX_BAD_FRACTION * covered:
        where = "over the region" if not outside else "over the part of the region the file covers"
        raise CovariateInputError(path, f"{variable}: {damaged} of {covered} values {where} are implausible "
                                        f"or missing ({', '.join(parts)}); wrong units or scale?")
    file_box = raster_box(values.shape, transform, crs)
    region_box = (region.west, region.south, region.east, region.north)
    # Within half a grid cell every cell of the region still gets most of its area from the file.
    if leaves_uncovered(file_box, region_box, region.step / 2):
        what = "the NDVI composite" if variable == "ndvi" else f"the {variable} layer"
        raise CoverageError(path, what, file_box, region_box, layer_remedy(variable))
    # A sliver at the edge outside the file counts as missing; cells it declares nodata are not counted.
    considered = covered + outside
    bad = damaged + outside
    if outside:
        parts.append(f"{outside} not covered by the file")
    if considered <= 0:
        raise CovariateInputError(path, f"{variable}: no data over the region {_box(region)} "
                                        f"(all {n_nodata} values there are nodata)")
    if bad > MAX_BAD_FRACTION * considered:
        raise CovariateInputError(path, f"{variable}: {bad} of {considered} values over the region are implausible "
                                        f"or missing ({', '.join(parts)}); wrong units or scale?")
    if bad:
        log.warning("%s: %s: %d of %d values over the region masked and filled from their neighbours (%s)",
                    path, variable, bad, considered, ", ".join(parts))
    return usable


def raster_box(shape: tuple[int, ...], transform: Affine, crs: CRS) -> Box:
    """(west, south, east, north) in degrees of a raster's extent."""
    west, south, east, north = rasterio.transform.array_bounds(shape[-2], shape[-1], transform)
    west, east = min(west, east), max(west, east)
    south, north = min(south, north), max(south, north)
    if crs != WGS84:
        west, south, east, north = transform_bounds(crs, WGS84, west, south, east, north, densify_pts=21)
    return (float(west), float(south), float(east), float(north))


def _box(grid: Grid) -> str:
    return describe_box((grid.west, grid.south, grid.east, grid.north))


def area_weighted(path: Path, grid: Grid, band: int = 1, scale: float = 1.0, variable: str | None = None,
                  region: Grid | None = None) -> np.ndarray:
    """One band of a GeoTIFF averaged by area onto `grid` (NaN where no data).

    With `variable` (a key of tasks.gridding.plausibility.COVARIATES) its values are checked over `region`
    (default `grid`) first, see check_plausible; the implausible ones are masked."""
    raw, missing, src_transform, src_crs = _read_band(path, band)
    data = raw.astype(np.float32) * np.float32(scale)
    if variable is not None:
        usable = check_plausible(path, variable, data, missing, src_transform, src_crs, region or grid,
                                 COVARIATES[variable])
        data[~usable] = np.nan
    else:
        data[missing] = np.nan
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(
        data, out, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
        dst_transform=grid.transform, dst_crs=WGS84, dst_nodata=np.nan,
        resampling=Resampling.average,
    )
    return out


def class_fractions(path: Path, grid: Grid, classes: int, region: Grid | None = None) -> np.ndarray:
    """Area fraction of each class 1..classes in every cell: [classes, ny, nx].

    Class codes outside 1..classes are checked like implausible values (see check_plausible)."""
    # 0 = no data when the file declares none (tasks.sources.static_layers.landcover_codes).
    labels, missing, src_transform, src_crs = _read_band(path, default_nodata=0)
    if labels.dtype.kind not in "iu":
        raise CovariateInputError(path, f"landcover: holds {labels.dtype} values, expected integer class codes")
    valid = check_plausible(path, "landcover", labels, missing, src_transform, src_crs, region or grid,
                            COVARIATES["landcover"])
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
    """[29, ny, nx] float32 in STATIC_NAMES order; CovariateInputError naming a layer that cannot be used."""
    ext, margin = extended_grid(grid)
    w = {k: window_cells(k, grid.step) for k in SCALES_KM}
    layers: dict[str, np.ndarray] = {}

    elevation = _fill_nan(area_weighted(static_dir / "elevation.tif", ext, variable="elevation", region=grid))
    layers["elevation_m"] = elevation
    for k in SCALES_KM:
        layers[f"elevation_mean_{k}km"] = neighbourhood_mean(elevation, w[k])
    layers["slope_deg"] = slope_degrees(elevation, ext)
    layers["elevation_std_25km"] = neighbourhood_std(elevation, w[25])

    population = area_weighted(static_dir / "population.tif", ext, variable="population", region=grid)
    pop_log = _fill_nan(np.log1p(population))
    layers["population_log"] = pop_log
    for k in SCALES_KM:
        layers[f"population_log_mean_{k}km"] = neighbourhood_mean(pop_log, w[k])

    fractions = class_fractions(static_dir / "landcover.tif", ext, len(LANDCOVER_CLASSES), region=grid)
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
    ndvi = _fill_nan(area_weighted(path, ext, scale=NDVI_SCALE, variable="ndvi", region=grid))
    out = [ndvi] + [neighbourhood_mean(ndvi, window_cells(k, grid.step)) for k in SCALES_KM]
    return np.stack([_crop(a, margin) for a in out]).astype(np.float32)


def ndvi_composite_start(path: Path) -> date:
    m = NDVI_NAME.search(path.name)
    if not m:
        raise CovariateError(f"{path}: NDVI file name must look like ndvi_YYYYDDD.tif")
    return (datetime(int(m.group(1)), 1, 1) + timedelta(days=int(m.group(2)) - 1)).date()


def covariates_dir(region_dir: Path) -> Path:
    return region_dir / "covariates"


def build_covariates(static_dir: Path, grid: Grid, region_dir: Path,
                     progress: Callable[[str, int, int], object] | None = None,
                     quarantine_dir: Path | None = None, manifest_path: Path | None = None,
                     set_aside: list[dict] | tuple = (), quarantined: list[dict] | None = None) -> dict[str, Any]:
    """Grid every static layer and NDVI composite once; skip what is already built for this grid.

    Each raw layer is checked first (check_plausible). With `quarantine_dir`, one that cannot be
    used is moved there with a .json note, marked 'quarantined' in the manifest at
    `manifest_path` (the pull fetches it again) and appended to `quarantined` (the daily run's
    rows): a bad NDVI composite is recorded under `ndvi_quarantined` and only the days it feeds
    wait (ndvi_problem); a bad static layer feeds every day, so CovariateError names it. Without
    `quarantine_dir` (`xco2 covariates build`, the state check) a bad layer stays where it is and
    CovariateError names it. `set_aside`: NDVI composites the pull quarantined before they reached
    `static_dir` (rows with "file" and "problem"), whose days wait too.

    A static layer or NDVI composite made for another area (check_plausible) is never quarantined:
    CoverageError names it, its extent, the region's box and the regions this data directory
    holds covariates for, and the file stays where it is (the next run says the same)."""
    out_dir = covariates_dir(region_dir)
    meta_path = out_dir / "static.json"
    ndvi_files = sorted(static_dir.rglob("ndvi_*.tif"))
    present = {f.name for f in ndvi_files}
    previous = _read_meta(meta_path) or {}
    # A composite quarantined earlier holds its days back until a good copy comes in.
    held = {start: note for start, note in (previous.get("ndvi_quarantined") or {}).items()
            if note.get("file") not in present}
    for row in set_aside:
        name = Path(row["file"]).name
        if NDVI_NAME.search(name) and name not in present:
            held[ndvi_composite_start(Path(name)).isoformat()] = {
                "file": name, "problem": row.get("problem", ""), "quarantined_as": row.get("quarantined_as"),
                "at": _now()}
    if not ndvi_files and not held:
        raise CovariateError(f"{static_dir}: no NDVI composites (ndvi_YYYYDDD.tif)")
    grid_desc = {"west": grid.west, "south": grid.south, "east": grid.east, "north": grid.north,
                 "step": grid.step, "ny": grid.ny, "nx": grid.nx}
    meta: dict[str, Any] | None = previous or None
    # A re-imported or rebuilt input layer (new size or time) invalidates what was gridded from it.
    inputs = {name: _signature(static_dir / f"{name}.tif") for name in STATIC_LAYERS}
    fresh = (meta is not None and meta.get("grid") == grid_desc and meta.get("inputs") == inputs
             and meta.get("feature_set_version") == FEATURE_SET_VERSION)
    total = 1 + len(ndvi_files)
    if meta is None or not (fresh and (out_dir / "static.npy").is_file()):  # fresh implies a meta
        for name in STATIC_LAYERS:
            path = static_dir / f"{name}.tif"
            if not path.is_file():
                earlier = last_quarantine_note(quarantine_dir, path.name)
                raise CovariateError(f"{path}: static covariate file is missing"
                                     + (f" (last {earlier})" if earlier else ""))
        try:
            cube = build_static_layers(static_dir, grid)
        except CoverageError as exc:
            raise exc.with_hint(_regions_built_beside(region_dir)) from None
        except CovariateInputError as exc:
            if quarantine_dir is None:
                raise
            moved = _set_aside(exc, quarantine_dir, manifest_path, quarantined)
            raise CovariateError(
                f"{exc.path}: {exc.problem}; quarantined as {moved}. It feeds every day: nothing can be "
                f"sampled or mapped until a good {exc.path.name} is in {static_dir}") from None
        save_npy(out_dir / "static.npy", cube)
        meta = {"grid": grid_desc, "feature_set_version": FEATURE_SET_VERSION, "inputs": inputs,
                "static_names": list(STATIC_NAMES), "ndvi_names": list(NDVI_NAMES), "ndvi": {}, "ndvi_inputs": {}}
    meta["ndvi_quarantined"] = held
    if progress:
        progress("covariates", 1, total)
    for i, f in enumerate(ndvi_files, 2):
        start = ndvi_composite_start(f)
        key = start.isoformat()
        target = out_dir / "ndvi" / f"ndvi_{start:%Y%m%d}.npy"
        signature = _signature(f)
        if (key not in meta["ndvi"] or not target.is_file()
                or meta.get("ndvi_inputs", {}).get(key) != signature):
            try:
                layers = build_ndvi_layers(f, grid)
            except CoverageError as exc:
                # Every composite of this folder was most likely made for that other area too: the
                # build stops here, keeping what it has gridded so far.
                write_json(meta_path, meta)
                raise exc.with_hint(_regions_built_beside(region_dir)) from None
            except CovariateInputError as exc:
                if quarantine_dir is None:
                    raise
                moved = _set_aside(exc, quarantine_dir, manifest_path, quarantined)
                # What was gridded from an earlier copy is not this composite: its days wait.
                meta["ndvi"].pop(key, None)
                meta.setdefault("ndvi_inputs", {}).pop(key, None)
                target.unlink(missing_ok=True)
                held[key] = {"file": f.name, "problem": exc.problem,
                             "quarantined_as": str(moved) if moved else None, "at": _now()}
            else:
                save_npy(target, layers)
                meta["ndvi"][key] = target.name
                meta.setdefault("ndvi_inputs", {})[key] = signature
                held.pop(key, None)
        if progress:
            progress("covariates", i, total)
    write_json(meta_path, meta)
    return meta


def _regions_built_beside(region_dir: Path) -> str:
    """The other regions whose covariates this data directory holds, with their boxes: most likely
    the region its raw layers were made for."""
    found = []
    for meta_path in sorted(region_dir.parent.glob("*/covariates/static.json")):
        name = meta_path.parent.parent.name
        grid = (_read_meta(meta_path) or {}).get("grid") or {}
        if name == region_dir.name or not all(k in grid for k in ("west", "south", "east", "north")):
            continue
        found.append(f"{name} ({describe_box((grid['west'], grid['south'], grid['east'], grid['north']))})")
    if not found:
        return ""
    return f"this data directory holds covariates built for region{'s' if len(found) > 1 else ''} {', '.join(found)}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")


def _set_aside(exc: CovariateInputError, quarantine_dir: Path, manifest_path: Path | None,
               quarantined: list[dict] | None) -> Path | None:
    """Quarantine the raw layer `exc` names (None: a concurrent run set it aside first)."""
    try:
        moved = quarantine(exc.path, exc.problem, quarantine_dir)
    except FileNotFoundError:
        return None
    if manifest_path is not None:
        from tasks.sources.manifest import Manifest

        Manifest(manifest_path).mark_unusable("static", exc.path,
                                              f"quarantined after the pull as {moved.name}: {exc.problem}")
    if quarantined is not None:
        quarantined.append({"source": "static", "file": exc.path.name, "problem": exc.problem,
                            "quarantined_as": str(moved)})
    return moved


def _ndvi_timeline(meta: dict, folder: Path) -> list[tuple[date, date, Path | None, dict | None]]:
    """(centre, start, gridded file or None, quarantine note or None) of every composite, by centre."""
    half = timedelta(days=NDVI_COMPOSITE_DAYS // 2)  # a 16-day composite represents its middle
    rows = [(date.fromisoformat(d) + half, date.fromisoformat(d), folder / name, None)
            for d, name in (meta.get("ndvi") or {}).items()]
    rows += [(date.fromisoformat(d) + half, date.fromisoformat(d), None, note)
             for d, note in (meta.get("ndvi_quarantined") or {}).items() if d not in (meta.get("ndvi") or {})]
    return sorted(rows, key=lambda r: r[0])


def _ndvi_weights(timeline: list, day: date) -> list[tuple[float, tuple]]:
    """The composites a day's NDVI is interpolated from, with their (non-zero) weights."""
    if not timeline:
        return []
    if day <= timeline[0][0]:
        return [(1.0, timeline[0])]
    if day >= timeline[-1][0]:
        return [(1.0, timeline[-1])]
    for before, after in zip(timeline, timeline[1:]):
        if before[0] <= day <= after[0]:
            w = (day - before[0]).days / max((after[0] - before[0]).days, 1)
            return [(1.0 - w, before), (w, after)] if 0.0 < w < 1.0 else [(1.0, after if w >= 1.0 else before)]
    raise AssertionError("unreachable")


def ndvi_problem_in(meta: dict | None, day: date, folder: Path = Path(".")) -> str | None:
    """Why `day` has no NDVI (a composite it is interpolated from, or whose 16 days hold it, is
    quarantined), or None."""
    if not meta:
        return None
    timeline = _ndvi_timeline(meta, folder)
    fed_by = [entry for _w, entry in _ndvi_weights(timeline, day)]
    fed_by += [entry for entry in timeline
               if entry[1] <= day < entry[1] + timedelta(days=NDVI_COMPOSITE_DAYS) and entry not in fed_by]
    bad = [entry[3] for entry in fed_by if entry[3] is not None]
    if not bad:
        return None
    return "; ".join(f"waiting: NDVI composite {note.get('file')} quarantined ({note.get('problem')})" for note in bad)


def ndvi_problem(region_dir: Path, day: date) -> str | None:
    """ndvi_problem_in for the covariates built under `region_dir` (None when none are built:
    mapping then says so itself)."""
    return ndvi_problem_in(_read_meta(covariates_dir(region_dir) / "static.json"), day)


def _signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_meta(path: Path) -> dict | None:
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
        self.ndvi_timeline = _ndvi_timeline(meta, self.dir / "ndvi")
        if not self.ndvi_timeline:
            raise CovariateError(f"{self.dir}: no NDVI composites built")

    def ndvi_problem(self, day: date) -> str | None:
        return ndvi_problem_in(self.meta, day, self.dir / "ndvi")

    def ndvi_for_day(self, day: date) -> np.ndarray:
        """NDVI layers interpolated between the composites' centres; CovariateError for a day
        whose NDVI would come from a quarantined composite (it must wait, not be extrapolated)."""
        problem = self.ndvi_problem(day)
        if problem:
            raise CovariateError(f"{day}: {problem}")
        used = _ndvi_weights(self.ndvi_timeline, day)
        if len(used) == 1:
            return _load_layers(used[0][1][2])
        (w0, (_c0, _s0, p0, _n0)), (w1, (_c1, _s1, p1, _n1)) = used
        return (w0 * _load_layers(p0) + w1 * _load_layers(p1)).astype(np.float32)


def _load_layers(path: Path, mmap_mode: Literal["r"] | None = None) -> np.ndarray:
    # numpy's own errors ("mmap length is greater than file size") do not say which file.
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except (OSError, ValueError, EOFError) as exc:
        raise CovariateError(f"{path}: unreadable covariate layers ({exc}); the next run's state check "
                             "sets it aside and rebuilds it from raw/static") from None
