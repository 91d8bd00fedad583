"""The archive's format 2 (issue 22): band 2 the retrieval interval as before, band 3 the true
column's interval, named and described in the COG and the STAC item, and a version tag; format-1
days still validate and their readers still find band 2."""

from __future__ import annotations

import json
import socket
from datetime import date

import numpy as np
import pytest
import rasterio

import tasks.archive.cog as cog_module
from tasks.analysis.accuracy import accuracy_against_truth
from tasks.archive import collection_path, day_cog_path, day_item_path, upsert_day_item, validate_cog, validate_stac
from tasks.archive.cog import (FORMAT_VERSION, FORMAT_VERSION_TAG, TRUE_COLUMN_BAND, UNCERTAINTY_BAND, XCO2_BAND,
                               band_index, format_version, write_day_cog)
from tasks.archive.stac import item_properties
from tasks.gridding.geometry import Grid
from tasks.settings import Region

REGION = "testland"
DAY = date(2024, 3, 1)
GRID = Grid(west=100.0, south=30.0, east=100.5, north=30.5, step=0.01)
TAGS = {"units": "ppm", "model_name": "m", "model_version": "3", "feature_set_version": "fs", "source_mode": "demo",
        "synthetic": True, "date": DAY}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _bands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xco2 = (415 + rng.normal(0, 0.3, GRID.shape)).astype(np.float32)
    retrieval = np.full(GRID.shape, 1.2, np.float32)
    true_column = np.full(GRID.shape, 0.5, np.float32)
    xco2[:5, :5] = retrieval[:5, :5] = true_column[:5, :5] = np.nan
    return xco2, retrieval, true_column


def _rewrite(path, data: np.ndarray, names: tuple[str, ...], tags: dict) -> None:
    """The day's file written again as given (names, dataset tags), as an older writer would have."""
    other = path.with_name("other.tif")
    profile = {"driver": "COG", "width": GRID.nx, "height": GRID.ny, "count": len(names), "dtype": "float32",
               "crs": "EPSG:4326", "transform": GRID.transform, "nodata": float("nan"), **cog_module._CREATION_OPTIONS}
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
            dst.update_tags(i, units="ppm")
        dst.units = tuple("ppm" for _ in names)
        dst.update_tags(**tags)
    other.replace(path)


def test_format_2_carries_both_intervals_named_and_described(tmp_path, no_network):
    xco2, retrieval, true_column = _bands()
    path = write_day_cog(day_cog_path(tmp_path, REGION, DAY), xco2, GRID, TAGS, uncertainty=retrieval,
                         true_column_uncertainty=true_column)
    assert validate_cog(path, GRID) == []
    with rasterio.open(path) as src:
        assert src.count == 3
        assert src.descriptions == (XCO2_BAND, UNCERTAINTY_BAND, TRUE_COLUMN_BAND)
        assert format_version(src) == FORMAT_VERSION == "2" and src.tags()[FORMAT_VERSION_TAG] == "2"
        assert band_index(src, UNCERTAINTY_BAND) == 2 and band_index(src, TRUE_COLUMN_BAND) == 3
        assert src.tags(2)["interval"] == "new retrieval" and src.tags(3)["interval"] == "true column"
        assert "NEW RETRIEVAL" in src.tags(2)["description"] and "TRUE XCO2 COLUMN" in src.tags(3)["description"]
        np.testing.assert_array_equal(src.read(2), retrieval)  # band 2 is what it always was
        np.testing.assert_array_equal(src.read(3), true_column)
        tags = src.tags()
    item_path = upsert_day_item(tmp_path, Region(name=REGION), GRID, DAY, path, item_properties(tags))
    assert validate_stac(collection_path(tmp_path, REGION)) == []
    item = json.loads(item_path.read_text())
    assert item["properties"]["xco2:format_version"] == "2"
    bands = item["assets"]["xco2"]["raster:bands"]
    assert [b["name"] for b in bands] == [XCO2_BAND, UNCERTAINTY_BAND, TRUE_COLUMN_BAND]
    assert "NEW RETRIEVAL" in bands[1]["description"] and "TRUE XCO2 COLUMN" in bands[2]["description"]
    assert "band 3" in bands[2]["description"]


