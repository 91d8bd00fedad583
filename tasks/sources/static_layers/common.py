"""What the static layers share: file names, output formats, grids, warping, checks, layers.json.

Every layer is written as a north-up EPSG:4326 GeoTIFF under `<raw>/static/`, cropped to the
region box plus MARGIN_DEG (the covariate builder needs a margin for its neighbourhood windows):

| layer      | file                 | dtype   | nodata | values                              |
|------------|----------------------|---------|--------|-------------------------------------|
| elevation  | elevation.tif        | float32 | -32768 | metres, -500..9000                  |
| population | population.tif       | float32 | -1     | people per km2, >= 0                |
| landcover  | landcover.tif        | uint8   | 0      | classes 1..7 (landcover_codes)      |
| ndvi       | ndvi_YYYYDDD.tif     | int16   | -3000  | NDVI * 1e4 (MOD13Q1 scaling), -2000..10000; YYYYDDD = composite start |
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import DTypeLike
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window

from tasks.io.atomic import write_json
from tasks.io.geotiff import write_geotiff
from tasks.gridding.geometry import Grid
from tasks.settings import Settings
from tasks.sources.static_layers.landcover_codes import LCCS_TO_CLASS, OUR_CLASSES, map_lccs

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
Bounds = tuple[float, float, float, float]  # west, south, east, north in degrees
LAYERS = ("elevation", "population", "landcover", "ndvi")
MARGIN_DEG = 0.5  # around the region box, like the demo world's rasters
# Imports keep the source's native resolution unless that would exceed this many pixels over
# the region + margin (e.g. a 30 m DEM of a whole province): then the step is coarsened (by
# area averaging, or the modal class for land cover). 64 M float32 pixels = 256 MB in memory.
MAX_PIXELS = 64_000_000
LAYERS_JSON = "layers.json"


class StaticLayerError(ValueError):
    """A static layer cannot be imported or built; the message names the file and the problem."""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    dtype: str
    nodata: float
    units: str
    valid: tuple[float, float]  # physical range, checked before conversion


SPECS: dict[str, LayerSpec] = {
    "elevation": LayerSpec("elevation", "float32", -32768.0, "m", (-500.0, 9000.0)),
    "population": LayerSpec("population", "float32", -1.0, "people/km2", (0.0, 1e6)),
    "landcover": LayerSpec("landcover", "uint8", 0, "class", (1, 7)),
    "ndvi": LayerSpec("ndvi", "int16", -3000, "NDVI*1e4", (-2000, 10000)),
}
NDVI_SCALE = 1e-4


def static_dir(settings: Settings) -> Path:
    return settings.raw("static")


def ndvi_file_name(composite_start: date) -> str:
    return f"ndvi_{composite_start:%Y}{composite_start.timetuple().tm_yday:03d}.tif"


def output_path(settings: Settings, layer: str, composite_start: date | None = None) -> Path:
    check_layer(layer)
    if layer == "ndvi":
        if composite_start is None:
            raise StaticLayerError("ndvi needs the composite's start date (--start YYYY-MM-DD)")
        return static_dir(settings) / ndvi_file_name(composite_start)
    return static_dir(settings) / f"{layer}.tif"


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise StaticLayerError(f"unknown static layer {layer!r}: expected one of {', '.join(LAYERS)}")


def region_box(settings: Settings, margin: float = 0.0) -> Bounds:
    """(west, south, east, north) of the region, widened by `margin` degrees."""
    r = settings.region
    return (max(-180.0, r.west - margin), max(-90.0, r.south - margin),
            min(180.0, r.east + margin), min(90.0, r.north + margin))


def describe_region(settings: Settings) -> str:
    r = settings.region
    return f"region {r.name!r} (W {r.west}, S {r.south}, E {r.east}, N {r.north})"


def snapped_grid(box: Bounds, step: float) -> Grid:
    """A grid of `step` degrees covering `box`, edges snapped outwards to multiples of the step."""
    def snap(v: float, up: bool) -> float:
        q = round(v / step, 6)
        return round((math.ceil(q) if up else math.floor(q)) * step, 9)

    west, south, east, north = box
    return Grid(west=snap(west, False), south=snap(south, False), east=snap(east, True),
                north=snap(north, True), step=step)


def bounds_wgs84(src: DatasetReader) -> Bounds:
    if src.crs == WGS84:
        west, south, east, north = src.bounds
        return (west, south, east, north)
    return transform_bounds(src.crs, WGS84, *src.bounds, densify_pts=21)


def intersect(a: Bounds, b: Bounds) -> Bounds | None:
    west, south = max(a[0], b[0]), max(a[1], b[1])
    east, north = min(a[2], b[2]), min(a[3], b[3])
    return (west, south, east, north) if west < east and south < north else None


def native_step_deg(src: DatasetReader) -> float:
    """The source's pixel size in degrees at its own location (pixels kept roughly square)."""
    if src.crs == WGS84 or src.crs.is_geographic:
        return float(min(abs(src.transform.a), abs(src.transform.e)))
    from rasterio.warp import calculate_default_transform

    transform, _, _ = calculate_default_transform(src.crs, WGS84, src.width, src.height, *src.bounds)
    return float(min(abs(transform.a), abs(transform.e)))


