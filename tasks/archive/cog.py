"""A day's XCO2 map as a Cloud Optimized GeoTIFF, and the checks that an archived one is sound.

File choices, and why:
- nodata is NaN (declared in the file, so every reader masks it). A finite sentinel such as
  -9999 looks like a number: a reader that ignores the nodata tag (numpy, a quick
  `rioxarray.open_rasterio` without `masked=True`, a spreadsheet export) would average it into
  the map and get plausible-looking garbage. NaN propagates instead, QGIS treats NaN float
  cells as no data whether or not the tag is read, rioxarray reads it as `_FillValue=nan`,
  GDAL's average overviews skip it, and STAC's raster extension spells it "nan".
- DEFLATE rather than ZSTD: ZSTD is ~10 % smaller, but DEFLATE opens in every GDAL build and
  in browser/Java GeoTIFF readers some analysts use; predictor 3 (floating point) does most
  of the work on smooth ppm fields.
- 512 x 512 tiles; overviews (average) are added by GDAL until the image fits one tile, so a
  region smaller than a tile has none: its single tile already is the cheapest overview.
- CRS EPSG:4326, pixel-is-area, transform exactly `grid.transform`, so pixels sit on the
  global 0.01 degree lattice and days stack without resampling.
- Band 1 'xco2', optional band 2 'xco2_uncertainty' (the 68 % half-width for a new retrieval at
  the cell, retrieval noise included) and, from format 2, optional band 3
  'xco2_true_column_uncertainty' (the 68 % half-width of the true column, no retrieval noise), all
  float32 in ppm (GDAL unit type and a 'units' band tag, since tools read one or the other). Each
  interval band also carries 'interval' and 'description' tags saying which it is. Band 2 keeps its
  number and name from format 1 so that a reader of band 2 still gets what it always got; the
  dataset tag 'xco2_format_version' (absent: format 1) tells the layouts apart, and readers find a
  band by its description (band_index). GDAL also stores each band's statistics so QGIS gets a
  sensible colour stretch without scanning the file.

GDAL's COG driver writes the whole file from one in-memory copy of the bands (about 5 MB
per band for Sichuan), so memory stays a small multiple of the input arrays.

Before a day is published its temp file is read back whole and compared with what was written
(NaN-aware), and checked as a COG: on a full disk GDAL can return normally from a file whose
tiles never reached the disk, so only reading it back tells. Any failure raises
ArchiveWriteError naming the day's path and leaves the previous version of the day in place.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rio_cogeo.cogeo import cog_validate

from tasks.io.atomic import PublishError, describe_error
from tasks.io.atomic import atomic_path as publishing
from tasks.gridding.geometry import Grid

UNITS = "ppm"
NODATA = float("nan")
CRS_EPSG = 4326
TILE_SIZE = 512
COMPRESSION = "DEFLATE"
ACCEPTED_COMPRESSIONS = ("DEFLATE", "ZSTD")
FLOATING_POINT_PREDICTOR = "3"
OVERVIEW_RESAMPLING = "AVERAGE"
XCO2_BAND = "xco2"
UNCERTAINTY_BAND = "xco2_uncertainty"  # the retrieval interval (its format-1 name, kept)
RETRIEVAL_INTERVAL_BAND = UNCERTAINTY_BAND
TRUE_COLUMN_BAND = "xco2_true_column_uncertainty"
# The layout's version, a dataset tag; files without it are format 1 (bands xco2[, xco2_uncertainty]).
FORMAT_VERSION_TAG = "xco2_format_version"
FORMAT_VERSION = "2"
# What each band is, written as band tags (interval, description) and into the STAC item.
BAND_MEANINGS = {
    XCO2_BAND: ("", "XCO2, column-averaged dry-air CO2 mole fraction (ppm)"),
    UNCERTAINTY_BAND: ("new retrieval", "half-width (ppm) of the calibrated 68% interval for a NEW RETRIEVAL at the "
                       "cell: map uncertainty plus retrieval noise; what held-out retrievals fall in 68% of the time"),
    TRUE_COLUMN_BAND: ("true column", "half-width (ppm) of the calibrated 68% interval of the TRUE XCO2 COLUMN at the "
                       "cell: background-parameter and field uncertainty and the map error the field does not "
                       "model, no retrieval noise; compare with TCCON or use in an inversion"),
}
LAYOUTS = {
    "1": ((XCO2_BAND,), (XCO2_BAND, UNCERTAINTY_BAND)),
    "2": ((XCO2_BAND,), (XCO2_BAND, UNCERTAINTY_BAND), (XCO2_BAND, UNCERTAINTY_BAND, TRUE_COLUMN_BAND)),
}

_CREATION_OPTIONS = {
    "compress": COMPRESSION,
    "predictor": "FLOATING_POINT",
    "blocksize": TILE_SIZE,
    "overview_resampling": OVERVIEW_RESAMPLING,
    "statistics": "YES",
    # Single-threaded on purpose: a day takes well under a second this way, and flows may
    # write several days at once on a shared worker.
    "num_threads": 1,
}


class ArchiveWriteError(PublishError):
    """An archive file (COG, STAC JSON, quicklook) could not be published sound; the message
    names its final path, and the previous version, if any, is still there."""


# What GDAL raises when a file cannot be written or read (rasterio's own, and the CPLE_* errors).
GDAL_ERRORS = (RasterioError, CPLE_BaseError)


def read_back_problems(path: Path | str, grid: Grid | None = None) -> list[str]:
    """Problems of a COG read back whole (every band, every tile) and checked as a COG; empty
    when sound. The cheap checks (cog_validate) read headers only, and a file cut short by a
    full disk can pass them."""
    problems = validate_cog(path, grid)
    if problems:
        return problems
    try:
        with rasterio.open(path) as src:
            for index in src.indexes:
                src.read(index)
    except (*GDAL_ERRORS, OSError) as exc:
        return [f"{path}: does not read back whole: {describe_error(exc)}"]
    return []


def _verify_written(temp: Path, bands: list[tuple[str, np.ndarray]], grid: Grid,
                    dataset_tags: Mapping[str, str]) -> None:
    problems = validate_cog(temp, grid)
    if problems:
        raise ValueError("; ".join(problems))
    with rasterio.open(temp) as src:
        if src.count != len(bands):
            raise ValueError(f"{src.count} bands read back, {len(bands)} written")
        for index, (name, values) in enumerate(bands, start=1):
            if not np.array_equal(src.read(index), values, equal_nan=True):
                raise ValueError(f"band {index} ({name}) reads back different from what was written")
        tags = src.tags()
        changed = sorted(k for k, v in dataset_tags.items() if tags.get(k) != v)
        if changed:
            raise ValueError(f"tags {changed} read back different from what was written")


def _as_band(values: np.ndarray, grid: Grid, name: str) -> np.ndarray:
    band = np.asarray(values, dtype=np.float32)
    if band.shape != grid.shape:
        raise ValueError(f"{name}: shape {band.shape} does not match the grid {grid.shape} (ny, nx)")
    n_inf = int(np.count_nonzero(np.isinf(band)))
    if n_inf:
        # Infinity is a bug upstream, not a measurement; archiving it would hide the bug.
        raise ValueError(f"{name}: {n_inf} infinite values; use NaN for cells without an estimate")
    return band


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _dataset_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key or any(c in key for c in "= \t\n"):
            raise ValueError(f"tag name {key!r} must be a non-empty string without spaces or '='")
        if value is None:
            continue
        out[key] = _tag_text(value)
    units = out.setdefault("units", UNITS)
    if units != UNITS:
        raise ValueError(f"tag units={units!r}: the map is written in {UNITS}")
    # rio-cogeo and `rio cogeo info` read the overview method from this tag.
    out["OVERVIEW_RESAMPLING"] = OVERVIEW_RESAMPLING
    return out


def write_day_cog(
    path: Path | str,
    xco2: np.ndarray,
    grid: Grid,
    tags: Mapping[str, Any],
    uncertainty: np.ndarray | None = None,
    true_column_uncertainty: np.ndarray | None = None,
) -> Path:
    """Write (or replace) one day's map as a COG at `path`, atomically; returns `path`.

    `xco2`, `uncertainty` (the 68 % half-width for a new retrieval, band 2) and
    `true_column_uncertainty` (the 68 % half-width of the true column, band 3) are (ny, nx) in ppm,
    NaN where there is no estimate. `tags` become dataset tags (model name/version, feature set
    version, source mode, synthetic, date...), with the format version added.
    """
    path = Path(path)
    if true_column_uncertainty is not None and uncertainty is None:
        raise ValueError("a true-column interval (band 3) needs the retrieval interval (band 2) beside it")
    bands = [(XCO2_BAND, _as_band(xco2, grid, XCO2_BAND))]
    if uncertainty is not None:
        bands.append((UNCERTAINTY_BAND, _as_band(uncertainty, grid, UNCERTAINTY_BAND)))
    if true_column_uncertainty is not None:
        bands.append((TRUE_COLUMN_BAND, _as_band(true_column_uncertainty, grid, TRUE_COLUMN_BAND)))
    dataset_tags = {**_dataset_tags(tags), FORMAT_VERSION_TAG: FORMAT_VERSION}

    profile = {
        "driver": "COG",
        "width": grid.nx,
        "height": grid.ny,
        "count": len(bands),
        "dtype": "float32",
        "crs": CRS.from_epsg(CRS_EPSG),
        "transform": grid.transform,
        "nodata": NODATA,
        **_CREATION_OPTIONS,
    }
    try:
        with publishing(path, verify=lambda temp: _verify_written(temp, bands, grid, dataset_tags),
                        error=ArchiveWriteError, local_writer=True) as temp:
            with rasterio.open(temp, "w", **profile) as dst:
                for index, (name, values) in enumerate(bands, start=1):
                    dst.write(values, index)
                    dst.set_band_description(index, name)
                    interval, description = BAND_MEANINGS[name]
                    dst.update_tags(index, units=UNITS, description=description,
                                    **({"interval": interval} if interval else {}))
                dst.units = tuple(UNITS for _ in bands)
                dst.update_tags(**dataset_tags)
    except GDAL_ERRORS as exc:
        # GDAL failed while writing (the temp file is already gone): name the day, not the temp.
        raise ArchiveWriteError(path, describe_error(exc), getattr(exc, "errno", None)) from exc
    return path


def validate_cog(path: Path | str, grid: Grid | None = None) -> list[str]:
    """Problems with an archived day's COG; empty when sound. With `grid`, also checks alignment."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        _, errors, warnings = cog_validate(str(path), quiet=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: report it, don't crash the check
        return [f"{path}: cannot be read as a GeoTIFF: {exc}"]
    problems = [f"not a valid COG: {e}" for e in errors]
    problems += [f"COG warning: {w}" for w in warnings]

    try:
        with rasterio.open(path) as src:
            problems += _dataset_problems(src, grid)
    except (*GDAL_ERRORS, OSError) as exc:
        problems.append(f"{path}: cannot be opened: {type(exc).__name__}: {exc}")
    return problems


