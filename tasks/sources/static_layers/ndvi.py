"""NDVI from MODIS MOD13Q1 (Terra) and MYD13Q1 (Aqua) v061 16-day composites, via earthaccess.

The granules are HDF-EOS2 (HDF4) files on the MODIS sinusoidal tile grid
(`MOD13Q1.A2020001.h26v05.061.2020018013512.hdf`); NDVI is the grid field
`MODIS_Grid_16DAY_250m_500m_VI` / `250m 16 days NDVI`, stored as the HDF4 SDS of that name:
int16, `_FillValue` -3000, `valid_range` -2000..10000, `scale_factor` 10000 in the MODIS land
sense (NDVI = value / 10000; a CF-style factor below 1, NDVI = value * factor, is accepted too).
Terra composites start on day 1, 17, 33...; Aqua's on day 9, 25, 41..., so together they give
one composite every 8 days (Table 2's "8 days"): both are written.

GDAL's HDF4 driver is missing from the rasterio wheels, so the files are read with pyhdf (HDF4
SD interface). The georeferencing comes from the grid's `StructMetadata.0` (ODL:
UpperLeftPointMtrs, LowerRightMtrs, XDim, YDim, GCTP_SNSOID on the 6371007.181 m sphere); a file
without it falls back to the tile grid of the name (hHHvVV: upper-left x = -20015109.354 +
h * 1111950.519667 m, y = 10007554.677 - v * 1111950.519667 m; 4800 x 4800 pixels of
231.656358263889 m). For each composite, the part of every tile that covers the region + margin
is mosaicked on the tiles' own sinusoidal pixel grid, then reprojected once, by area averaging,
onto a 0.0025 degree EPSG:4326 grid and written as `ndvi_YYYYDDD.tif` (composite start).

Composites already present (built or imported) are skipped unless `force`, and the archive is
not asked at all when every Terra and Aqua composite of the window is present, or when imported
composites (e.g. Terra only, from AppEEARS) cover every day. A composite that fails (download,
unreadable file) fails the layer, naming the file, but the others are written; a rerun fetches
only what is missing. Without pyhdf the layer fails, before anything is downloaded, with a
message that says how to import GeoTIFFs instead.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform_bounds

from tasks.gridding.geometry import Grid
from tasks.settings import Settings
from tasks.sources.credentials import MissingCredentials, redact
from tasks.sources.retry import PermanentSourceError
from tasks.sources.static_layers.clients import Archives, download, download_dir, link_names, search
from tasks.sources.static_layers.common import (
    MARGIN_DEG,
    SPECS,
    WGS84,
    StaticLayerError,
    grid_tags,
    output_path,
    read_layers_json,
    record_layer,
    region_box,
    region_coverage,
    snapped_grid,
    static_dir,
    to_layer_values,
    write_layer,
)

log = logging.getLogger(__name__)

PRODUCTS = {"MOD13Q1": 1, "MYD13Q1": 9}  # short name -> first composite's day of year
VERSION = "061"
COMPOSITE_DAYS = 16
GRID_NAME = "MODIS_Grid_16DAY_250m_500m_VI"
NDVI_FIELD = "250m 16 days NDVI"
STEP_DEG = 1 / 400  # 0.0025 degree, about the 250 m MODIS pixel
RESAMPLING = Resampling.average

# The MODIS sinusoidal tile grid (MODIS Land grid, sphere of radius 6371007.181 m).
SPHERE_RADIUS_M = 6371007.181
SINUSOIDAL = CRS.from_string(f"+proj=sinu +R={SPHERE_RADIUS_M} +nadgrids=@null +wktext")
# 36 tiles span the 2 * 20015109.354 m of the equator: 1111950.519667 m (the real h08v05 corners are
# UL (-11119505.196667, 4447802.078667), LR (-10007554.677000, 3335851.559000)).
TILE_SIZE_M = 20015109.354 / 18
GRID_WEST_M = -20015109.354
GRID_NORTH_M = 10007554.677

NDVI_FILL = -3000
NDVI_VALID = (-2000, 10000)
NDVI_SCALE = 10000.0  # MODIS land convention: NDVI = value / scale_factor

_GRANULE = re.compile(r"^(MOD13Q1|MYD13Q1)\.A(\d{7})\.h(\d{2})v(\d{2})\.(\d{3})\.([^.]+)\.hdf$")
_NDVI_FILE = re.compile(r"^ndvi_(\d{4})(\d{3})\.tif$")
_INTEGER_TYPES = {20: "int8", 21: "uint8", 22: "int16", 23: "uint16", 24: "int32", 25: "uint32"}  # SDC codes


class Hdf4Unavailable(StaticLayerError):
    """pyhdf (the HDF4 reader) cannot be imported, so MODIS NDVI granules cannot be converted here."""


def _import_pyhdf() -> ModuleType:
    """The pyhdf.SD module, or Hdf4Unavailable saying why not and what to do instead."""
    try:
        from pyhdf import SD  # noqa: PLC0415 - only when NDVI is built
    except (ImportError, OSError) as exc:  # OSError: the HDF4 shared library failed to load
        raise Hdf4Unavailable(hdf4_missing_help(f"{type(exc).__name__}: {exc}")) from None
    return SD


def has_hdf4() -> bool:
    """Whether MODIS HDF4 granules can be read here (pyhdf importable)."""
    try:
        _import_pyhdf()
    except Hdf4Unavailable:
        return False
    return True


def hdf4_missing_help(reason: str = "not installed") -> str:
    return (
        "MODIS MOD13Q1/MYD13Q1 NDVI granules are HDF-EOS2 (HDF4) files, read here with the pyhdf package, "
        f"which cannot be imported ({reason}; the GDAL inside rasterio has no HDF4 driver either), so NDVI "
        "cannot be built from the archive (nothing was downloaded). Install pyhdf (a project dependency: "
        "`pip install pyhdf`), or supply NDVI as GeoTIFFs instead: export the '250m 16 days NDVI' layer "
        "of MOD13Q1/MYD13Q1 v061 over the region as GeoTIFF (for example with NASA AppEEARS, an area "
        "request with GeoTIFF output), then import each 16-day composite with "
        "`xco2 covariates import ndvi FILE.tif --start YYYY-MM-DD`, where the date is the composite's "
        "first day (the AYYYYDDD date in the MODIS granule name). MOD13Q1 integers (NDVI * 1e4, "
        "fill -3000) and NDVI floats -1..1 are both accepted."
    )


# ---------------------------------------------------------------- composites and granule names

def composite_end(first_day: date) -> date:
    """Last day of a composite: 16 days, cut at the year's end (MODIS restarts on 1 January)."""
    return min(first_day + timedelta(days=COMPOSITE_DAYS - 1), date(first_day.year, 12, 31))