def test_a_true_column_interval_needs_the_retrieval_interval_beside_it(tmp_path):
    xco2, _, true_column = _bands()
    with pytest.raises(ValueError, match="band 2"):
        write_day_cog(day_cog_path(tmp_path, REGION, DAY), xco2, GRID, TAGS, true_column_uncertainty=true_column)


def test_format_1_days_still_validate_and_read(tmp_path):
    """A day archived before issue 22 (no version tag, two bands): sound, band 2 found by name,
    no band 3, and the truth check reads it without a true-column coverage."""
    xco2, retrieval, _ = _bands()
    path = day_cog_path(tmp_path, REGION, DAY)
    path.parent.mkdir(parents=True)
    write_day_cog(path, xco2, GRID, TAGS, uncertainty=retrieval)
    # Rewrite as format 1 exactly: the same file without the version tag.
    with rasterio.open(path) as src:
        data, tags = src.read(), src.tags()
    tags.pop(FORMAT_VERSION_TAG)
    _rewrite(path, data, (XCO2_BAND, UNCERTAINTY_BAND), tags)
    assert validate_cog(path, GRID) == []
    with rasterio.open(path) as src:
        assert format_version(src) == "1"
        assert band_index(src, UNCERTAINTY_BAND) == 2 and band_index(src, TRUE_COLUMN_BAND) is None
        assert item_properties(src.tags())["format_version"] == "1"


def test_a_wrong_layout_for_its_version_is_reported(tmp_path):
    xco2, retrieval, true_column = _bands()
    path = write_day_cog(day_cog_path(tmp_path, REGION, DAY), xco2, GRID, TAGS, uncertainty=retrieval,
                         true_column_uncertainty=true_column)
    with rasterio.open(path) as src:
        data, tags = src.read(), src.tags()
    _rewrite(path, data, (XCO2_BAND, UNCERTAINTY_BAND, TRUE_COLUMN_BAND), {**tags, FORMAT_VERSION_TAG: "1"})
    assert any("band descriptions" in p for p in validate_cog(path))


def test_the_truth_check_reads_each_interval_by_name(tmp_path, monkeypatch):
    xco2, retrieval, true_column = _bands()
    write_day_cog(day_cog_path(tmp_path, REGION, DAY), xco2, GRID, TAGS, uncertainty=retrieval,
                  true_column_uncertainty=true_column)
    import tasks.analysis.accuracy as accuracy

    monkeypatch.setattr(accuracy, "observed_cells", lambda region_dir, grid: np.zeros(grid.shape, bool))
    # Errors of 0.8 ppm everywhere: inside band 2 (1.2), outside band 3 (0.5).
    out = accuracy_against_truth(tmp_path, REGION, tmp_path, GRID, lambda d: xco2 + 0.8, [DAY])
    assert out["never_observed_interval_coverage"] == 1.0
    assert out["never_observed_true_column_coverage"] == 0.0
    assert day_item_path(tmp_path, REGION, DAY).parent == day_cog_path(tmp_path, REGION, DAY).parent


def test_the_rioxarray_recipe_of_data_md_finds_both_intervals_by_name(tmp_path):
    import rioxarray

    xco2, retrieval, true_column = _bands()
    path = write_day_cog(day_cog_path(tmp_path, REGION, DAY), xco2, GRID, TAGS, uncertainty=retrieval,
                         true_column_uncertainty=true_column)
    # docs/data.md, "Reading the archive", as written there
    day = rioxarray.open_rasterio(path, masked=True)
    names = list(day.attrs["long_name"])
    if day.attrs.get("xco2_format_version", "1") != "1" and "xco2_true_column_uncertainty" in names:
        true_68 = day.isel(band=names.index("xco2_true_column_uncertainty"))
    else:
        true_68 = None
    retrieval_68 = day.isel(band=names.index("xco2_uncertainty"))
    noise_sd = (retrieval_68 ** 2 - true_68 ** 2) ** 0.5 if true_68 is not None else None
    assert true_68 is not None and noise_sd is not None
    np.testing.assert_array_equal(true_68.values, true_column)
    np.testing.assert_array_equal(retrieval_68.values, retrieval)
    assert float(noise_sd.max()) == pytest.approx(np.sqrt(1.2 ** 2 - 0.5 ** 2), rel=1e-5)