def _dataset_problems(src: DatasetReader, grid: Grid | None) -> list[str]:
    problems: list[str] = []
    if src.crs is None or src.crs.to_epsg() != CRS_EPSG:
        problems.append(f"CRS is {src.crs}, expected EPSG:{CRS_EPSG}")
    version = src.tags().get(FORMAT_VERSION_TAG, "1")
    layouts = LAYOUTS.get(version)
    if layouts is None:
        problems.append(f"format version {version!r}, expected one of {sorted(LAYOUTS)}")
        layouts = LAYOUTS[FORMAT_VERSION]
    if tuple(src.descriptions) not in layouts:
        problems.append(f"band descriptions {src.descriptions}, expected one of {list(layouts)} (format {version})")
    if any(dtype != "float32" for dtype in src.dtypes):
        problems.append(f"band types {src.dtypes}, expected float32")
    if src.nodata is None:
        problems.append("no nodata value declared")
    elif not math.isnan(src.nodata):
        problems.append(f"nodata is {src.nodata}, expected NaN")

    structure = src.tags(ns="IMAGE_STRUCTURE")
    compression = structure.get("COMPRESSION", "NONE").upper()
    if compression not in ACCEPTED_COMPRESSIONS:
        problems.append(f"compression {compression}, expected one of {', '.join(ACCEPTED_COMPRESSIONS)}")
    predictor = structure.get("PREDICTOR", "1")
    if predictor != FLOATING_POINT_PREDICTOR:
        problems.append(f"predictor {predictor}, expected {FLOATING_POINT_PREDICTOR} (floating point)")
    if any(shape != (TILE_SIZE, TILE_SIZE) for shape in src.block_shapes):
        problems.append(f"tiles {src.block_shapes}, expected {TILE_SIZE} x {TILE_SIZE}")
    if max(src.width, src.height) > TILE_SIZE and not src.overviews(1):
        problems.append("no internal overviews")
    if src.tags().get("AREA_OR_POINT", "Area") != "Area":
        problems.append("pixels are points, expected areas (cells of the grid)")

    for index in src.indexes:
        unit = src.units[index - 1] or src.tags(index).get("units")
        if unit != UNITS:
            problems.append(f"band {index} unit {unit!r}, expected {UNITS!r}")

    if grid is not None:
        if src.shape != grid.shape:
            problems.append(f"shape {src.shape}, expected the grid's {grid.shape}")
        if src.transform != grid.transform:
            problems.append(f"transform {tuple(src.transform)[:6]}, expected {tuple(grid.transform)[:6]}")
    return problems


def format_version(src: DatasetReader) -> str:
    """An open COG's format version ('1' for files written before the tag)."""
    return src.tags().get(FORMAT_VERSION_TAG, "1")


def band_index(src: DatasetReader, name: str) -> int | None:
    """The 1-based index of the band described `name` in an open COG (rasterio dataset), None when
    it has none: readers find bands by what they are, not by number."""
    for index, description in enumerate(src.descriptions, start=1):
        if description == name:
            return index
    return None