def composite_starts(start: date, end: date) -> list[tuple[date, str]]:
    """(start day, product) of every Terra/Aqua composite overlapping [start, end]."""
    out = []
    for year in range(start.year - 1, end.year + 1):
        for product, first in PRODUCTS.items():
            for doy in range(first, 367, COMPOSITE_DAYS):
                day = date(year, 1, 1) + timedelta(days=doy - 1)
                if day.year != year:
                    break
                if day <= end and composite_end(day) >= start:
                    out.append((day, product))
    return sorted(out)


def present_composites(settings: Settings) -> set[date]:
    out = set()
    for path in static_dir(settings).rglob("ndvi_*.tif"):
        m = _NDVI_FILE.match(path.name)
        if m:
            out.add((datetime(int(m.group(1)), 1, 1) + timedelta(days=int(m.group(2)) - 1)).date())
    return out


def uncovered_days(present: set[date], start: date, end: date) -> list[date]:
    """Days in [start, end] that no present composite covers."""
    covered = {s + timedelta(days=k) for s in present for k in range((composite_end(s) - s).days + 1)}
    days = [start + timedelta(days=k) for k in range((end - start).days + 1)]
    return [d for d in days if d not in covered]


@dataclass(frozen=True)
class GranuleName:
    product: str
    start: date
    h: int
    v: int
    version: str
    production: str

    @property
    def tile(self) -> str:
        return f"h{self.h:02d}v{self.v:02d}"


