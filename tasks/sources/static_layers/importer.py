"""`xco2 covariates import LAYER FILE`: a user's raster (any CRS, any resolution) as a static layer.

Land cover may also be an ESA CCI / C3S NetCDF with `lccs_class` (or the CDS's zip of one): it
is read with netCDF4, since GDAL's netCDF driver neither georeferences it nor reads its
`_Unsigned` bytes reliably. Everything else goes through GDAL; a zip holding one GeoTIFF (as
SEDAC and AppEEARS deliver them) is read in place.

The source is warped to EPSG:4326 over the region box plus MARGIN_DEG (cropped to the source's
own extent), at about its native resolution (coarsened only past MAX_PIXELS), with nearest
(land cover; modal class when coarsening) or bilinear (area average when coarsening) resampling,
checked for sane values, converted to the layer's stored format (see `common`) and written
atomically; `<raw>/static/layers.json` records it.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.warp import Resampling

from tasks.settings import Settings
from tasks.gridding.geometry import Grid
from tasks.sources.static_layers.common import (
    MARGIN_DEG,
    SPECS,
    StaticLayerError,
    bounds_wgs84,
    check_layer,
    choose_step,
    describe_region,
    grid_tags,
    intersect,
    native_step_deg,
    output_path,
    record_layer,
    region_box,
    region_coverage,
    sha256_of,
    snapped_grid,
    static_dir,
    to_layer_values,
    warp_into,
    write_layer,
)

log = logging.getLogger(__name__)

# Nodata conventions applied when a source declares none: SRTM/NASADEM voids, MOD13Q1 fill.
_IMPLIED_NODATA = {"elevation": -32768, "ndvi": -3000}


def convert_source(settings: Settings, layer: str, gdal_path: str, where: str,
                   finest_step: float | None = None) -> tuple[np.ndarray, Grid, dict]:
    """Read band 1 of `gdal_path`, warp it onto an EPSG:4326 grid over the region + margin, check
    and convert it. `where` names the file in every error. Returns (values, grid, notes)."""
    try:
        src = rasterio.open(gdal_path)
    except RasterioIOError as exc:
        raise StaticLayerError(f"{where}: not a raster file GDAL can read ({exc})") from None
    with src:
        if src.count == 0:
            subs = list(src.subdatasets or [])
            hint = (f"; it holds {len(subs)} subdatasets, import one of them instead, e.g. '{subs[0]}'"
                    if subs else "")
            raise StaticLayerError(f"{where}: has no raster band{hint}")
        if src.crs is None:
            raise StaticLayerError(
                f"{where}: has no coordinate reference system; georeference it first "
                "(e.g. `gdal_edit.py -a_srs EPSG:4326 FILE` for a longitude/latitude grid)")
        if src.transform == Affine.identity():
            raise StaticLayerError(f"{where}: is not georeferenced (no geotransform)")
        if src.count > 1:
            log.warning("%s: %d bands, band 1 is used", where, src.count)
        try:
            src_box = bounds_wgs84(src)
        except Exception as exc:  # noqa: BLE001 - any PROJ failure
            raise StaticLayerError(f"{where}: its extent cannot be converted to longitude/latitude ({exc})") from None
        if intersect(src_box, region_box(settings)) is None:
            raise StaticLayerError(
                f"{where}: does not overlap {describe_region(settings)}: the file covers "
                f"lon {src_box[0]:.4f}..{src_box[2]:.4f}, lat {src_box[1]:.4f}..{src_box[3]:.4f}")
        box = intersect(src_box, region_box(settings, MARGIN_DEG))
        assert box is not None  # it overlaps the region's box, so the wider one too
        native = native_step_deg(src)
        step = choose_step(native, box, finest=finest_step)
        grid = snapped_grid(box, step)
        coarser = step > 1.5 * native
        if layer == "landcover":
            resampling = Resampling.mode if coarser else Resampling.nearest
        else:
            resampling = Resampling.average if coarser else Resampling.bilinear
        dtype = np.dtype(src.dtypes[0])
        integer_source = dtype.kind in "iu"
        src_nodata = src.nodata
        if src_nodata is None and integer_source and layer in _IMPLIED_NODATA:
            implied = _IMPLIED_NODATA[layer]
            if np.iinfo(dtype).min <= implied <= np.iinfo(dtype).max:
                src_nodata = implied
        try:
            data = warp_into(src, 1, grid, resampling, src_nodata=src_nodata)
        except Exception as exc:  # noqa: BLE001 - a corrupt file fails while reading
            raise StaticLayerError(f"{where}: cannot be read or reprojected ({exc})") from None
        scale, offset = (src.scales or (1.0,))[0], (src.offsets or (0.0,))[0]
    if layer != "landcover" and ((scale not in (None, 1.0)) or (offset not in (None, 0.0))):
        data = data * np.float32(scale if scale is not None else 1.0) + np.float32(offset or 0.0)
        integer_source = False  # scaled to physical values
    values, notes = to_layer_values(layer, data, where, integer_source=integer_source,
                                    source_dtype=dtype)
    notes = {"native_step_deg": round(native, 9), "resampling": resampling.name, **notes}
    return values, grid, notes


def convert_cci_netcdf(settings: Settings, source_file: Path) -> tuple[np.ndarray, Grid, dict]:
    """An ESA CCI / C3S land cover NetCDF (or the CDS's zip of one), as downloaded by hand."""
    from tasks.sources.static_layers.landcover import netcdf_in, read_lccs

    folder = static_dir(settings)  # never write beside the user's file (it may be read-only)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", suffix=".tmp", dir=folder) as tmp:
        try:
            nc = netcdf_in(source_file, Path(tmp))
        except zipfile.BadZipFile as exc:
            raise StaticLayerError(f"{source_file}: not a readable zip ({exc})") from None
        except StaticLayerError as exc:
            raise StaticLayerError(f"{source_file}: {exc}") from None
        try:
            codes, grid = read_lccs(nc, region_box(settings, MARGIN_DEG))
        except StaticLayerError as exc:
            text = str(exc)
            if "does not cover" in text:
                text = f"does not overlap {describe_region(settings)}"
            raise StaticLayerError(f"{source_file}: {text}") from None
    if intersect((grid.west, grid.south, grid.east, grid.north), region_box(settings)) is None:
        raise StaticLayerError(f"{source_file}: does not overlap {describe_region(settings)}")
    data = np.where(codes == 0, np.nan, codes.astype(np.float32))
    values, notes = to_layer_values("landcover", data, str(source_file), integer_source=True)
    return values, grid, {"native_step_deg": round(grid.step, 9), "resampling": "none", **notes}


def _resolve_source(layer: str, source_file: Path) -> tuple[str, str]:
    """('cci', file) for a CCI land cover NetCDF or its zip, else ('gdal', path GDAL opens);
    a zip holding one GeoTIFF (as SEDAC and AppEEARS deliver them) is read in place."""
    if source_file.suffix.lower() in (".nc", ".nc4") and layer == "landcover":
        return "cci", str(source_file)
    if not zipfile.is_zipfile(source_file):
        return "gdal", str(source_file)
    try:
        with zipfile.ZipFile(source_file) as z:
            members = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise StaticLayerError(f"{source_file}: not a readable zip ({exc})") from None
    if layer == "landcover" and any(m.lower().endswith(".nc") for m in members):
        return "cci", str(source_file)
    tifs = [m for m in members if m.lower().endswith((".tif", ".tiff"))]
    if len(tifs) != 1:
        found = f"{len(tifs)} GeoTIFFs ({', '.join(tifs[:4])})" if tifs else "no GeoTIFF"
        raise StaticLayerError(f"{source_file}: the zip holds {found}; unzip it and import one GeoTIFF")
    return "gdal", f"/vsizip/{source_file.resolve()}/{tifs[0]}"


def import_layer(settings: Settings, layer: str, source_file: Path | str,
                 composite_start: date | None = None) -> Path:
    """Import `source_file` as static layer `layer`; returns the written `<raw>/static/...tif`."""
    check_layer(layer)
    source_file = Path(source_file)
    if layer == "ndvi" and composite_start is None:
        raise StaticLayerError(f"{source_file}: an NDVI composite needs its start date "
                               "(--start YYYY-MM-DD, the composite's first day)")
    if layer != "ndvi" and composite_start is not None:
        raise StaticLayerError(f"{source_file}: only ndvi takes a composite start date, not {layer}")
    if not source_file.exists():
        raise StaticLayerError(f"{source_file}: no such file")
    if not source_file.is_file():
        raise StaticLayerError(f"{source_file}: not a file")
    dest = output_path(settings, layer, composite_start)
    kind, path = _resolve_source(layer, source_file)
    if kind == "cci":
        values, grid, notes = convert_cci_netcdf(settings, source_file)  # lccs_class, read directly
    else:
        values, grid, notes = convert_source(settings, layer, path, str(source_file))
    spec = SPECS[layer]
    tags = {"source": source_file.name}
    if composite_start is not None:
        tags["composite_start"] = composite_start.isoformat()
    write_layer(dest, layer, values, grid, tags)
    coverage = region_coverage(values, spec.nodata, grid, settings)
    if coverage < 0.99:
        log.warning("%s covers %.0f%% of %s", source_file, 100 * coverage, describe_region(settings))
    extra = {"method": "import", "source_sha256": sha256_of(source_file), "region_coverage": coverage,
             **grid_tags(grid), **notes}
    if composite_start is not None:
        extra["composite_start"] = composite_start.isoformat()
    record_layer(static_dir(settings), layer, dest, source=str(source_file.resolve()), **extra)
    log.info("imported %s as %s (%dx%d, step %.6f deg)", source_file, dest, grid.nx, grid.ny, grid.step)
    return dest
