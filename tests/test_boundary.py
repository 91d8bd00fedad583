"""Region boundaries: the shipped Sichuan polygon, reading GeoJSON and shapefiles, the cell mask,
the settings' errors, predicting only the cells inside, and the COG's nodata outside."""

from __future__ import annotations

import json
import struct
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Geod
from shapely.geometry import Point

from tasks.archive import write_day_cog
from tasks.covariates.features import METEO_NAMES, NDVI_NAMES, STATIC_NAMES, DayLayers
from tasks.gridding.geometry import Grid
from tasks.mapping.inference import predict_day
from tasks.regions.boundary import (SHIPPED_BOUNDARIES, BoundaryError, boundary_mask, read_boundary,
                                    region_mask)
from tasks.settings import ConfigError, Region, load_settings

SQUARE = [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7], [0.3, 0.3]]  # no cell centre on its edges
UNIT_BOX = {"name": "unit", "west": 0.0, "south": 0.0, "east": 1.0, "north": 1.0}


def _geojson(path: Path, rings: list, kind: str = "Polygon") -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": kind, "coordinates": rings}}]}))
    return path


def _shapefile(path: Path, rings: list[list[list[float]]], shape_type: int = 5) -> Path:
    """One record of `rings` (shells clockwise, holes counter-clockwise, as the format says)."""
    points = [p for ring in rings for p in ring]
    starts = np.cumsum([0] + [len(r) for r in rings[:-1]]).tolist()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    bbox = struct.pack("<4d", min(xs), min(ys), max(xs), max(ys))
    body = (struct.pack("<i", shape_type) + bbox + struct.pack("<2i", len(rings), len(points))
            + struct.pack(f"<{len(rings)}i", *starts) + b"".join(struct.pack("<2d", *p) for p in points))
    record = struct.pack(">2i", 1, len(body) // 2) + body
    header = (struct.pack(">i", 9994) + b"\0" * 20 + struct.pack(">i", (100 + len(record)) // 2)
              + struct.pack("<2i", 1000, shape_type) + bbox + b"\0" * 32)
    path.write_bytes(header + record)
    return path


def test_the_shipped_sichuan_boundary_is_the_province():
    outline = read_boundary(SHIPPED_BOUNDARIES["sichuan"])
    area_km2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(outline)[0]) / 1e6
    assert 480_000 < area_km2 < 490_000  # Sichuan: about 486,000 km2
    assert outline.contains(Point(104.07, 30.67))  # Chengdu
    assert not outline.contains(Point(106.55, 29.56))  # Chongqing, a municipality of its own
    assert not outline.contains(Point(91.1, 29.65))  # Lhasa


def test_default_region_carries_the_shipped_boundary_and_others_none():
    assert Path(Region().boundary) == SHIPPED_BOUNDARIES["sichuan"]
    assert Region(name="chengdu", west=103.8, south=30.4, east=104.3, north=30.9).boundary is None
    # "none" is how TOML (no null) and a dumped region (str(None)) say "the whole box"
    assert Region(boundary="none").boundary is None and Region(boundary="None").boundary is None


def test_mask_is_the_cells_whose_centre_lies_inside(tmp_path):
    grid = Grid(west=0.0, south=0.0, east=1.0, north=1.0, step=0.1)
    mask = boundary_mask(read_boundary(_geojson(tmp_path / "square.geojson", [SQUARE])), grid)
    # centres 0.35, 0.45, 0.55, 0.65 in both directions
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:7, 3:7] = True
    np.testing.assert_array_equal(mask, expected)
    assert region_mask(Region(**UNIT_BOX), grid).all()  # no boundary: the whole box