def parse_granule_name(name: str) -> GranuleName | None:
    """`MOD13Q1.A2021001.h26v05.061.2021018013512.hdf` -> its parts; None for other names."""
    m = _GRANULE.match(name)
    if not m:
        return None
    try:
        start = datetime.strptime(m.group(2), "%Y%j").date()
    except ValueError:
        return None
    return GranuleName(m.group(1), start, int(m.group(3)), int(m.group(4)), m.group(5), m.group(6))


# ---------------------------------------------------------------- tile georeferencing

@dataclass(frozen=True)
class TileGeometry:
    """Where a tile's pixels lie on the sinusoidal grid (upper-left corner, pixel size in metres)."""

    ul_x: float
    ul_y: float
    pixel_x: float
    pixel_y: float
    width: int
    height: int
    origin: str  # "StructMetadata.0" or "tile name"

    @property
    def transform(self) -> Affine:
        return Affine(self.pixel_x, 0.0, self.ul_x, 0.0, -self.pixel_y, self.ul_y)


def tile_upper_left(h: int, v: int) -> tuple[float, float]:
    """Upper-left corner (m) of MODIS sinusoidal tile hHHvVV."""
    return GRID_WEST_M + h * TILE_SIZE_M, GRID_NORTH_M - v * TILE_SIZE_M


def _odl_numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]


def parse_struct_metadata(text: str, grid_name: str = GRID_NAME, field: str = NDVI_FIELD) -> dict | None:
    """The grid holding `field` in an HDF-EOS2 StructMetadata (ODL) text, as a dict; None if absent.

    Keys: XDim, YDim (int), UpperLeftPointMtrs, LowerRightMtrs, ProjParams (float tuples),
    Projection, GridName (str); keys missing from the text are left out.
    """
    text = text.replace("\x00", "")
    grids = re.findall(r"GROUP=(GRID_\d+)\s*\n(.*?)END_GROUP=\1\b", text, flags=re.DOTALL)
    chosen = None
    for _, body in grids:
        name = re.search(r'^\s*GridName="?([^"\n]*)"?\s*$', body, flags=re.MULTILINE)
        if (name and name.group(1).strip() == grid_name) or f'DataFieldName="{field}"' in body:
            chosen = body
            break
    if chosen is None:
        if len(grids) != 1:
            return None
        chosen = grids[0][1]
    out: dict = {}
    for key in ("XDim", "YDim", "UpperLeftPointMtrs", "LowerRightMtrs", "Projection", "ProjParams", "GridName"):
        m = re.search(rf"^\s*{key}=(.*)$", chosen, flags=re.MULTILINE)
        if not m:
            continue
        raw = m.group(1).strip()
        if key in ("XDim", "YDim"):
            out[key] = int(float(raw))
        elif key in ("UpperLeftPointMtrs", "LowerRightMtrs", "ProjParams"):
            out[key] = tuple(_odl_numbers(raw))
        else:
            out[key] = raw.strip('"')
    return out


