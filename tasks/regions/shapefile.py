"""A minimal reader of ESRI shapefile geometry (.shp): polylines and polygons, 2-D.

No shapefile library is a dependency of the project, and a boundary needs only the rings of its
polygons; the format (ESRI Shapefile Technical Description, 1998) is simple enough to read here.
Z and M variants are read for their x, y only.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FILE_CODE = 9994
NULL = 0
POLYLINE_TYPES = (3, 13, 23)
POLYGON_TYPES = (5, 15, 25)


class ShapefileError(ValueError):
    """The .shp file is not a readable shapefile of the expected kind; the message names it."""


def read_parts(path: Path | str) -> tuple[int, list[list[np.ndarray]]]:
    """(shape type, records), each record a list of its parts as [n, 2] float64 (lon, lat)
    arrays. Null records are skipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ShapefileError(f"{path}: cannot read the shapefile ({exc.strerror or exc})") from None
    if len(data) < 100 or struct.unpack(">i", data[:4])[0] != FILE_CODE:
        raise ShapefileError(f"{path}: not an ESRI shapefile (.shp): bad header")
    shape_type = struct.unpack("<i", data[32:36])[0]
    if shape_type not in POLYLINE_TYPES + POLYGON_TYPES:
        raise ShapefileError(f"{path}: shape type {shape_type} holds neither lines nor polygons")
    records: list[list[np.ndarray]] = []
    offset = 100
    try:
        while offset + 8 <= len(data):
            _number, words = struct.unpack(">2i", data[offset:offset + 8])
            body = data[offset + 8:offset + 8 + 2 * words]
            offset += 8 + 2 * words
            if len(body) < 4 or struct.unpack("<i", body[:4])[0] == NULL:
                continue
            n_parts, n_points = struct.unpack("<2i", body[36:44])
            starts = list(struct.unpack(f"<{n_parts}i", body[44:44 + 4 * n_parts])) + [n_points]
            xy_at = 44 + 4 * n_parts
            points = np.frombuffer(body[xy_at:xy_at + 16 * n_points], "<f8").reshape(n_points, 2)
            records.append([points[a:b].copy() for a, b in zip(starts[:-1], starts[1:])])
    except (struct.error, ValueError) as exc:
        raise ShapefileError(f"{path}: damaged shapefile record near byte {offset}: {exc}") from None
    return shape_type, records