def choose_step(native: float, box: Bounds, max_pixels: int | None = None, finest: float | None = None) -> float:
    """Native step (rounded to a tidy value), coarsened only to stay under `max_pixels` over `box`."""
    max_pixels = max_pixels or MAX_PIXELS
    step = max(native, finest or 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area / (step * step) > max_pixels:
        step = math.sqrt(area / max_pixels)
    # Tidy: 4 significant digits of arc-seconds keeps grids reproducible across runs.
    arcsec = float(f"{step * 3600:.4g}")
    return arcsec / 3600


def warp_into(src: DatasetReader, band: int, grid: Grid, resampling: Resampling,
              src_nodata: float | None = None, out: np.ndarray | None = None,
              window: Window | None = None) -> np.ndarray:
    """Band `band` of open dataset `src` warped onto `grid` (or its `window`), float32, NaN = no data."""
    if window is None:
        shape, transform = grid.shape, grid.transform
    else:
        shape = (int(window.height), int(window.width))
        transform = Affine(grid.step, 0.0, grid.west + int(window.col_off) * grid.step,
                           0.0, -grid.step, grid.north - int(window.row_off) * grid.step)
    dst = np.full(shape, np.nan, dtype=np.float32) if out is None else out
    reproject(
        rasterio.band(src, band), dst,
        src_nodata=src_nodata if src_nodata is not None else src.nodata,
        dst_transform=transform, dst_crs=WGS84, dst_nodata=np.nan,
        resampling=resampling, init_dest_nodata=True,
    )
    return dst


def _covering_window(bounds: Bounds, grid: Grid) -> Window | None:
    """The grid cells touched by a lon/lat box, or None if it misses the grid."""
    west, south, east, north = bounds
    c0 = max(0, int(math.floor((west - grid.west) / grid.step + 1e-9)))
    c1 = min(grid.nx, int(math.ceil((east - grid.west) / grid.step - 1e-9)))
    r0 = max(0, int(math.floor((grid.north - north) / grid.step + 1e-9)))
    r1 = min(grid.ny, int(math.ceil((grid.north - south) / grid.step - 1e-9)))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def mosaic(sources: list[str], grid: Grid, resampling: Resampling,
           src_nodata: float | None = None) -> tuple[np.ndarray, int]:
    """Tiles (any GDAL path, any CRS) warped onto `grid`, float32 with NaN gaps; first valid wins.

    Returns the mosaic and how many tiles touched the grid.
    """
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    used = 0
    for path in sources:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise StaticLayerError(f"{path}: tile has no coordinate reference system")
            window = _covering_window(bounds_wgs84(src), grid)
            if window is None:
                continue  # tile outside the grid
            part = warp_into(src, 1, grid, resampling, src_nodata=src_nodata, window=window)
        r0, c0 = int(window.row_off), int(window.col_off)
        target = out[r0:r0 + part.shape[0], c0:c0 + part.shape[1]]
        np.copyto(target, part, where=np.isfinite(part) & ~np.isfinite(target))
        used += 1
    return out, used


# ---------------------------------------------------------------- checks and conversion

def _range_problem(what: str, values: np.ndarray, lo: float, hi: float, unit: str) -> str | None:
    bad = (values < lo) | (values > hi)
    if not bad.any():
        return None
    n = int(bad.sum())
    return (f"{n} of {values.size} {what} values lie outside {lo:g}..{hi:g} {unit} "
            f"(min {float(values.min()):g}, max {float(values.max()):g}); "
            "wrong units, or an undeclared nodata value?")


def to_layer_values(layer: str, data: np.ndarray, where: str, *, integer_source: bool,
                    source_dtype: DTypeLike | None = None) -> tuple[np.ndarray, dict]:
    """Physical float32 values (NaN = no data) -> the layer's stored dtype, after range checks.

    `where` names the file in errors; `integer_source` says whether the source band held integers
    (NDVI floats must be -1..1; integers are MOD13Q1 scaling, -2000..10000, at least 16-bit:
    `source_dtype`). Returns (array, notes).
    """
    spec = SPECS[layer]
    valid = np.isfinite(data)
    values = data[valid]
    if values.size == 0:
        raise StaticLayerError(f"{where}: no valid {layer} data over the region")
    notes: dict = {}
    if layer in ("elevation", "population"):
        problem = _range_problem(layer, values, *spec.valid, spec.units)
        if problem:
            raise StaticLayerError(f"{where}: {problem}")
        out = np.where(valid, data, spec.nodata).astype(np.float32)
    elif layer == "ndvi":
        lo, hi = float(values.min()), float(values.max())
        if not integer_source:
            if lo < -1.0001 or hi > 1.0001:
                raise StaticLayerError(
                    f"{where}: NDVI values span {lo:g}..{hi:g}; floating-point NDVI must lie in -1..1 "
                    "(MOD13Q1-scaled NDVI, NDVI * 1e4, must be stored as integers)")
            scaled = np.round(np.clip(data, -1.0, 1.0) / NDVI_SCALE)
            notes["ndvi_input"] = "floats -1..1, scaled by 1e4"
        else:
            if source_dtype is not None and np.dtype(source_dtype).itemsize < 2:
                raise StaticLayerError(f"{where}: 8-bit NDVI ({source_dtype}) is not MOD13Q1 scaling; "
                                       "give NDVI as floats -1..1 or as MOD13Q1 int16 (NDVI * 1e4)")
            if lo < -2000 or hi > 10000:
                raise StaticLayerError(
                    f"{where}: NDVI values span {lo:g}..{hi:g}; MOD13Q1 integers lie in -2000..10000 "
                    "(NDVI * 1e4) with fill -3000, which must be declared as the nodata value")
            scaled = np.round(data)
            notes["ndvi_input"] = "MOD13Q1 integers (NDVI * 1e4)"
        out = np.where(valid, scaled, spec.nodata).astype(np.int16)
    elif layer == "landcover":
        if not np.all(values == np.round(values)):
            raise StaticLayerError(f"{where}: land cover must hold integer class codes, found fractions "
                                   f"(e.g. {float(values[values != np.round(values)][0]):g})")
        codes = set(np.unique(values).astype(np.int64).tolist()) - {0}
        if not codes:
            raise StaticLayerError(f"{where}: no land cover classes over the region (only 0 = no data)")
        if codes <= set(OUR_CLASSES):
            out = np.where(valid, data, 0).astype(np.uint8)
            notes["landcover_input"] = "classes 1..7"
        elif codes <= set(LCCS_TO_CLASS):
            out = map_lccs(np.where(valid, data, 0))
            notes["landcover_input"] = "ESA CCI LCCS codes mapped to 7 classes"
        else:
            unknown = sorted(codes - set(LCCS_TO_CLASS) - set(OUR_CLASSES)) or sorted(codes)
            raise StaticLayerError(
                f"{where}: land cover codes {unknown[:10]} are neither our classes 1..7 (cropland, forest, "
                "grassland, shrubland, urban, water, bare) nor ESA CCI LCCS codes (10..220)")
    else:  # pragma: no cover - check_layer guards
        raise StaticLayerError(f"unknown layer {layer}")
    return out, notes


# ---------------------------------------------------------------- writing and the record

def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_layer(path: Path, layer: str, values: np.ndarray, grid: Grid, tags: dict) -> Path:
    spec = SPECS[layer]
    return write_geotiff(path, values, grid.transform, nodata=spec.nodata,
                         scale=NDVI_SCALE if layer == "ndvi" else None, units=spec.units,
                         tags={"layer": layer, **tags})


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{LAYERS_JSON}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_layers_json(folder: Path) -> dict:
    try:
        data = json.loads((folder / LAYERS_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_layer(folder: Path, layer: str, path: Path, source: str, **extra: Any) -> dict:
    """Add or replace `path`'s entry in `<static>/layers.json` (keyed by file name)."""
    entry = {
        "layer": layer,
        "file": path.name,
        "source": source,
        "sha256": sha256_of(path),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    with _locked(folder):
        data = read_layers_json(folder)
        data[path.name] = entry
        write_json(folder / LAYERS_JSON, dict(sorted(data.items())))
    return entry


def region_coverage(values: np.ndarray, nodata: float, grid: Grid, settings: Settings) -> float:
    """Fraction of the region box (no margin) where the layer has data."""
    w, s, e, n = region_box(settings)
    c0 = max(0, int(math.floor((w - grid.west) / grid.step)))
    c1 = min(grid.nx, int(math.ceil((e - grid.west) / grid.step)))
    r0 = max(0, int(math.floor((grid.north - n) / grid.step)))
    r1 = min(grid.ny, int(math.ceil((grid.north - s) / grid.step)))
    inside = values[r0:r1, c0:c1]
    if inside.size == 0:
        return 0.0
    full = (int(math.ceil((e - w) / grid.step)) * int(math.ceil((n - s) / grid.step))) or 1
    return round(float((inside != nodata).sum()) / max(full, inside.size), 4)


def grid_tags(grid: Grid) -> dict:
    return {"crs": "EPSG:4326", "step_deg": grid.step,
            "bounds": [grid.west, grid.south, grid.east, grid.north]}