def tile_geometry(struct_metadata: str | None, shape: tuple[int, int], h: int | None, v: int | None,
                  where: str) -> TileGeometry:
    """The tile's georeferencing: from StructMetadata.0 when it has one, else from the tile name.

    Both are checked against each other (and against the SDS's shape) when both are known.
    """
    rows, cols = shape
    named = tile_upper_left(h, v) if h is not None and v is not None else None
    try:
        meta = parse_struct_metadata(struct_metadata) if struct_metadata else None
    except ValueError as exc:
        raise StaticLayerError(f"{where}: unreadable StructMetadata.0 ({exc})") from None
    if meta and len(meta.get("UpperLeftPointMtrs", ())) >= 2 and len(meta.get("LowerRightMtrs", ())) >= 2:
        projection = meta.get("Projection", "GCTP_SNSOID")
        if projection != "GCTP_SNSOID":
            raise StaticLayerError(f"{where}: grid projection {projection}, expected the MODIS sinusoidal "
                                   "(GCTP_SNSOID)")
        radius = (meta.get("ProjParams") or (SPHERE_RADIUS_M,))[0]
        if abs(radius - SPHERE_RADIUS_M) > 1.0:
            raise StaticLayerError(f"{where}: sinusoidal sphere radius {radius} m, expected {SPHERE_RADIUS_M} m")
        xdim, ydim = meta.get("XDim", cols), meta.get("YDim", rows)
        if (ydim, xdim) != (rows, cols):
            raise StaticLayerError(f"{where}: StructMetadata.0 says {ydim} x {xdim} pixels, but "
                                   f"'{NDVI_FIELD}' has {rows} x {cols}")
        (ul_x, ul_y), (lr_x, lr_y) = meta["UpperLeftPointMtrs"][:2], meta["LowerRightMtrs"][:2]
        if not (lr_x > ul_x and ul_y > lr_y):
            raise StaticLayerError(f"{where}: StructMetadata.0 corners UL ({ul_x}, {ul_y}) LR ({lr_x}, {lr_y}) "
                                   "are not a north-up grid")
        geometry = TileGeometry(ul_x, ul_y, (lr_x - ul_x) / cols, (ul_y - lr_y) / rows, cols, rows,
                                "StructMetadata.0")
        if named is not None:
            dx, dy = abs(named[0] - ul_x), abs(named[1] - ul_y)
            if max(dx / geometry.pixel_x, dy / geometry.pixel_y) > 0.5:
                log.warning("%s: StructMetadata.0 upper-left (%.3f, %.3f) differs from tile h%02dv%02d's "
                            "(%.3f, %.3f); using StructMetadata.0", where, ul_x, ul_y, h, v, *named)
        return geometry
    if named is None:
        raise StaticLayerError(f"{where}: no StructMetadata.0 grid and no hHHvVV tile in the name: "
                               "cannot georeference it")
    return TileGeometry(named[0], named[1], TILE_SIZE_M / cols, TILE_SIZE_M / rows, cols, rows, "tile name")


# ---------------------------------------------------------------- reading and mosaicking

def _struct_metadata(global_attrs: dict) -> str | None:
    """StructMetadata.0, .1, ... joined (HDF-EOS2 splits it into 32000-character pieces)."""
    parts = []
    for key, value in global_attrs.items():
        m = re.fullmatch(r"StructMetadata\.(\d+)", key)
        if m and isinstance(value, str):
            parts.append((int(m.group(1)), value))
    return "".join(v for _, v in sorted(parts)) or None


def _to_ndvi_1e4(raw: np.ndarray, attrs: dict, where: str) -> np.ndarray:
    """int SDS values -> float32 NDVI * 1e4, NaN for fill and out-of-range values."""
    fill = attrs.get("_FillValue", NDVI_FILL)
    lo, hi = (attrs.get("valid_range") or NDVI_VALID)[:2]
    scale = float(attrs.get("scale_factor", NDVI_SCALE))
    offset = float(attrs.get("add_offset", 0.0))
    if not math.isfinite(scale) or scale <= 0:
        raise StaticLayerError(f"{where}: '{NDVI_FIELD}' has scale_factor {scale}; expected 10000")
    bad = (raw == fill) | (raw < lo) | (raw > hi)
    values = raw.astype(np.float64) - offset
    # MODIS land products write scale_factor 10000 meaning NDVI = value / 10000; a CF-style
    # factor (< 1, e.g. 0.0001) means NDVI = value * factor.
    ndvi = values / scale if scale > 1.0 else values * scale
    out = (ndvi * 1e4).astype(np.float32)
    out[bad] = np.nan
    return out


@dataclass
class TilePart:
    name: str
    data: np.ndarray  # float32 NDVI * 1e4, NaN = no data
    transform: Affine
    geometry: TileGeometry


