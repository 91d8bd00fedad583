"""Elevation from NASADEM_HGT v001 (LP DAAC, via earthaccess): the SRTM DEM of Table 2, reprocessed.

Granules are 1x1 degree zips (`NASADEM_HGT_n30e100.zip`) holding one SRTM-format tile
(`n30e100.hgt`: big-endian int16 metres, 3601x3601 samples at 1 arc-second, void -32768). GDAL's
SRTMHGT driver reads a tile inside its zip directly (`/vsizip/<zip>/n30e100.hgt`), georeferenced
from the name. Tiles are mosaicked onto a 0.0025 degree (9 arc-second, about 280 m) EPSG:4326
grid by area averaging: the covariates are averaged onto the 0.01 degree grid anyway, and a 1
arc-second mosaic of a province would be billions of pixels. Ocean has no tiles (no data there).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from rasterio.warp import Resampling

from tasks.sources.static_layers.clients import Archives, download, download_dir, search
from tasks.sources.static_layers.common import (
    MARGIN_DEG,
    SPECS,
    StaticLayerError,
    describe_region,
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

SHORT_NAME = "NASADEM_HGT"
VERSION = "001"
STEP_DEG = 1 / 400  # 0.0025 degree = 9 arc-seconds


def hgt_paths(files: list[Path]) -> list[str]:
    """GDAL paths of the .hgt tiles in the downloaded zips (or bare .hgt files)."""
    out: list[str] = []
    for f in files:
        if f.suffix.lower() == ".hgt":
            out.append(str(f))
            continue
        try:
            with zipfile.ZipFile(f) as z:
                members = [m for m in z.namelist() if m.lower().endswith(".hgt")]
        except (zipfile.BadZipFile, OSError) as exc:
            raise StaticLayerError(f"{f.name}: not a readable NASADEM zip ({exc})") from None
        if not members:
            raise StaticLayerError(f"{f.name}: holds no .hgt tile")
        out += [f"/vsizip/{f}/{m}" for m in members]
    return out


def build_elevation(archives: Archives, force: bool = False) -> dict:
    settings = archives.settings
    dest = output_path(settings, "elevation")
    if dest.is_file() and not force:
        return {"status": "skipped", "files": [dest.name], "message": "already present"}
    ea = archives.earthaccess()
    box = region_box(settings, MARGIN_DEG)
    granules = search(ea, f"{SHORT_NAME} {VERSION}", short_name=SHORT_NAME, version=VERSION, bounding_box=box)
    if not granules:
        raise StaticLayerError(f"{SHORT_NAME} {VERSION}: no tiles found over {describe_region(settings)}")
    grid = snapped_grid(box, STEP_DEG)
    with download_dir(settings, "elevation") as tmp:
        files = download(ea, granules, tmp, f"{len(granules)} {SHORT_NAME} tiles")
        tiles = hgt_paths(files)
        data, used = mosaic(tiles, grid, Resampling.average)
        names = sorted(Path(t).name for t in tiles)
    values, notes = to_layer_values("elevation", data, f"{SHORT_NAME} mosaic", integer_source=True)
    write_layer(dest, "elevation", values, grid, {"source": f"{SHORT_NAME}.{VERSION}", "tiles": len(names)})
    coverage = region_coverage(values, SPECS["elevation"].nodata, grid, settings)
    record_layer(static_dir(settings), "elevation", dest, source=f"earthaccess:{SHORT_NAME}.{VERSION}",
                 method="build", tiles=names, region_coverage=coverage, resampling="average",
                 **grid_tags(grid), **notes)
    log.info("elevation: %d NASADEM tiles -> %s", used, dest)
    return {"status": "built", "files": [dest.name],
            "message": f"{used} {SHORT_NAME} tiles mosaicked at {STEP_DEG:g} degree"}
