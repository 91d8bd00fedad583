"""Population density from SEDAC GPW v4 (Gridded Population of the World, revision 11), via earthaccess.

Collection: `CIESIN_SEDAC_GPWv4_POPDENS_R11` version `4.11` ("GPWv4: Population Density,
Revision 11", doi:10.7927/H49C6VHW; Earthdata catalog entry sedac-ciesin-sedac-gpwv4-popdens-r11-4.11).
Its granules are global files for the years 2000, 2005, 2010, 2015 and 2020 at several
resolutions and formats; the 30 arc-second GeoTIFF one is used, e.g.
`gpw-v4-population-density-rev11_2020_30_sec_tif.zip` holding
`gpw_v4_population_density_rev11_2020_30_sec.tif` (people per km2). The year nearest the one
asked for is taken. The short name and version are parameters (GPW_SHORT_NAME, GPW_VERSION) in
case the archive renames the collection; if nothing matches, the error says how to import a
downloaded file instead. The file is cropped to the region + margin at its native resolution.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

from tasks.sources.static_layers.clients import Archives, download, download_dir, link_names, search
from tasks.sources.static_layers.common import (
    SPECS,
    StaticLayerError,
    grid_tags,
    output_path,
    record_layer,
    region_coverage,
    static_dir,
    write_layer,
)
from tasks.sources.static_layers.importer import convert_source

log = logging.getLogger(__name__)

GPW_SHORT_NAME = "CIESIN_SEDAC_GPWv4_POPDENS_R11"
GPW_VERSION = "4.11"
GPW_YEARS = (2000, 2005, 2010, 2015, 2020)


def gpw_year(year: int) -> int:
    return min(GPW_YEARS, key=lambda y: (abs(y - year), -y))


def _is_30sec_tif(name: str, year: int) -> bool:
    n = name.lower()
    return (re.search(rf"[_-]{year}_30_sec", n) is not None
            and (n.endswith(".tif") or n.endswith("_tif.zip") or n.endswith(".tif.zip")))


def pick_granule(granules: list, year: int) -> tuple[object, str] | None:
    for g in granules:
        for name in link_names(g):
            if _is_30sec_tif(name, year):
                return g, name
    return None


def _tif_in(path: Path, year: int) -> str:
    if path.suffix.lower() in (".tif", ".tiff"):
        return str(path)
    try:
        with zipfile.ZipFile(path) as z:
            tifs = [m for m in z.namelist() if m.lower().endswith((".tif", ".tiff"))]
    except (zipfile.BadZipFile, OSError) as exc:
        raise StaticLayerError(f"{path.name}: not a readable GPW zip ({exc})") from None
    if not tifs:
        raise StaticLayerError(f"{path.name}: holds no GeoTIFF")
    tifs.sort(key=lambda m: (f"{year}_30_sec" not in m.lower(), len(m)))
    return f"/vsizip/{path}/{tifs[0]}"


def build_population(archives: Archives, year: int, force: bool = False,
                     short_name: str = GPW_SHORT_NAME, version: str = GPW_VERSION) -> dict:
    settings = archives.settings
    dest = output_path(settings, "population")
    if dest.is_file() and not force:
        return {"status": "skipped", "files": [dest.name], "message": "already present"}
    ea = archives.earthaccess()
    target_year = gpw_year(year)
    granules = search(ea, f"{short_name} {version}", short_name=short_name, version=version)
    picked = pick_granule(granules, target_year)
    if picked is None:
        seen = sorted({n for g in granules for n in link_names(g)})[:5]
        raise StaticLayerError(
            f"{short_name} {version}: no 30 arc-second GeoTIFF granule for {target_year} among "
            f"{len(granules)} granules (e.g. {seen}); download a GPW v4 population density GeoTIFF from "
            "SEDAC and run `xco2 covariates import population FILE.tif`")
    granule, name = picked
    with download_dir(settings, "population") as tmp:
        files = download(ea, [granule], tmp, name)
        tif = _tif_in(files[0], target_year)
        values, grid, notes = convert_source(settings, "population", tif, name)
        write_layer(dest, "population", values, grid, {"source": name, "year": target_year})
    coverage = region_coverage(values, SPECS["population"].nodata, grid, settings)
    record_layer(static_dir(settings), "population", dest, source=f"earthaccess:{short_name}.{version}/{name}",
                 method="build", year=target_year, region_coverage=coverage, **grid_tags(grid), **notes)
    return {"status": "built", "files": [dest.name], "message": f"GPW v4.11 {target_year} ({name})"}