def read_ndvi_tile(path: Path, bounds: tuple[float, float, float, float],
                   pad_pixels: int = 2) -> TilePart | None:
    """The part of a granule's NDVI inside sinusoidal `bounds` (+ `pad_pixels`); None if outside.

    Errors (unreadable file, missing field, odd georeferencing) name the file.
    """
    sd_module = _import_pyhdf()
    where = path.name
    parsed = parse_granule_name(path.name)
    try:
        hdf = sd_module.SD(str(path), sd_module.SDC.READ)
    except sd_module.HDF4Error as exc:
        raise StaticLayerError(f"{where}: not a readable HDF4 file ({exc}); "
                               "corrupt or incomplete download?") from None
    try:
        try:
            global_attrs = hdf.attributes()
            sds = hdf.select(NDVI_FIELD)
        except sd_module.HDF4Error as exc:
            try:
                names = ", ".join(sorted(hdf.datasets())[:8]) or "none"
            except sd_module.HDF4Error:
                names = "unreadable"
            raise StaticLayerError(f"{where}: no readable '{NDVI_FIELD}' dataset ({exc}); "
                                   f"datasets: {names}") from None
        try:
            _, rank, dims, number_type, _ = sds.info()
            if rank != 2:
                raise StaticLayerError(f"{where}: '{NDVI_FIELD}' has {rank} dimensions, expected 2")
            if number_type not in _INTEGER_TYPES:
                raise StaticLayerError(f"{where}: '{NDVI_FIELD}' holds HDF number type {number_type}, "
                                       "expected int16 (NDVI * 1e4)")
            rows, cols = int(dims[0]), int(dims[1])
            geometry = tile_geometry(_struct_metadata(global_attrs), (rows, cols),
                                     parsed.h if parsed else None, parsed.v if parsed else None, where)
            west, south, east, north = bounds
            c0 = max(0, int(math.floor((west - geometry.ul_x) / geometry.pixel_x)) - pad_pixels)
            c1 = min(cols, int(math.ceil((east - geometry.ul_x) / geometry.pixel_x)) + pad_pixels)
            r0 = max(0, int(math.floor((geometry.ul_y - north) / geometry.pixel_y)) - pad_pixels)
            r1 = min(rows, int(math.ceil((geometry.ul_y - south) / geometry.pixel_y)) + pad_pixels)
            if c1 <= c0 or r1 <= r0:
                return None
            attrs = sds.attributes()
            raw = np.asarray(sds[r0:r1, c0:c1])
        except sd_module.HDF4Error as exc:
            raise StaticLayerError(f"{where}: reading '{NDVI_FIELD}' failed ({exc}); corrupt file?") from None
        finally:
            sds.endaccess()
    finally:
        hdf.end()
    data = _to_ndvi_1e4(raw.reshape(r1 - r0, c1 - c0), attrs, where)
    transform = geometry.transform @ Affine.translation(c0, r0)
    return TilePart(path.name, data, transform, geometry)


