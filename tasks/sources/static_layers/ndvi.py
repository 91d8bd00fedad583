"""NDVI from MODIS MOD13Q1 (Terra) and MYD13Q1 (Aqua) v061 16-day composites, via earthaccess.

The granules are HDF-EOS2 (HDF4) files on the MODIS sinusoidal tile grid
(`MOD13Q1.A2020001.h26v05.061.2020018013512.hdf`); NDVI is the grid field
`MODIS_Grid_16DAY_250m_500m_VI` / `250m 16 days NDVI`: int16, NDVI * 1e4, valid -2000..10000,
fill -3000. Terra composites start on day 1, 17, 33...; Aqua's on day 9, 25, 41..., so together
they give one composite every 8 days (Table 2's "8 days").

Reading them needs GDAL's HDF4 driver. The GDAL bundled in the rasterio wheels has none (checked
at run time with `has_hdf4()`); then the layer fails with HDF4_MISSING_HELP, which says how to
supply NDVI as GeoTIFFs (`xco2 covariates import ndvi FILE.tif --start YYYY-MM-DD`), and
nothing is downloaded. Where the driver exists, each composite's tiles are mosaicked onto a
0.0025 degree EPSG:4326 grid by area averaging and written as `ndvi_YYYYDDD.tif` (composite start).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import rasterio
from rasterio.warp import Resampling

from tasks.settings import Settings
from tasks.sources.static_layers.clients import Archives, download, download_dir, link_names, search
from tasks.sources.static_layers.common import (
    MARGIN_DEG,
    SPECS,
    StaticLayerError,
    grid_tags,
    mosaic,
    output_path,
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
_GRANULE = re.compile(r"^(MOD13Q1|MYD13Q1)\.A(\d{7})\.h\d{2}v\d{2}\.\d{3}\..*\.hdf$")
_NDVI_FILE = re.compile(r"^ndvi_(\d{4})(\d{3})\.tif$")


class Hdf4Unavailable(StaticLayerError):
    """This GDAL cannot read HDF4, so MODIS NDVI granules cannot be converted here."""


def has_hdf4() -> bool:
    """Whether the GDAL inside this rasterio has the HDF4 driver."""
    with rasterio.Env() as env:
        drivers = env.drivers()
    return "HDF4" in drivers or "HDF4Image" in drivers


def hdf4_missing_help() -> str:
    return (
        "MODIS MOD13Q1/MYD13Q1 NDVI granules are HDF-EOS2 (HDF4) files, and the GDAL "
        f"{rasterio.__gdal_version__} bundled with this rasterio {rasterio.__version__} has no HDF4 driver, "
        "so NDVI cannot be built from the archive here (nothing was downloaded). Supply NDVI as GeoTIFFs "
        "instead: export the '250m 16 days NDVI' layer of MOD13Q1/MYD13Q1 v061 over the region as GeoTIFF "
        "(for example with NASA AppEEARS, an area request with GeoTIFF output), then import each 16-day "
        "composite with `xco2 covariates import ndvi FILE.tif --start YYYY-MM-DD`, where the date is the "
        "composite's first day (the AYYYYDDD date in the MODIS granule name). MOD13Q1 integers "
        "(NDVI * 1e4, fill -3000) and NDVI floats -1..1 are both accepted."
    )


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


def ndvi_subdataset(path: Path) -> str:
    return f'HDF4_EOS:EOS_GRID:"{path}":{GRID_NAME}:{NDVI_FIELD}'


def build_ndvi(archives: Archives, start: date, end: date, force: bool = False) -> dict:
    settings = archives.settings
    present = present_composites(settings)
    in_range = sorted(s for s in present if s <= end and composite_end(s) >= start)
    missing_days = uncovered_days(present, start, end)
    if not missing_days and not force:
        return {"status": "skipped", "files": [output_path(settings, "ndvi", s).name for s in in_range],
                "message": f"{len(in_range)} composites already cover {start}..{end}"}
    if not has_hdf4():
        if not in_range:
            have = f" No NDVI composite covering {start}..{end} is present yet."
        else:
            have = (f" The {len(in_range)} composites present leave {len(missing_days)} days of {start}..{end} "
                    f"uncovered (first {missing_days[0]}).")
        raise Hdf4Unavailable(hdf4_missing_help() + have)
    return _build_from_hdf4(archives, start, end, present, force)  # pragma: no cover - needs HDF4


def _build_from_hdf4(archives: Archives, start: date, end: date, present: set[date],
                     force: bool) -> dict:  # pragma: no cover - no HDF4 driver in the rasterio wheels
    """Untested here: runs only where GDAL has the HDF4 driver."""
    settings = archives.settings
    ea = archives.earthaccess()
    box = region_box(settings, MARGIN_DEG)
    wanted = {s for s, _ in composite_starts(start, end) if force or s not in present}
    groups: dict[date, list] = defaultdict(list)
    for product in PRODUCTS:
        granules = search(ea, f"{product} {VERSION}", short_name=product, version=VERSION, bounding_box=box,
                          temporal=((start - timedelta(days=COMPOSITE_DAYS - 1)).isoformat(), end.isoformat()))
        for g in granules:
            for name in link_names(g):
                m = _GRANULE.match(name)
                if m:
                    day = datetime.strptime(m.group(2), "%Y%j").date()
                    if day in wanted:
                        groups[day].append(g)
                    break
    if not groups:
        raise StaticLayerError(f"MOD13Q1/MYD13Q1 {VERSION}: no granules for {start}..{end} over the region")
    grid = snapped_grid(box, STEP_DEG)
    written = []
    for day in sorted(groups):
        dest = output_path(settings, "ndvi", day)
        with download_dir(settings, "ndvi") as tmp:
            files = download(ea, groups[day], tmp, f"{len(groups[day])} NDVI tiles for {day}")
            subs = [ndvi_subdataset(f) for f in files if f.suffix.lower() == ".hdf"]
            data, _ = mosaic(subs, grid, Resampling.average, src_nodata=SPECS["ndvi"].nodata)
            names = sorted(f.name for f in files)
        values, notes = to_layer_values("ndvi", data, f"NDVI mosaic {day}", integer_source=True)
        write_layer(dest, "ndvi", values, grid, {"source": "MOD13Q1/MYD13Q1", "composite_start": day.isoformat()})
        record_layer(static_dir(settings), "ndvi", dest, source=f"earthaccess:{names[0].split('.')[0]}.{VERSION}",
                     method="build", composite_start=day.isoformat(), tiles=names,
                     region_coverage=region_coverage(values, SPECS["ndvi"].nodata, grid, settings),
                     **grid_tags(grid), **notes)
        written.append(dest.name)
    return {"status": "built", "files": written, "message": f"{len(written)} composites"}
