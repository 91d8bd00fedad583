"""STAC metadata for the archive: one Item per day, one Collection per region, offline validation.

The catalog is SELF_CONTAINED: no self links, every href relative, so the region folder can be
copied, zipped or served from anywhere and STAC tools still walk it. Items live next to their
COGs (see layout), the asset href is the COG's file name.

The collection is rebuilt from the item files on disk at every upsert (under a lock), rather
than patched: re-upserting a day can never duplicate it, a crash between writing an item and
the collection heals on the next upsert, and the temporal extent is always first..last day.
Validation lives in stac_validation (re-exported here as validate_stac).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from contextlib import contextmanager
from datetime import date, datetime, time, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pystac
import rasterio
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Statistics

from tasks.archive.cog import BAND_MEANINGS, CRS_EPSG, FORMAT_VERSION_TAG, ArchiveWriteError
from tasks.archive.layout import (
    COLLECTION_FILE,
    collection_path,
    day_item_path,
    day_stem,
    itemised_days,
    region_dir,
)
from tasks.io.atomic import publish_json_text
from tasks.archive.stac_validation import validate_stac  # noqa: F401  (re-export)
from tasks.gridding.geometry import Grid
from tasks.settings import Region

PROPERTY_PREFIX = "xco2:"
ASSET_KEY = "xco2"
# The owners of the product decide its terms; "other" is STAC's word for "see the provider".
COLLECTION_LICENSE = "other"
PROVIDERS = [
    pystac.Provider(
        name="NASA GES DISC (OCO-2 and OCO-3 Level 2 Lite XCO2)",
        roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
        url="https://disc.gsfc.nasa.gov/",
    ),
    pystac.Provider(
        name="NIES / JAXA (GOSAT TANSO-FTS XCO2)",
        roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
        url="https://data2.gosat.nies.go.jp/",
    ),
    pystac.Provider(
        name="xco2 (ResNet-LSTM gap filling, this archive)",
        roles=[pystac.ProviderRole.PROCESSOR, pystac.ProviderRole.HOST],
    ),
]
# Mean length of one degree of latitude on WGS84, for the raster extension's metres.
_METRES_PER_DEGREE = 111_320.0


def collection_id(region_name: str) -> str:
    return f"xco2-{region_name}"


def _region_name(region: Region | str) -> str:
    return region if isinstance(region, str) else region.name


def _grid_bbox(grid: Grid) -> list[float]:
    return [grid.west, grid.south, grid.east, grid.north]


def _bbox_polygon(bbox: list[float]) -> dict[str, Any]:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=timezone.utc)


def _day_end(day: date) -> datetime:
    # STAC end_datetime is inclusive: the last second of the UTC day.
    return datetime.combine(day, time(23, 59, 59), tzinfo=timezone.utc)


def _day_noon(day: date) -> datetime:
    return datetime.combine(day, time(12, 0), tzinfo=timezone.utc)


def _spatial_resolution_m(grid: Grid) -> float:
    # The raster extension asks for metres; a 0.01 degree cell is ~1.1 km north-south and
    # narrower east-west, so report the side of a square of the same area at mid-latitude.
    mid_lat = math.radians((grid.south + grid.north) / 2)
    north_south = grid.step * _METRES_PER_DEGREE
    east_west = north_south * math.cos(mid_lat)
    return round(math.sqrt(north_south * east_west), 1)


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"property value {value} is not representable in JSON")
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    raise TypeError(f"property value {value!r} ({type(value).__name__}) is not JSON")


# COG tags copied onto the day's item as properties (with the xco2: prefix), in this order.
ITEM_PROPERTY_TAGS = ("model_name", "model_version", "feature_set_version", "source_mode", "synthetic",
                      "network_pass", "network_precision")


def _number(value: str | None) -> float | None:
    try:
        number = round(float(value), 4) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number == number else None  # NaN: no own-day observations


def _inputs_list(text: str) -> list[dict[str, str]]:
    try:
        days = json.loads(text)
        return [{"day": d, "samples": str(v["samples"]), "meteorology": str(v["meteorology"])} for d, v in days.items()]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


def item_properties_of(cog: Path) -> dict[str, Any]:
    """The item properties of a published COG, from the tags as written: what the file says
    (its format version among them, which the writer adds), not what its writer meant to say."""
    with rasterio.open(cog) as src:
        return item_properties(src.tags())


def item_properties(tags: Mapping[str, str]) -> dict[str, Any]:
    """The item properties of a day from its COG's tags: the map run and the repair of a lost
    item (health.py) both derive them here, so a restored item equals the one first written."""
    properties: dict[str, Any] = {k: tags[k] for k in ITEM_PROPERTY_TAGS if k in tags}
    # The COG's layout (tasks/archive/cog.py, docs/data.md): "1" for days written before the tag.
    properties["format_version"] = tags.get(FORMAT_VERSION_TAG, "1")
    if "own_day_superobs" in tags:  # the daily anomaly's support and the map's check on its own day
        properties.update(daily_anomaly_superobs=int(tags.get("daily_anomaly_superobs", 0)),
                          own_day_superobs=int(tags["own_day_superobs"]),
                          own_day_rmse_ppm=_number(tags.get("own_day_rmse_ppm")),
                          own_day_bias_ppm=_number(tags.get("own_day_bias_ppm")))
    if "inputs_digest" in tags:  # what the day was made from (tasks/archive/provenance.py)
        properties.update(gosat_fit_id=tags.get("gosat_fit_id", ""), inputs_window=tags.get("inputs_window", ""),
                          inputs_digest=tags["inputs_digest"], inputs=_inputs_list(tags.get("inputs", "{}")))
    if "anchor_cells" in tags:  # the day was anchored (or tried to be): its offset and support
        properties.update(anchor_offset_ppm=round(float(tags["anchor_offset_ppm"]), 4),
                          anchor_cells=int(tags["anchor_cells"]), anchor_days=int(tags["anchor_days"]))
    return properties


def _prefixed(properties: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in properties.items():
        name = key if key.startswith(PROPERTY_PREFIX) else PROPERTY_PREFIX + key
        out[name] = _json_value(value)
    return out


def _band_statistics(tags: Mapping[str, str]) -> Statistics | None:
    # GDAL stored these in the COG when it was written; reading them costs nothing.
    fields = {"minimum": "STATISTICS_MINIMUM", "maximum": "STATISTICS_MAXIMUM",
              "mean": "STATISTICS_MEAN", "stddev": "STATISTICS_STDDEV",
              "valid_percent": "STATISTICS_VALID_PERCENT"}
    values = {name: float(tags[tag]) for name, tag in fields.items() if tag in tags}
    values = {name: v for name, v in values.items() if math.isfinite(v)}
    return Statistics.create(**values) if values else None


def _raster_bands(cog_path: Path, grid: Grid) -> tuple[list[RasterBand], list[str]]:
    """The COG's bands as the raster extension describes them (each with its name and what it
    means, so that a reader picks the interval it needs by name), and their names."""
    bands, names = [], []
    with rasterio.open(cog_path) as src:
        for index in src.indexes:
            nodata = src.nodatavals[index - 1]
            if nodata is not None and math.isnan(nodata):
                nodata = "nan"  # JSON has no NaN; the raster extension spells it out
            band = RasterBand.create(
                nodata=nodata,
                data_type=DataType(src.dtypes[index - 1]),
                unit=src.units[index - 1] or src.tags(index).get("units"),
                spatial_resolution=_spatial_resolution_m(grid),
                statistics=_band_statistics(src.tags(index)),
            )
            name = src.descriptions[index - 1] or f"band {index}"
            band.properties["name"] = name
            description = src.tags(index).get("description") or BAND_MEANINGS.get(name, ("", ""))[1]
            if description:
                band.properties["description"] = f"band {index}: {description}"
            bands.append(band)
            names.append(name)
    return bands, names


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def build_day_item(
    archive_root: Path | str,
    region_name: str,
    grid: Grid,
    day: date,
    cog_path: Path | str,
    properties: Mapping[str, Any],
) -> pystac.Item:
    """The STAC Item for one archived day (not written)."""
    cog_path = Path(cog_path)
    item_path = day_item_path(archive_root, region_name, day)
    to_collection = _relative(collection_path(archive_root, region_name), item_path.parent)
    bbox = _grid_bbox(grid)

    item = pystac.Item(
        id=day_stem(region_name, day),
        geometry=_bbox_polygon(bbox),
        bbox=bbox,
        datetime=_day_noon(day),
        start_datetime=_day_start(day),
        end_datetime=_day_end(day),
        properties=_prefixed(properties),
    )
    item.collection_id = collection_id(region_name)
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=f"EPSG:{CRS_EPSG}", shape=list(grid.shape), transform=list(grid.transform)[:6]
    )

    raster_bands, band_names = _raster_bands(cog_path, grid)
    asset = pystac.Asset(
        href=_relative(cog_path, item_path.parent),
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title="XCO2 (ppm)",
        description="Column-averaged dry-air CO2 mole fraction; bands: "
        + ", ".join(f"{i} {name}" for i, name in enumerate(band_names, start=1))
        + " (raster:bands say what each is: band 2 is for a new retrieval, band 3 for the true column; "
        "find them by name). NaN marks cells without an estimate.",
    )
    item.add_asset(ASSET_KEY, asset)
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=raster_bands)

    # Links are plain relative strings so pystac never makes them absolute.
    for rel in (pystac.RelType.ROOT, pystac.RelType.PARENT, pystac.RelType.COLLECTION):
        item.add_link(pystac.Link(rel, to_collection, media_type=pystac.MediaType.JSON))
    return item


def _existing_bbox(path: Path) -> list[float] | None:
    try:
        bbox = json.loads(path.read_text())["extent"]["spatial"]["bbox"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return [float(v) for v in bbox] if len(bbox) == 4 else None


def _union(a: list[float], b: list[float] | None) -> list[float]:
    if b is None:
        return a
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def build_collection(archive_root: Path | str, region_name: str, grid: Grid) -> pystac.Collection:
    """The region's Collection, listing every item file present (not written)."""
    path = collection_path(archive_root, region_name)
    days = itemised_days(archive_root, region_name)
    if not days:
        raise ValueError(f"no STAC items under {region_dir(archive_root, region_name)}")
    # Grow, never shrink, the spatial extent: items written for an earlier grid stay covered.
    bbox = _union(_grid_bbox(grid), _existing_bbox(path))
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[_day_start(days[0]), _day_end(days[-1])]]),
    )
    collection = pystac.Collection(
        id=collection_id(region_name),
        title=f"Daily gap-free XCO2, {region_name}, 0.01 degree",
        description=(
            f"Daily column-averaged dry-air CO2 mole fraction (XCO2, ppm) over {region_name} on a "
            f"{grid.step:g} degree grid (EPSG:4326), gap-filled by a ResNet-LSTM from OCO-2, "
            "OCO-3 and GOSAT retrievals. One Cloud Optimized GeoTIFF per UTC day; band 1 is "
            "XCO2; band 2 (xco2_uncertainty, when present) the 68% half-width for a new retrieval at "
            "the cell; band 3 (xco2_true_column_uncertainty, format 2, when present) the 68% half-width "
            "of the true column; the item's xco2:format_version says the layout. NaN marks cells "
            "without an estimate. "
            "Items with xco2:synthetic true are demonstration output, not measurements."
        ),
        extent=extent,
        license=COLLECTION_LICENSE,
        keywords=["XCO2", "CO2", "carbon dioxide", "OCO-2", "OCO-3", "GOSAT", region_name],
        providers=PROVIDERS,
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    collection.clear_links()  # drop pystac's object links; ours are relative strings
    collection.add_link(pystac.Link(pystac.RelType.ROOT, f"./{COLLECTION_FILE}",
                                    media_type=pystac.MediaType.JSON, title=collection.title))
    for day in days:
        href = _relative(day_item_path(archive_root, region_name, day), path.parent)
        collection.add_link(pystac.Link(pystac.RelType.ITEM, f"./{href}",
                                        media_type=pystac.MediaType.GEOJSON, title=day.isoformat()))
    return collection


def _stac_json(stac_object: pystac.STACObject) -> str:
    # allow_nan=False: a stray NaN would make the file unreadable to strict JSON parsers.
    as_dict = stac_object.to_dict(include_self_link=False, transform_hrefs=False)
    return json.dumps(as_dict, indent=2, allow_nan=False) + "\n"


@contextmanager
def _region_lock(archive_root: Path | str, region_name: str) -> Iterator[None]:
    # Days of one region may be archived by parallel tasks; the collection is read-modify-write.
    folder = region_dir(archive_root, region_name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".stac.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upsert_day_item(
    archive_root: Path | str,
    region: Region | str,
    grid: Grid,
    day: date,
    cog_path: Path | str,
    properties: Mapping[str, Any],
) -> Path:
    """Write (or replace) the day's STAC Item and refresh the region's Collection; returns the item path.

    `properties` (model name/version, feature_set_version, source mode, synthetic...) are stored
    on the item with an `xco2:` prefix.
    """
    region_name = _region_name(region)
    cog_path = Path(cog_path)
    if not cog_path.is_file():
        raise FileNotFoundError(f"{cog_path}: the day's COG must be archived before its STAC item")
    item = build_day_item(archive_root, region_name, grid, day, cog_path, properties)
    item_path = day_item_path(archive_root, region_name, day)
    with _region_lock(archive_root, region_name):
        publish_json_text(item_path, _stac_json(item), error=ArchiveWriteError)
        _publish_collection(archive_root, region_name, grid)
    return item_path


def refresh_collection(archive_root: Path | str, region: Region | str, grid: Grid) -> Path | None:
    """Rebuild the region's collection from the item files on disk (None when there is none)."""
    region_name = _region_name(region)
    with _region_lock(archive_root, region_name):
        if not itemised_days(archive_root, region_name):
            return None
        return _publish_collection(archive_root, region_name, grid)


def _publish_collection(archive_root: Path | str, region_name: str, grid: Grid) -> Path:
    """Rebuild the collection from the item files on disk and publish it (under the region lock)."""
    path = collection_path(archive_root, region_name)
    collection = build_collection(archive_root, region_name, grid)
    return publish_json_text(path, _stac_json(collection), error=ArchiveWriteError)