def sinusoidal_bounds(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in metres of a lon/lat box on the MODIS sinusoidal grid."""
    return transform_bounds(WGS84, SINUSOIDAL, *box, densify_pts=101)


def mosaic_sinusoidal(files: list[Path], box: tuple[float, float, float, float]
                      ) -> tuple[np.ndarray, Affine, list[str]] | None:
    """The tiles' NDVI over lon/lat `box` on their common sinusoidal pixel grid (first valid wins).

    Returns (float32 NDVI * 1e4 with NaN gaps, its transform, names of the tiles used), or None
    when no tile reaches the box.
    """
    xmin, ymin, xmax, ymax = sinusoidal_bounds(box)
    parts: list[TilePart] = []
    for path in files:
        # Two pixels more on every side, so the resampling at the box's edge has its neighbours.
        part = read_ndvi_tile(path, (xmin, ymin, xmax, ymax), pad_pixels=2)
        if part is not None:
            parts.append(part)
    if not parts:
        return None
    px, py = parts[0].transform.a, -parts[0].transform.e
    for p in parts[1:]:
        if abs(p.transform.a - px) > 1e-6 * px or abs(-p.transform.e - py) > 1e-6 * py:
            raise StaticLayerError(f"{p.name}: {p.transform.a:.6f} m pixels, but {parts[0].name} has "
                                   f"{px:.6f} m: tiles of one composite must share one grid")
    x0 = min(p.transform.c for p in parts)
    y0 = max(p.transform.f for p in parts)
    offsets = []
    for p in parts:
        col, row = (p.transform.c - x0) / px, (y0 - p.transform.f) / py
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            raise StaticLayerError(f"{p.name}: not aligned with the pixel grid of {parts[0].name}")
        offsets.append((int(round(row)), int(round(col))))
    height = max(r + p.data.shape[0] for (r, _), p in zip(offsets, parts))
    width = max(c + p.data.shape[1] for (_, c), p in zip(offsets, parts))
    out = np.full((height, width), np.nan, dtype=np.float32)
    for (r, c), p in zip(offsets, parts):
        target = out[r:r + p.data.shape[0], c:c + p.data.shape[1]]
        np.copyto(target, p.data, where=np.isfinite(p.data) & ~np.isfinite(target))
    return out, Affine(px, 0.0, x0, 0.0, -py, y0), [p.name for p in parts]


def reproject_to_grid(data: np.ndarray, transform: Affine, grid: Grid,
                      resampling: Resampling = RESAMPLING) -> np.ndarray:
    """A sinusoidal float32 array (NaN = no data) onto the EPSG:4326 `grid`, NaN where nothing."""
    dst = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(source=data, destination=dst, src_transform=transform, src_crs=SINUSOIDAL, src_nodata=np.nan,
              dst_transform=grid.transform, dst_crs=WGS84, dst_nodata=np.nan, resampling=resampling,
              init_dest_nodata=True)
    return dst


# ---------------------------------------------------------------- the build

def _built_from_archive(settings: Settings, composites: list[date]) -> bool:
    """Whether any of these composites was built from the archive (not imported) by this builder."""
    record = read_layers_json(static_dir(settings))
    names = {output_path(settings, "ndvi", d).name for d in composites}
    return any(record.get(n, {}).get("method") == "build" for n in names)


def build_ndvi(archives: Archives, start: date, end: date, force: bool = False) -> dict:
    settings = archives.settings
    present = present_composites(settings)
    expected = composite_starts(start, end)
    in_range = sorted(s for s in present if s <= end and composite_end(s) >= start)
    absent = [(d, p) for d, p in expected if d not in present]
    files = [output_path(settings, "ndvi", s).name for s in in_range]
    if not force:
        if not absent:
            return {"status": "skipped", "files": files,
                    "message": f"all {len(in_range)} composites of {start}..{end} are present"}
        if not uncovered_days(present, start, end) and not _built_from_archive(settings, in_range):
            # Imported composites (e.g. Terra only, from AppEEARS) cover every day: leave them be.
            return {"status": "skipped", "files": files,
                    "message": f"{len(in_range)} imported composites already cover {start}..{end} "
                               f"({len(absent)} other MOD13Q1/MYD13Q1 composites not fetched; --force builds "
                               "all from the archive)"}
    try:
        _import_pyhdf()  # before logging in or downloading anything
    except Hdf4Unavailable as exc:
        missing = uncovered_days(present, start, end)
        if not in_range:
            have = f" No NDVI composite covering {start}..{end} is present yet."
        elif missing:
            have = (f" The {len(in_range)} composites present leave {len(missing)} days of {start}..{end} "
                    f"uncovered (first {missing[0]}).")
        else:
            have = f" {len(in_range)} composites covering {start}..{end} are present."
        raise Hdf4Unavailable(str(exc) + have) from None
    wanted = expected if force else absent
    return _build_from_archive(archives, start, end, wanted)


def _describe(exc: Exception) -> str:
    if isinstance(exc, (StaticLayerError, PermanentSourceError, MissingCredentials)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _build_from_archive(archives: Archives, start: date, end: date, wanted: list[tuple[date, str]]) -> dict:
    settings = archives.settings
    ea = archives.earthaccess()
    box = region_box(settings, MARGIN_DEG)
    wanted_keys = {(p, d) for d, p in wanted}
    # (product, composite start) -> tile -> (parsed name, granule, file name); the latest
    # production wins when the archive holds a tile twice.
    groups: dict[tuple[str, date], dict[str, tuple[GranuleName, object, str]]] = {}
    for product in PRODUCTS:
        if not any(p == product for p, _ in wanted_keys):
            continue
        granules = search(ea, f"{product} {VERSION}", short_name=product, version=VERSION, bounding_box=box,
                          temporal=(start.isoformat(), end.isoformat()))
        for g in granules:
            for name in link_names(g):
                parsed = parse_granule_name(name)
                if parsed is None or parsed.product != product or parsed.version != VERSION:
                    continue
                key = (product, parsed.start)
                if key in wanted_keys:
                    tiles = groups.setdefault(key, {})
                    old = tiles.get(parsed.tile)
                    if old is None or parsed.production > old[0].production:
                        tiles[parsed.tile] = (parsed, g, name)
                break
    if not groups:
        raise StaticLayerError(f"MOD13Q1/MYD13Q1 {VERSION}: no granules for the {len(wanted)} composites of "
                               f"{start}..{end} over the region (+{MARGIN_DEG} degree margin)")
    not_found = sorted((d, p) for p, d in wanted_keys - set(groups))
    grid = snapped_grid(box, STEP_DEG)
    written: list[str] = []
    failures: list[str] = []
    for product, day in sorted(groups, key=lambda k: (k[1], k[0])):
        tiles = groups[(product, day)]
        try:
            written.append(_build_composite(ea, settings, product, day, tiles, grid, box))
        except Exception as exc:  # noqa: BLE001 - one composite's failure must not stop the others
            text = redact(_describe(exc))
            failures.append(f"{product} composite {day} ({output_path(settings, 'ndvi', day).name}): {text}")
            log.error("NDVI %s composite %s failed: %s", product, day, text)
    notes = []
    if not_found:
        notes.append(f"{len(not_found)} composites not in the archive (yet): "
                     + ", ".join(f"{p} {d}" for d, p in not_found))
    if failures:
        message = (f"{len(failures)} of {len(groups)} NDVI composites failed: " + "; ".join(failures)
                   + (f". Written: {', '.join(written)}" if written else ". None written")
                   + "".join(f"; {n}" for n in notes))
        return {"status": "failed", "files": written, "message": message}
    return {"status": "built", "files": written,
            "message": f"{len(written)} composites" + "".join(f"; {n}" for n in notes)}


def _build_composite(ea: Any, settings: Settings, product: str, day: date,
                     tiles: dict[str, tuple[GranuleName, object, str]], grid: Grid,
                     box: tuple[float, float, float, float]) -> str:
    dest = output_path(settings, "ndvi", day)
    granules = [tiles[t][1] for t in sorted(tiles)]
    names = {tiles[t][2] for t in tiles}
    with download_dir(settings, "ndvi") as tmp:
        files = download(ea, granules, tmp, f"{len(granules)} {product} tiles for {day}")
        hdfs = sorted(f for f in files if f.name in names)
        missing = sorted(names - {f.name for f in hdfs})
        if missing:  # a mosaic with a hole where a tile should be is worse than none
            raise StaticLayerError(f"{product} {day}: {', '.join(missing)} did not download "
                                   f"(got {', '.join(sorted(f.name for f in files)) or 'nothing'})")
        result = mosaic_sinusoidal(hdfs, box)
    if result is None:
        raise StaticLayerError(f"{product} {day}: none of the tiles {', '.join(sorted(tiles))} reaches the region")
    data, transform, used = result
    values_1e4 = reproject_to_grid(data, transform, grid)
    values, notes = to_layer_values("ndvi", values_1e4, f"{product} NDVI mosaic {day} ({', '.join(used)})",
                                    integer_source=True, source_dtype=np.int16)
    end = composite_end(day)
    write_layer(dest, "ndvi", values, grid, {"source": f"{product}.{VERSION}", "composite_start": day.isoformat(),
                                             "composite_end": end.isoformat(), "tiles": ",".join(used)})
    record_layer(static_dir(settings), "ndvi", dest, source=f"earthaccess:{product}.{VERSION}", method="build",
                 product=product, composite_start=day.isoformat(), composite_end=end.isoformat(), tiles=used,
                 resampling=RESAMPLING.name, region_coverage=region_coverage(values, SPECS["ndvi"].nodata, grid,
                                                                             settings),
                 **grid_tags(grid), **notes)
    log.info("NDVI %s composite %s: %s from %d tiles", product, day, dest.name, len(used))
    return dest.name
