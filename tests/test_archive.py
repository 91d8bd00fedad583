"""The map archive: COG files, layout, STAC metadata (validated offline) and quicklooks."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.validation.stac_validator import GetSchemaError
from rio_cogeo.cogeo import cog_validate

import tasks.archive.cog as cog_module
from tasks.archive import (
    archived_days,
    collection_path,
    day_cog_path,
    day_item_path,
    quicklook_png,
    upsert_day_item,
    validate_cog,
    validate_stac,
    write_day_cog,
)
from tasks.archive.stac_validation import OfflineSTACValidator
from tasks.gridding.geometry import Grid
from tasks.settings import Region

REGION = "testland"
DAY1 = date(2024, 3, 1)
DAY2 = date(2024, 3, 2)

HALF_DEGREE = Grid(west=100.0, south=30.0, east=100.5, north=30.5, step=0.01)  # 50 x 50
ODD_SHAPE = Grid(west=101.23, south=28.11, east=101.76, north=28.48, step=0.01)  # 37 rows x 53 cols
WIDER_THAN_A_TILE = Grid(west=95.0, south=27.0, east=102.0, north=30.0, step=0.01)  # 300 x 700
SICHUAN = Grid.for_region(Region(), 0.01)

TAGS = {
    "units": "ppm",
    "model_name": "xco2-resnet-lstm",
    "model_version": "7",
    "feature_set_version": "fs-3",
    "source_mode": "demo",
    "synthetic": True,
    "date": DAY1,
}
PROPERTIES = {
    "model_name": "xco2-resnet-lstm",
    "model_version": "7",
    "feature_set_version": "fs-3",
    "source_mode": "demo",
    "synthetic": True,
}


def smooth_field(grid: Grid, seed: int = 0) -> np.ndarray:
    """A plausible XCO2 day: a gentle gradient plus noise, with a block of missing cells."""
    rng = np.random.default_rng(seed)
    lat = grid.lats[:, None]
    lon = grid.lons[None, :]
    xco2 = 415 + 0.2 * (lat - lat.mean()) + 0.1 * (lon - lon.mean()) + rng.normal(0, 0.3, grid.shape)
    xco2 = xco2.astype(np.float32)
    xco2[: grid.ny // 4, : grid.nx // 3] = np.nan
    return xco2


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on the production machines."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- layout ----------------------------------------------------------------------------------


def test_day_cog_path_follows_the_documented_layout(tmp_path):
    assert day_cog_path(tmp_path, "sichuan", date(2024, 1, 5)) == (
        tmp_path / "sichuan" / "2024" / "xco2_sichuan_20240105.tif"
    )
    assert day_item_path(tmp_path, "sichuan", date(2024, 1, 5)).name == "xco2_sichuan_20240105.json"
    assert collection_path(tmp_path, "sichuan") == tmp_path / "sichuan" / "collection.json"


def test_region_names_cannot_escape_the_archive(tmp_path):
    with pytest.raises(ValueError, match="region name"):
        day_cog_path(tmp_path, "../elsewhere", DAY1)


def test_archived_days_lists_finished_cogs_only(tmp_path):
    grid = HALF_DEGREE
    for day in (date(2023, 12, 31), DAY2, DAY1):
        write_day_cog(day_cog_path(tmp_path, REGION, day), smooth_field(grid), grid, TAGS)
    year = tmp_path / REGION / "2024"
    (year / f".xco2_{REGION}_20240303.tif.123.abcd.tmp").write_bytes(b"half written")
    (year / f"xco2_{REGION}_20240304.tif.tmp").write_bytes(b"half written")
    (year / f"xco2_{REGION}_20240231.tif").write_bytes(b"not a day")
    (year / "xco2_other_20240305.tif").write_bytes(b"another region")
    (year / f"xco2_{REGION}_20230101.tif").write_bytes(b"wrong year folder")

    assert archived_days(tmp_path, REGION) == [date(2023, 12, 31), DAY1, DAY2]
    assert archived_days(tmp_path, "nowhere") == []


# --- COG ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [HALF_DEGREE, ODD_SHAPE], ids=["50x50", "37x53"])
def test_day_cog_is_a_valid_aligned_float32_cog(tmp_path, grid):
    xco2 = smooth_field(grid)
    path = write_day_cog(day_cog_path(tmp_path, REGION, DAY1), xco2, grid, TAGS)

    assert path == day_cog_path(tmp_path, REGION, DAY1)
    is_cog, errors, warnings = cog_validate(str(path), quiet=True)
    assert is_cog and errors == [] and warnings == []
    assert validate_cog(path, grid) == []
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326
        assert src.transform == grid.transform
        assert src.shape == grid.shape
        assert src.dtypes == ("float32",)
        assert math.isnan(src.nodata)
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["COMPRESSION"] in ("DEFLATE", "ZSTD")
        assert structure["PREDICTOR"] == "3"
        assert structure["LAYOUT"] == "COG"
        assert src.block_shapes == [(512, 512)]
        assert src.descriptions == ("xco2",)
        assert src.units == ("ppm",)
        assert src.tags(1)["units"] == "ppm"
        tags = src.tags()
        assert tags["units"] == "ppm"
        assert tags["model_name"] == "xco2-resnet-lstm"
        assert tags["model_version"] == "7"
        assert tags["feature_set_version"] == "fs-3"
        assert tags["source_mode"] == "demo"
        assert tags["synthetic"] == "true"
        assert tags["date"] == "2024-03-01"

        raw = src.read(1)
        masked = src.read(1, masked=True)
    np.testing.assert_array_equal(raw, xco2)  # NaN == NaN for assert_array_equal
    assert np.array_equal(np.isnan(raw), np.isnan(xco2))
    assert np.array_equal(masked.mask, np.isnan(xco2))


def test_cells_on_the_grid_lattice(tmp_path):
    grid = ODD_SHAPE
    path = write_day_cog(tmp_path / "day.tif", smooth_field(grid), grid, TAGS)
    with rasterio.open(path) as src:
        # The north-west corner of cell (0, 0) and the centre of the last cell.
        assert src.xy(0, 0, offset="ul") == pytest.approx((grid.west, grid.north), abs=1e-12)
        assert src.xy(grid.ny - 1, grid.nx - 1) == pytest.approx((grid.lons[-1], grid.lats[-1]), abs=1e-9)


def test_large_day_has_average_overviews_that_skip_nodata(tmp_path):
    grid = WIDER_THAN_A_TILE
    xco2 = smooth_field(grid)
    xco2[0:2, 0:2] = [[np.nan, 410.0], [412.0, 414.0]]
    path = write_day_cog(tmp_path / "day.tif", xco2, grid, TAGS)

    assert validate_cog(path, grid) == []
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]
        assert src.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE"
    with rasterio.open(path, overview_level=0) as overview:
        first = overview.read(1, window=((0, 1), (0, 1)))[0, 0]
        assert first == pytest.approx(412.0)  # mean of the three valid cells, NaN ignored
        assert np.isnan(overview.read(1, window=((10, 11), (10, 11)))[0, 0])  # all-missing block


def test_uncertainty_is_band_two_in_ppm(tmp_path):
    grid = ODD_SHAPE
    xco2 = smooth_field(grid)
    uncertainty = np.full(grid.shape, 0.8, dtype=np.float64)  # converted to float32
    uncertainty[np.isnan(xco2)] = np.nan
    path = write_day_cog(tmp_path / "day.tif", xco2, grid, TAGS, uncertainty=uncertainty)

    assert validate_cog(path, grid) == []
    with rasterio.open(path) as src:
        assert src.count == 2
        assert src.descriptions == ("xco2", "xco2_uncertainty")
        assert src.units == ("ppm", "ppm")
        assert src.tags(2)["units"] == "ppm"
        assert src.dtypes == ("float32", "float32")
        np.testing.assert_array_equal(src.read(2), uncertainty.astype(np.float32))


def test_all_missing_day_is_still_a_valid_cog(tmp_path):
    grid = HALF_DEGREE
    path = write_day_cog(tmp_path / "day.tif", np.full(grid.shape, np.nan, np.float32), grid, TAGS)
    assert validate_cog(path, grid) == []
    with rasterio.open(path) as src:
        assert src.read(1, masked=True).mask.all()


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    grid = HALF_DEGREE
    path = tmp_path / "day.tif"
    with pytest.raises(ValueError, match="does not match the grid"):
        write_day_cog(path, np.zeros((grid.nx, grid.ny + 1), np.float32), grid, TAGS)
    with pytest.raises(ValueError, match="infinite"):
        bad = smooth_field(grid)
        bad[3, 3] = np.inf
        write_day_cog(path, bad, grid, TAGS)
    with pytest.raises(ValueError, match="units"):
        write_day_cog(path, smooth_field(grid), grid, {**TAGS, "units": "ppb"})
    assert visible_files(tmp_path) == []


def test_rewriting_a_day_replaces_it(tmp_path):
    grid = HALF_DEGREE
    path = day_cog_path(tmp_path, REGION, DAY1)
    write_day_cog(path, smooth_field(grid, seed=1), grid, {**TAGS, "model_version": "1"})
    second = smooth_field(grid, seed=2)
    write_day_cog(path, second, grid, {**TAGS, "model_version": "2"})

    assert visible_files(path.parent) == [path.name]
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), second)
        assert src.tags()["model_version"] == "2"


def test_failure_while_building_leaves_no_file(tmp_path, monkeypatch):
    grid = HALF_DEGREE
    path = day_cog_path(tmp_path, REGION, DAY1)
    real_open = rasterio.open

    def open_then_fail(target, mode="r", **kwargs):
        # Really start the GDAL write into the temp file, then die before it completes.
        dataset = real_open(target, mode, **kwargs)
        dataset.write(np.zeros((1, grid.ny, grid.nx), np.float32))
        dataset.close()
        raise RuntimeError("disk full")

    monkeypatch.setattr(cog_module.rasterio, "open", open_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_day_cog(path, smooth_field(grid), grid, TAGS)
    monkeypatch.undo()

    assert visible_files(path.parent) == []  # neither the COG nor any hidden temp file
    assert archived_days(tmp_path, REGION) == []


def test_failure_at_the_final_rename_keeps_the_previous_day(tmp_path, monkeypatch):
    grid = HALF_DEGREE
    path = day_cog_path(tmp_path, REGION, DAY1)
    write_day_cog(path, smooth_field(grid, seed=1), grid, TAGS)
    before = path.read_bytes()

    def refuse_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", refuse_rename)
    with pytest.raises(OSError, match="rename failed"):
        write_day_cog(path, smooth_field(grid, seed=2), grid, TAGS)
    monkeypatch.undo()

    assert visible_files(path.parent) == [path.name]
    assert path.read_bytes() == before
    assert validate_cog(path, grid) == []


def test_validate_cog_reports_what_is_wrong(tmp_path):
    grid = HALF_DEGREE
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=grid.nx, height=grid.ny, count=1, dtype="float32",
        crs="EPSG:3857", transform=grid.transform, nodata=-9999.0, compress="LZW",
    ) as dst:
        dst.write(smooth_field(grid), 1)
    problems = "\n".join(validate_cog(plain))
    for expected in ("EPSG:4326", "nodata is -9999", "compression LZW", "predictor 1", "band descriptions"):
        assert expected in problems

    good = write_day_cog(tmp_path / "good.tif", smooth_field(grid), grid, TAGS)
    assert any("transform" in p for p in validate_cog(good, ODD_SHAPE))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[:300])
    assert validate_cog(truncated)
    assert validate_cog(tmp_path / "absent.tif") == [f"{tmp_path / 'absent.tif'}: no such file"]


def test_sichuan_day_is_written_quickly(tmp_path):
    xco2 = smooth_field(SICHUAN)
    path = day_cog_path(tmp_path, "sichuan", DAY1)
    started = time.perf_counter()
    write_day_cog(path, xco2, SICHUAN, TAGS, uncertainty=np.full(SICHUAN.shape, 0.9, np.float32))
    elapsed = time.perf_counter() - started

    assert SICHUAN.shape == (827, 1585)
    assert elapsed < 4.0, f"writing a Sichuan day took {elapsed:.2f} s"
    assert validate_cog(path, SICHUAN) == []
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4]


# --- STAC --------------------------------------------------------------------------------------


def archive_two_days(root: Path, grid: Grid = ODD_SHAPE) -> Path:
    for day in (DAY1, DAY2):
        cog = write_day_cog(day_cog_path(root, REGION, day), smooth_field(grid), grid, {**TAGS, "date": day})
        upsert_day_item(root, Region(name=REGION), grid, day, cog, PROPERTIES)
    return collection_path(root, REGION)


def test_collection_of_two_days_validates_offline(tmp_path, no_network):
    collection_file = archive_two_days(tmp_path)
    assert validate_stac(collection_file) == []

    # The validator also plugs into pystac's own entry point.
    item = json.loads(day_item_path(tmp_path, REGION, DAY1).read_text())
    assert len(pystac.validation.validate_dict(item, validator=OfflineSTACValidator())) == 3

    # The block is real: pystac's default validator needs the network for extension schemas.
    with pytest.raises(GetSchemaError):
        pystac.validation.validate_dict(item)


def test_collection_extent_and_links_cover_both_days(tmp_path):
    grid = ODD_SHAPE
    collection_file = archive_two_days(tmp_path, grid)
    collection = json.loads(collection_file.read_text())

    assert collection["id"] == f"xco2-{REGION}"
    assert collection["license"] and collection["description"] and collection["providers"]
    assert collection["extent"]["spatial"]["bbox"] == [[grid.west, grid.south, grid.east, grid.north]]
    assert collection["extent"]["temporal"]["interval"] == [["2024-03-01T00:00:00Z", "2024-03-02T23:59:59Z"]]
    item_links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert item_links == ["./2024/xco2_testland_20240301.json", "./2024/xco2_testland_20240302.json"]
    assert not any(link["rel"] == "self" for link in collection["links"])


def test_pystac_reads_it_as_a_self_contained_catalog(tmp_path):
    collection_file = archive_two_days(tmp_path)
    assert pystac.CatalogType.determine_type(json.loads(collection_file.read_text())) == (
        pystac.CatalogType.SELF_CONTAINED
    )
    collection = pystac.Collection.from_file(str(collection_file))
    items = sorted(collection.get_items(), key=lambda i: i.id)
    assert [i.id for i in items] == ["xco2_testland_20240301", "xco2_testland_20240302"]
    for item in items:
        assert Path(item.assets["xco2"].get_absolute_href()).is_file()


def test_item_describes_the_day(tmp_path):
    grid = ODD_SHAPE
    archive_two_days(tmp_path, grid)
    item = json.loads(day_item_path(tmp_path, REGION, DAY1).read_text())

    assert item["id"] == "xco2_testland_20240301"
    assert item["collection"] == "xco2-testland"
    assert item["bbox"] == [grid.west, grid.south, grid.east, grid.north]
    props = item["properties"]
    assert props["datetime"] == "2024-03-01T12:00:00Z"
    assert (props["start_datetime"], props["end_datetime"]) == ("2024-03-01T00:00:00Z", "2024-03-01T23:59:59Z")
    assert props["proj:code"] == "EPSG:4326"
    assert props["proj:shape"] == [37, 53]
    assert props["proj:transform"] == list(grid.transform)[:6]
    assert props["xco2:model_name"] == "xco2-resnet-lstm"
    assert props["xco2:model_version"] == "7"
    assert props["xco2:feature_set_version"] == "fs-3"
    assert props["xco2:source_mode"] == "demo"
    assert props["xco2:synthetic"] is True
    assert "https://stac-extensions.github.io/projection/v2.0.0/schema.json" in item["stac_extensions"]
    assert "https://stac-extensions.github.io/raster/v1.1.0/schema.json" in item["stac_extensions"]

    asset = item["assets"]["xco2"]
    assert asset["href"] == "xco2_testland_20240301.tif"
    assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset["roles"] == ["data"]
    (band,) = asset["raster:bands"]
    assert band["nodata"] == "nan" and band["data_type"] == "float32" and band["unit"] == "ppm"
    assert 900 < band["spatial_resolution"] < 1200  # metres, ~0.01 degree
    assert 400 < band["statistics"]["mean"] < 430


def test_re_upserting_a_day_replaces_its_item(tmp_path):
    grid = ODD_SHAPE
    collection_file = archive_two_days(tmp_path, grid)
    cog = day_cog_path(tmp_path, REGION, DAY1)
    upsert_day_item(tmp_path, REGION, grid, DAY1, cog, {**PROPERTIES, "model_version": "8"})
    upsert_day_item(tmp_path, REGION, grid, DAY1, cog, {**PROPERTIES, "model_version": "8"})

    collection = json.loads(collection_file.read_text())
    assert [link["rel"] for link in collection["links"]].count("item") == 2
    item = json.loads(day_item_path(tmp_path, REGION, DAY1).read_text())
    assert item["properties"]["xco2:model_version"] == "8"
    assert visible_files(tmp_path / REGION / "2024") == sorted(
        f"xco2_testland_{d:%Y%m%d}.{ext}" for d in (DAY1, DAY2) for ext in ("json", "tif")
    )
    assert validate_stac(collection_file) == []


def test_parallel_upserts_of_different_days_all_land(tmp_path):
    grid = HALF_DEGREE
    days = [date(2024, 5, d) for d in range(1, 9)]
    cogs = {d: write_day_cog(day_cog_path(tmp_path, REGION, d), smooth_field(grid), grid, TAGS) for d in days}
    threads = [
        threading.Thread(target=upsert_day_item, args=(tmp_path, REGION, grid, d, cogs[d], PROPERTIES))
        for d in days
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    collection = json.loads(collection_path(tmp_path, REGION).read_text())
    assert [link["rel"] for link in collection["links"]].count("item") == len(days)
    assert collection["extent"]["temporal"]["interval"] == [["2024-05-01T00:00:00Z", "2024-05-08T23:59:59Z"]]


def test_broken_item_fails_validation_with_a_useful_message(tmp_path, no_network):
    collection_file = archive_two_days(tmp_path)
    item_file = day_item_path(tmp_path, REGION, DAY2)
    item = json.loads(item_file.read_text())
    item["properties"]["proj:shape"] = "37x53"
    item_file.write_text(json.dumps(item))

    problems = validate_stac(collection_file)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert str(item_file) in problem
    assert "projection/v2.0.0" in problem
    assert "proj:shape" in problem and "'37x53'" in problem


def test_missing_asset_and_unknown_extension_are_reported_without_network(tmp_path, no_network):
    collection_file = archive_two_days(tmp_path)
    day_cog_path(tmp_path, REGION, DAY1).unlink()
    item_file = day_item_path(tmp_path, REGION, DAY2)
    item = json.loads(item_file.read_text())
    item["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    item_file.write_text(json.dumps(item))

    problems = "\n".join(validate_stac(collection_file))
    assert "xco2_testland_20240301.tif does not exist" in problems
    assert "eo/v1.1.0/schema.json is not available offline" in problems


def test_schema_referenced_from_a_schema_is_not_fetched(tmp_path, no_network):
    # proj:projjson points the projection schema at proj.org's PROJJSON schema, which is not copied.
    collection_file = archive_two_days(tmp_path)
    item_file = day_item_path(tmp_path, REGION, DAY1)
    item = json.loads(item_file.read_text())
    item["properties"]["proj:projjson"] = {"type": "GeographicCRS"}
    item_file.write_text(json.dumps(item))

    (problem,) = validate_stac(collection_file)
    assert "projjson.schema.json is not available offline" in problem


def test_upsert_needs_the_cog_first(tmp_path):
    with pytest.raises(FileNotFoundError):
        upsert_day_item(tmp_path, REGION, HALF_DEGREE, DAY1, day_cog_path(tmp_path, REGION, DAY1), PROPERTIES)


# --- quicklook ---------------------------------------------------------------------------------


def test_quicklook_is_a_small_png(tmp_path):
    grid = WIDER_THAN_A_TILE
    cog = write_day_cog(tmp_path / "day.tif", smooth_field(grid), grid, TAGS)
    png = quicklook_png(cog, tmp_path / "artifacts" / "day.png", "XCO2 testland 2024-03-01")

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 500_000
    assert visible_files(png.parent) == ["day.png"]


# --- consumers (the README's recipes) ----------------------------------------------------------


def test_rioxarray_reads_a_time_series_of_days(tmp_path):
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    grid = ODD_SHAPE
    fields = {}
    for day in (DAY1, DAY2):
        fields[day] = smooth_field(grid, seed=day.day)
        write_day_cog(day_cog_path(tmp_path, REGION, day), fields[day], grid, {**TAGS, "date": day},
                      uncertainty=np.full(grid.shape, 0.8, np.float32))
    days = [DAY1, DAY2]
    series = xr.concat(
        [rioxarray.open_rasterio(day_cog_path(tmp_path, REGION, d), masked=True).sel(band=1) for d in days],
        dim="time").assign_coords(time=np.array(days, dtype="datetime64[ns]"))
    assert series.rio.crs.to_epsg() == 4326
    assert series.shape == (2, grid.ny, grid.nx)
    np.testing.assert_allclose(series.x.values, grid.lons, atol=1e-9)
    np.testing.assert_allclose(series.y.values, grid.lats, atol=1e-9)
    np.testing.assert_array_equal(series.isel(time=1).values, fields[DAY2])  # NaN where no estimate
    point = series.sel(x=grid.lons[-1], y=grid.lats[-1], method="nearest")
    assert point.shape == (2,) and np.isfinite(point).all()


def test_odc_stac_loads_the_catalog_as_a_cube(tmp_path):
    import odc.stac

    grid = ODD_SHAPE
    for day in (DAY1, DAY2):
        cog = write_day_cog(day_cog_path(tmp_path, REGION, day), smooth_field(grid), grid, {**TAGS, "date": day},
                            uncertainty=np.full(grid.shape, 0.8, np.float32))
        upsert_day_item(tmp_path, Region(name=REGION), grid, day, cog, PROPERTIES)
    items = list(pystac.Collection.from_file(str(collection_path(tmp_path, REGION))).get_items())
    cube = odc.stac.load(items, chunks=None)
    assert sorted(cube.data_vars) == ["xco2.1", "xco2.2"]  # one asset, two bands (raster:bands)
    cube = cube.rename({"xco2.1": "xco2", "xco2.2": "uncertainty"})
    assert cube["xco2"].shape == (2, grid.ny, grid.nx)
    assert float(cube["uncertainty"].max()) == pytest.approx(0.8)
    assert cube.odc.geobox.crs.epsg == 4326
    with rasterio.open(day_cog_path(tmp_path, REGION, DAY1)) as src:
        expected = src.read(1)
    got = cube["xco2"].isel(time=0).values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)])