def test_shapefile_polygon_with_a_hole(tmp_path):
    grid = Grid(west=0.0, south=0.0, east=1.0, north=1.0, step=0.1)
    shell = [[0.1, 0.1], [0.1, 0.9], [0.9, 0.9], [0.9, 0.1], [0.1, 0.1]]  # clockwise
    hole = [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6], [0.4, 0.4]]  # counter-clockwise
    shp = _shapefile(tmp_path / "ring.shp", [shell, hole])
    (tmp_path / "ring.prj").write_text('GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984"]]')
    mask = region_mask(Region(**UNIT_BOX, boundary=str(shp)), grid)
    expected = np.zeros((10, 10), dtype=bool)
    expected[1:9, 1:9] = True
    expected[4:6, 4:6] = False  # centres 0.45 and 0.55 fall in the hole
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.geojson", "boundary file does not exist"),
    (lambda d: (d / "bad.geojson").write_text("{not json") and d / "bad.geojson", "not GeoJSON"),
    (lambda d: _geojson(d / "point.geojson", [0.5, 0.5], kind="Point"), "holds no polygon"),
    (lambda d: _geojson(d / "far.geojson", [[[p[0] + 50, p[1]] for p in SQUARE]]), "does not overlap the region's box"),
    (lambda d: (d / "b.kml").write_text("<kml/>") and d / "b.kml", "unknown boundary format"),
    (lambda d: _shapefile(d / "lines.shp", [SQUARE], shape_type=3), "holds lines"),
    (lambda d: (d / "junk.shp").write_bytes(b"x" * 200) and d / "junk.shp", "not an ESRI shapefile"),
])
def test_a_bad_boundary_is_a_configuration_error_naming_the_file(tmp_path, clean_env, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_settings(region={**UNIT_BOX, "boundary": str(path)})
    assert str(path) in str(err.value) and message in str(err.value)


def test_boundary_from_toml_and_environment(tmp_path, clean_env):
    square = _geojson(tmp_path / "sq.geojson", [SQUARE])
    (tmp_path / "xco2.toml").write_text(
        '[region]\nname = "unit"\nwest = 0.0\nsouth = 0.0\neast = 1.0\nnorth = 1.0\nboundary = "sq.geojson"\n')
    assert load_settings().region.boundary == "sq.geojson"  # relative to the working directory
    clean_env.setenv("XCO2_REGION__BOUNDARY", "none")
    assert load_settings().region.boundary is None
    clean_env.setenv("XCO2_REGION__BOUNDARY", str(square))
    assert load_settings().region.boundary == str(square)
    clean_env.setenv("XCO2_REGION__BOUNDARY", "")
    with pytest.raises(ConfigError, match="must not be empty"):
        load_settings()


def test_a_projected_shapefile_is_refused(tmp_path):
    shp = _shapefile(tmp_path / "utm.shp", [SQUARE[::-1]])
    (tmp_path / "utm.prj").write_text('PROJCS["WGS_1984_UTM_Zone_48N",GEOGCS["GCS_WGS_1984"]]')
    with pytest.raises(BoundaryError, match="not geographic WGS84"):
        read_boundary(shp)


class CountingPredictor:
    """Stands in for OnnxPredictor: xco2 = 400 + latitude, and counts the rows it is given."""

    output_names = ["xco2", "xco2_uncertainty"]

    def __init__(self):
        self.rows = 0

    def cells_per_batch(self, requested: int) -> int:
        return requested

    def run(self, features: np.ndarray) -> dict[str, np.ndarray]:
        self.rows += len(features)
        lat = features[:, len(STATIC_NAMES) + len(NDVI_NAMES) + len(METEO_NAMES)]
        return {"xco2": 400.0 + lat, "xco2_uncertainty": np.full(len(features), 0.5, np.float32)}


def _layers(grid: Grid) -> DayLayers:
    def zeros(names):
        return np.zeros((len(names), *grid.shape), np.float32)
    return DayLayers(date(2020, 6, 1), zeros(STATIC_NAMES), zeros(NDVI_NAMES), zeros(METEO_NAMES), grid.lats, grid.lons)


@pytest.mark.parametrize("batch", [3, 7, 1000])
def test_predict_day_runs_the_model_only_inside_the_boundary(tmp_path, batch):
    grid = Grid(west=0.0, south=0.0, east=1.0, north=1.0, step=0.1)
    inside = boundary_mask(read_boundary(_geojson(tmp_path / "sq.geojson", [SQUARE])), grid)
    predictor = CountingPredictor()
    done = []
    day = predict_day(predictor, _layers(grid), grid, batch, progress=lambda d, t: done.append((d, t)), inside=inside)
    assert predictor.rows == inside.sum() == 16
    for band in (day.xco2, day.uncertainty):
        assert np.isnan(band[~inside]).all() and np.isfinite(band[inside]).all()
    lat = np.broadcast_to(grid.lats[:, None], grid.shape)
    np.testing.assert_allclose(day.xco2[inside], 400.0 + lat[inside], rtol=0, atol=1e-4)
    assert done[-1] == (10, 10)

    whole = CountingPredictor()
    box_day = predict_day(whole, _layers(grid), grid, batch)
    assert whole.rows == grid.n_cells and np.isfinite(box_day.xco2).all()
    np.testing.assert_array_equal(box_day.xco2[inside], day.xco2[inside])


def test_cog_is_nodata_outside_the_boundary(tmp_path):
    grid = Grid(west=0.0, south=0.0, east=1.0, north=1.0, step=0.1)
    inside = boundary_mask(read_boundary(_geojson(tmp_path / "sq.geojson", [SQUARE])), grid)
    day = predict_day(CountingPredictor(), _layers(grid), grid, 64, inside=inside)
    cog = write_day_cog(tmp_path / "day.tif", day.xco2, grid, {"units": "ppm"}, uncertainty=day.uncertainty)
    with rasterio.open(cog) as src:
        assert all(np.isnan(v) for v in src.nodatavals)
        for band in (1, 2):
            masked = src.read(band, masked=True)
            np.testing.assert_array_equal(np.ma.getmaskarray(masked), ~inside)
            assert masked.count() == 16
