"""Land cover from ESA CCI / C3S land cover (CDS dataset `satellite-land-cover`), via cdsapi.

Request: `{"variable": "all", "year": ["YYYY"], "version": ["v2_0_7cds" (1992-2015) |
"v2_1_1" (2016 on)], "area": [N, W, S, E]}` (the CDS wants underscores in the version). The
reply is a zip holding one NetCDF (`C3S-LC-L4-LCCS-Map-300m-P1Y-YYYY-v2.1.1[.area-subset...].nc`)
with `lccs_class(time, lat, lon)`: LCCS codes as bytes flagged `_Unsigned = "true"`, 0 = no data,
on a regular 1/360 degree (about 300 m) lon/lat grid. Codes are mapped to our 7 classes
(`landcover_codes`) and written at the native resolution, cropped to the region + margin.
Years past LANDCOVER_LAST_YEAR take the latest map (land cover changes slowly); the status says so.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.gridding.geometry import Grid
from tasks.sources.static_layers.clients import Archives, download_dir, retrying
from tasks.sources.static_layers.common import (
    MARGIN_DEG,
    SPECS,
    StaticLayerError,
    grid_tags,
    output_path,
    record_layer,
    region_box,
    region_coverage,
    static_dir,
    write_layer,
)
from tasks.sources.static_layers.landcover_codes import LCCS_TO_CLASS, map_lccs

if TYPE_CHECKING:  # netCDF4 loads only when a land-cover file is read
    import netCDF4

log = logging.getLogger(__name__)

DATASET = "satellite-land-cover"
LANDCOVER_FIRST_YEAR = 1992
LANDCOVER_LAST_YEAR = 2022  # latest year the CDS serves at the time of writing


def cds_version(year: int) -> str:
    return "v2_0_7cds" if year <= 2015 else "v2_1_1"


def landcover_request(year: int, box: tuple[float, float, float, float]) -> dict:
    west, south, east, north = box
    return {"variable": "all", "year": [str(year)], "version": [cds_version(year)],
            "area": [round(north, 4), round(west, 4), round(south, 4), round(east, 4)]}


def netcdf_in(download: Path, folder: Path) -> Path:
    """The NetCDF inside the CDS reply (a zip), or the reply itself when it is a NetCDF."""
    if not zipfile.is_zipfile(download):
        return download
    with zipfile.ZipFile(download) as z:
        members = [m for m in z.namelist() if m.lower().endswith(".nc")]
        if not members:
            raise StaticLayerError(f"{download.name}: the CDS reply holds no NetCDF ({z.namelist()[:5]})")
        member = members[0]
        z.extract(member, folder)
    return folder / member


def _coord(ds: netCDF4.Dataset, *names: str) -> str:
    for name in names:
        if name in ds.variables:
            return name
    raise StaticLayerError(f"{ds.filepath()}: no {names[0]} coordinate")


def _index_range(coord: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    idx = np.nonzero((coord >= lo) & (coord <= hi))[0]
    if idx.size == 0:
        raise StaticLayerError(f"the land cover file does not cover {lo:.3f}..{hi:.3f}")
    return int(idx.min()), int(idx.max()) + 1


def read_lccs(path: Path, box: tuple[float, float, float, float]) -> tuple[np.ndarray, Grid]:
    """LCCS codes (uint8, north-up) over `box` and their grid, from a CCI land cover NetCDF."""
    from tasks.readers.netcdf import HDF5_LOCK

    with HDF5_LOCK:  # HDF5 is not thread-safe: every access in the process takes the readers' lock
        return _read_lccs_locked(path, box)


def _read_lccs_locked(path: Path, box: tuple[float, float, float, float]) -> tuple[np.ndarray, Grid]:
    import netCDF4

    west, south, east, north = box
    try:
        ds = netCDF4.Dataset(path)
    except OSError as exc:
        raise StaticLayerError(f"{path.name}: not a readable NetCDF ({exc})") from None
    with ds:
        if "lccs_class" not in ds.variables:
            raise StaticLayerError(f"{path.name}: no 'lccs_class' variable (has {sorted(ds.variables)[:8]})")
        var = ds.variables["lccs_class"]
        var.set_auto_mask(False)
        lat_name, lon_name = _coord(ds, "lat", "latitude"), _coord(ds, "lon", "longitude")
        lat = np.asarray(ds.variables[lat_name][:], dtype=np.float64)
        lon = np.asarray(ds.variables[lon_name][:], dtype=np.float64)
        if lat.size < 2 or lon.size < 2:
            raise StaticLayerError(f"{path.name}: land cover grid too small ({lat.size}x{lon.size})")
        dy, dx = float(np.median(np.abs(np.diff(lat)))), float(np.median(np.abs(np.diff(lon))))
        r0, r1 = _index_range(lat, south, north)
        c0, c1 = _index_range(lon, west, east)
        lat_dim, lon_dim = ds.variables[lat_name].dimensions[0], ds.variables[lon_name].dimensions[0]
        if lat_dim not in var.dimensions or lon_dim not in var.dimensions:
            raise StaticLayerError(f"{path.name}: lccs_class is not on the {lat_name}/{lon_name} grid")
        index = [slice(r0, r1) if d == lat_dim else slice(c0, c1) if d == lon_dim else 0
                 for d in var.dimensions]  # other dimensions (time): one map per file
        codes = np.asarray(var[tuple(index)])
        if codes.dtype == np.int8 or str(getattr(var, "_Unsigned", "")).lower() == "true":
            codes = codes.astype(np.int16) % 256  # bytes flagged _Unsigned: 190, 210, 220...
        codes = codes.astype(np.uint8)
        if [d for d in var.dimensions if d in (lat_dim, lon_dim)] == [lon_dim, lat_dim]:
            codes = codes.T
        lats = lat[r0:r1]
        if lats[0] < lats[-1]:  # south-up on disk: flip to north-up
            codes = codes[::-1]
        top = float(lats.max()) + dy / 2
        left = float(lon[c0:c1].min()) - dx / 2
    grid = Grid(west=round(left, 9), south=round(top - codes.shape[0] * dy, 9),
                east=round(left + codes.shape[1] * dx, 9), north=round(top, 9), step=dx)
    if abs(dx - dy) > 1e-6 * max(dx, dy):
        raise StaticLayerError(f"{path.name}: land cover pixels are not square ({dx} x {dy} degrees)")
    return codes, grid


def build_landcover(archives: Archives, year: int, force: bool = False) -> dict:
    settings = archives.settings
    dest = output_path(settings, "landcover")
    if dest.is_file() and not force:
        return {"status": "skipped", "files": [dest.name], "message": "already present"}
    if year < LANDCOVER_FIRST_YEAR:
        raise StaticLayerError(f"{DATASET}: no land cover map before {LANDCOVER_FIRST_YEAR} (asked for {year})")
    map_year = min(year, LANDCOVER_LAST_YEAR)
    box = region_box(settings, MARGIN_DEG)
    request = landcover_request(map_year, box)
    client = archives.cds_client()
    with download_dir(settings, "landcover") as tmp:
        target = tmp / f"{DATASET}_{map_year}.zip"
        retrying(lambda: client.retrieve(DATASET, request, str(target)), f"retrieving {DATASET} {map_year}")
        if not target.is_file():
            raise StaticLayerError(f"{DATASET} {map_year}: the CDS request returned no file")
        nc = netcdf_in(target, tmp)
        codes, grid = read_lccs(nc, box)
        nc_name = nc.name
    unknown = np.setdiff1d(np.unique(codes), [0, *LCCS_TO_CLASS])
    if unknown.size:
        log.warning("%s: LCCS codes %s are not in the legend; stored as no data", nc_name, unknown.tolist())
    classes = map_lccs(codes)
    if not (classes > 0).any():
        raise StaticLayerError(f"{nc_name}: no land cover classes over the region")
    write_layer(dest, "landcover", classes, grid, {"source": nc_name, "year": map_year})
    coverage = region_coverage(classes, SPECS["landcover"].nodata, grid, settings)
    record_layer(static_dir(settings), "landcover", dest, source=f"cdsapi:{DATASET}/{nc_name}",
                 method="build", year=map_year, version=cds_version(map_year), region_coverage=coverage,
                 landcover_input="ESA CCI LCCS codes mapped to 7 classes", **grid_tags(grid))
    message = f"ESA CCI land cover {map_year} ({cds_version(map_year)})"
    if map_year != year:
        message += f"; {year} is not served yet, the latest map ({map_year}) is used"
    return {"status": "built", "files": [dest.name], "message": message}
