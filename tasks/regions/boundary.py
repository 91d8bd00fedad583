"""A region's boundary polygon and the cells of its grid inside it.

A region is a box (tasks.settings.Region); a boundary, when it has one, narrows it to the cells
whose centre lies inside a polygon: those are mapped, and reports average over them. Boundaries
are read from GeoJSON (RFC 7946: WGS84 longitude/latitude) or an ESRI shapefile (.shp, with a
geographic WGS84 .prj or none); every polygon in the file counts (their union). Nothing is cached:
the file is read again each time, so an edited boundary takes effect on the next run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rasterio.features import geometry_mask
from shapely.geometry import Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from tasks.gridding.geometry import Grid
from tasks.regions.shapefile import POLYGON_TYPES, ShapefileError, read_parts

BOUNDARIES_DIR = Path(__file__).resolve().parent / "boundaries"
# Regions whose boundary ships with the project (see boundaries/PROVENANCE.md), by region name.
SHIPPED_BOUNDARIES = {"sichuan": BOUNDARIES_DIR / "sichuan.geojson"}
GEOJSON_SUFFIXES = (".geojson", ".json")
SHAPEFILE_SUFFIXES = (".shp",)


class Bounded(Protocol):
    """What region_mask reads of a tasks.settings.Region (settings sit above this room)."""

    @property
    def boundary(self) -> str | None: ...


class BoundaryError(ValueError):
    """A boundary file cannot be used; the message names the file and why."""


def shipped_boundary(region_name: str) -> Path | None:
    return SHIPPED_BOUNDARIES.get(region_name)


def _geojson_geometries(doc: Any, path: Path) -> list[BaseGeometry]:
    if not isinstance(doc, dict) or "type" not in doc:
        raise BoundaryError(f"{path}: not a GeoJSON object (no 'type')")
    kind = doc["type"]
    if kind == "FeatureCollection":
        return [g for f in doc.get("features") or [] for g in _geojson_geometries(f, path)]
    if kind == "Feature":
        return _geojson_geometries(doc["geometry"], path) if doc.get("geometry") else []
    if kind == "GeometryCollection":
        return [g for part in doc.get("geometries") or [] for g in _geojson_geometries(part, path)]
    try:
        return [shape(doc)]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise BoundaryError(f"{path}: bad GeoJSON {kind} geometry: {exc}") from None


def _read_geojson(path: Path) -> list[BaseGeometry]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoundaryError(f"{path}: cannot read the boundary file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoundaryError(f"{path}: not GeoJSON: {exc}") from None
    return _geojson_geometries(doc, path)


def _read_shapefile(path: Path) -> list[BaseGeometry]:
    prj = path.with_suffix(".prj")
    if prj.is_file():
        wkt = prj.read_text(errors="replace").upper()
        if "PROJCS" in wkt or "WGS" not in wkt:
            raise BoundaryError(f"{path}: its {prj.name} is not geographic WGS84 longitude/latitude; "
                                "reproject the boundary to EPSG:4326 first")
    try:
        shape_type, records = read_parts(path)
    except ShapefileError as exc:
        raise BoundaryError(str(exc)) from None
    if shape_type not in POLYGON_TYPES:
        raise BoundaryError(f"{path}: holds lines (shape type {shape_type}), not polygons")
    # The format's rule: a record's shells run clockwise, its holes counter-clockwise.
    geometries: list[BaseGeometry] = []
    for record in records:
        shells: list[BaseGeometry] = []
        holes: list[BaseGeometry] = []
        for ring in record:
            if len(ring) < 4:
                continue
            poly = Polygon(ring)
            (holes if poly.exterior.is_ccw else shells).append(poly.buffer(0))
        outline = unary_union(shells) if shells else None
        if outline is not None:
            geometries.append(outline.difference(unary_union(holes)) if holes else outline)
    return geometries


def read_boundary(path: Path | str) -> BaseGeometry:
    """The union of the polygons in a GeoJSON or shapefile, lon/lat degrees; a BoundaryError
    names the file when it is missing, unreadable, of another format or holds no polygon."""
    path = Path(path)
    if not path.exists():
        raise BoundaryError(f"{path}: boundary file does not exist")
    if path.is_dir():
        raise BoundaryError(f"{path}: is a directory, not a boundary file")
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        geometries = _read_geojson(path)
    elif suffix in SHAPEFILE_SUFFIXES:
        geometries = _read_shapefile(path)
    else:
        raise BoundaryError(f"{path}: unknown boundary format {suffix!r}; use GeoJSON (.geojson, .json) "
                            "or an ESRI shapefile (.shp)")
    polygons = [g for g in geometries if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not polygons:
        raise BoundaryError(f"{path}: holds no polygon (a boundary must be a Polygon or MultiPolygon)")
    outline = unary_union([p if p.is_valid else p.buffer(0) for p in polygons])
    if outline.is_empty or outline.area == 0:
        raise BoundaryError(f"{path}: its polygons enclose no area")
    return outline


def check_boundary(path: Path | str, west: float, south: float, east: float, north: float) -> BaseGeometry:
    """read_boundary, and the polygon must overlap the region's box."""
    outline = read_boundary(path)
    if not outline.intersects(box(west, south, east, north)) or outline.intersection(
            box(west, south, east, north)).area == 0:
        lo_x, lo_y, hi_x, hi_y = outline.bounds
        raise BoundaryError(f"{path}: the boundary ({lo_x:.2f}-{hi_x:.2f} E, {lo_y:.2f}-{hi_y:.2f} N) does not "
                            f"overlap the region's box ({west}-{east} E, {south}-{north} N)")
    return outline


def boundary_mask(outline: BaseGeometry, grid: Grid) -> np.ndarray:
    """Boolean [ny, nx]: True where the cell's centre lies inside the polygon (GDAL's rasterising
    rule without all_touched)."""
    return geometry_mask([outline], out_shape=grid.shape, transform=grid.transform, invert=True, all_touched=False)


def region_mask(region: Bounded, grid: Grid) -> np.ndarray:
    """The cells of `grid` that belong to `region` (a tasks.settings.Region): inside its boundary,
    or every cell when it has none."""
    if region.boundary is None:
        return np.ones(grid.shape, dtype=bool)
    return boundary_mask(read_boundary(region.boundary), grid)
