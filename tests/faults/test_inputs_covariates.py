"""Issue 10: a bad static layer or NDVI composite is quarantined with its reason; only the days it feeds wait.

Before: a corrupt raw NDVI composite or static layer raised inside `build_covariates` and failed
the whole daily run; values outside their plausible range were masked and filled from their
neighbours silently, even when most of the layer was implausible (a layer in the wrong units).
Now every raw layer is checked over the region against tasks.gridding.plausibility.COVARIATES: a few bad
cells are still masked and filled, with a WARNING naming the file, the count and a value; a
layer that cannot be read or is mostly implausible or missing is quarantined with a .json note
(and marked in the manifest, so the next pull fetches it again). A bad NDVI composite holds back
only the days it feeds; a bad static layer feeds every day, so the daily run ends Failed naming
it, and the next run with a good file completes.

Issue 20: a sound layer or composite made for another area (the demo's, under the whole province)
is not damage: it stays in place, nothing is quarantined or pulled again, and CoverageError names
the file, its extent and the region's box, on every run.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from flows.demo import SMALL_REGION
from tasks.covariates.static import (
    CovariateError, CovariateInputError, CoverageError, StaticCovariates, build_covariates, ndvi_problem,
)
from demo_world import write_demo_world
from tasks.io.geotiff import write_geotiff
from tasks.gridding.geometry import Grid
from tasks.covariates.day import day_readiness, inputs_available
from tasks.sources.manifest import Manifest

GRID = Grid(west=104.0, south=30.0, east=104.2, north=30.1, step=0.01)
WEST, NORTH = 102.0, 32.0  # a generous margin around GRID for the 150 km windows
NDVI_RES = 0.05


def _tif(path: Path, data: np.ndarray, res: float, nodata=None, west: float = WEST, north: float = NORTH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, data, Affine(res, 0, west, 0, -res, north), nodata=nodata)


def _ndvi(rng, shape=(100, 100)) -> np.ndarray:
    return rng.integers(1000, 8000, shape).astype(np.int16)  # MOD13Q1 int16, 0.1..0.8 once scaled


def _static_dir(tmp_path: Path, composites=("001", "017", "033", "049")) -> Path:
    rng = np.random.default_rng(0)
    static = tmp_path / "xco2-data" / "raw" / "static"
    _tif(static / "elevation.tif", rng.uniform(300, 3000, (1000, 1000)).astype(np.float32), 0.005)
    _tif(static / "population.tif", rng.uniform(0, 500, (50, 50)).astype(np.float32), 0.1, nodata=-1.0)
    _tif(static / "landcover.tif", rng.integers(1, 8, (400, 400)).astype(np.uint8), 0.0125, nodata=0)
    for doy in composites:
        _tif(static / f"ndvi_2020{doy}.tif", _ndvi(rng), NDVI_RES, nodata=-3000)
    return static


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _build(static: Path, quarantined: list | None = None, **kw) -> dict:
    data = static.parent.parent
    return build_covariates(static, GRID, data / "regions" / "test", quarantine_dir=data / "quarantine",
                            manifest_path=data / "raw" / "manifest.parquet", quarantined=quarantined, **kw)


def _record_in_manifest(static: Path, name: str) -> Manifest:
    manifest = Manifest(static.parent / "manifest.parquet")
    manifest.record([Manifest.row("static", None, f"static/{name}@1:1", static / name, "ok")])
    return manifest


# ---- NDVI composites -----------------------------------------------------------------------------


def test_a_truncated_ndvi_composite_is_quarantined_and_only_its_days_wait(tmp_path):
    static = _static_dir(tmp_path)
    bad = static / "ndvi_2020033.tif"  # Feb 2..17, centre Feb 10; neighbours' centres Jan 25 and Feb 26
    _truncate(bad)
    manifest = _record_in_manifest(static, bad.name)
    quarantined: list[dict] = []

    meta = _build(static, quarantined)

    assert not bad.exists()
    [row] = quarantined
    assert row["file"] == bad.name and "not a readable GeoTIFF" in row["problem"]
    note = json.loads(Path(row["quarantined_as"] + ".json").read_text())
    assert note["file"] == bad.name and "not a readable GeoTIFF" in note["reason"]
    assert manifest.load()["status"].tolist() == ["quarantined"]  # the next pull fetches it again
    assert set(meta["ndvi"]) == {"2020-01-01", "2020-01-17", "2020-02-18"}
    assert meta["ndvi_quarantined"]["2020-02-02"]["file"] == bad.name
    region_dir = static.parent.parent / "regions" / "test"
    recorded = json.loads((region_dir / "covariates" / "static.json").read_text())
    assert recorded["ndvi_quarantined"] == meta["ndvi_quarantined"]

    # Waiting: the composite's own 16 days and every day between its neighbours' centres.
    waiting = {d for d in _days(date(2020, 1, 1), date(2020, 3, 31)) if ndvi_problem(region_dir, d)}
    assert waiting == set(_days(date(2020, 1, 26), date(2020, 2, 25)))
    problem = ndvi_problem(region_dir, date(2020, 2, 10))
    assert problem.startswith(f"waiting: NDVI composite {bad.name} quarantined (") and "not a readable" in problem
    covariates = StaticCovariates(region_dir)
    with pytest.raises(CovariateError, match=f"2020-02-10: waiting: NDVI composite {bad.name}"):
        covariates.ndvi_for_day(date(2020, 2, 10))
    # Every other day is interpolated as before, from the good composites only.
    assert np.isfinite(covariates.ndvi_for_day(date(2020, 1, 25))).all()
    np.testing.assert_allclose(covariates.ndvi_for_day(date(2020, 1, 13)),  # a quarter of the way
                               0.75 * covariates.ndvi_for_day(date(2020, 1, 9))
                               + 0.25 * covariates.ndvi_for_day(date(2020, 1, 25)), rtol=1e-5)

    # The readiness the daily run and the backfill use says so; ERA5 is judged as before.
    era5_dir = tmp_path / "era5"
    era5_dir.mkdir()
    ready = day_readiness(era5_dir, date(2020, 2, 10), region_dir)
    assert not ready.ready and ready.ndvi_problem == problem and problem in ready.why
    assert not inputs_available(era5_dir, date(2020, 2, 10), region_dir=region_dir)

    # The next build (file still absent) keeps the days waiting; a good copy releases them.
    assert _build(static)["ndvi_quarantined"].keys() == {"2020-02-02"}
    _tif(bad, _ndvi(np.random.default_rng(7)), NDVI_RES, nodata=-3000)
    again = _build(static)
    assert again["ndvi_quarantined"] == {} and "2020-02-02" in again["ndvi"]
    assert ndvi_problem(region_dir, date(2020, 2, 10)) is None
    assert np.isfinite(StaticCovariates(region_dir).ndvi_for_day(date(2020, 2, 10))).all()


@pytest.mark.parametrize("data, dtype, expected", [
    (lambda rng: rng.integers(10_001, 90_000, (100, 100)), np.int32, "8 outside [-0.2, 1]"),  # NDVI x 1e5
    (lambda rng: np.full((100, 100), np.nan), np.float32, "8 NaN/inf"),
], ids=["wrong-scale", "all-nan"])
def test_a_mostly_implausible_ndvi_composite_is_quarantined_naming_file_variable_count_value(
        tmp_path, data, dtype, expected):
    static = _static_dir(tmp_path)
    bad = _tif(static / "ndvi_2020017.tif", data(np.random.default_rng(3)).astype(dtype), NDVI_RES)
    quarantined: list[dict] = []

    meta = _build(static, quarantined)

    [row] = quarantined
    assert row["file"] == bad.name and not bad.exists()
    # The region's 4 x 2 pixels of the 0.05-degree composite: all of them bad.
    assert row["problem"].startswith("ndvi: 8 of 8 values over the region are implausible or missing")
    assert expected in row["problem"]
    if dtype == np.int32:
        assert "(e.g. " in row["problem"] and "wrong units or scale?" in row["problem"]
    assert list(meta["ndvi_quarantined"]) == ["2020-01-17"]
    region_dir = static.parent.parent / "regions" / "test"
    assert ndvi_problem(region_dir, date(2020, 1, 20)).startswith("waiting: NDVI composite ndvi_2020017.tif")
    assert ndvi_problem(region_dir, date(2020, 2, 26)) is None


def test_a_composite_of_another_place_is_named_and_left_in_place(tmp_path):
    """Issue 20: a sound composite made for another area is not damaged: fetching it again would
    bring the same file, so it is named with both extents, not quarantined, and the build stops."""
    static = _static_dir(tmp_path)
    far = _tif(static / "ndvi_2020017.tif", _ndvi(np.random.default_rng(4), (20, 20)), NDVI_RES, nodata=-3000,
               west=80.0, north=40.0)
    manifest = _record_in_manifest(static, far.name)
    data = static.parent.parent

    for attempt in range(2):  # the next run says the same and still sets nothing aside
        quarantined: list[dict] = []
        with pytest.raises(CoverageError) as err:
            _build(static, quarantined)
        message = str(err.value)
        assert message.startswith(f"{far}: the NDVI composite covers 80..81 E, 39..40 N, none of the region's box "
                                  "104..104.2 E, 30..30.1 N"), attempt
        assert "xco2 covariates import ndvi FILE --start YYYY-MM-DD" in message and "XCO2_REGION__" in message
        assert "\n" not in message  # `xco2 daily` prints it as its last line
        assert err.value.path == far and not isinstance(err.value, CovariateInputError)
        assert far.exists() and quarantined == [] and not list((data / "quarantine").glob("*"))
        assert manifest.load()["status"].tolist() == ["ok"]  # the pull does not fetch it again
    # What was gridded before it is kept (static layers, the composite before it).
    meta = json.loads((data / "regions" / "test" / "covariates" / "static.json").read_text())
    assert list(meta["ndvi"]) == ["2020-01-01"] and meta["ndvi_quarantined"] == {}


def _static_layer_elsewhere(static: Path, layer: str, west: float, north: float) -> Path:
    """`layer` as sound values on a raster whose north-west corner is (`west`, `north`)."""
    rng = np.random.default_rng(8)
    if layer == "elevation":
        return _tif(static / "elevation.tif", rng.uniform(300, 3000, (400, 400)).astype(np.float32), 0.005,
                    west=west, north=north)
    if layer == "population":
        return _tif(static / "population.tif", rng.uniform(0, 500, (20, 20)).astype(np.float32), 0.1, nodata=-1.0,
                    west=west, north=north)
    return _tif(static / "landcover.tif", rng.integers(1, 8, (160, 160)).astype(np.uint8), 0.0125, nodata=0,
                west=west, north=north)


@pytest.mark.parametrize("layer, west, north, extent, share", [
    ("elevation", 80.0, 40.0, "80..82 E, 38..40 N", "none"),  # wholly elsewhere
    ("population", 104.1, 32.0, "104.1..106.1 E, 30..32 N", "only 50%"),  # the region's western half missing
    ("landcover", 103.0, 30.05, "103..105 E, 28.05..30.05 N", "only 50%"),  # its northern half missing
], ids=["elevation-elsewhere", "population-west-half", "landcover-north-half"])
def test_a_static_layer_of_another_area_is_named_and_left_in_place(tmp_path, layer, west, north, extent, share):
    static = _static_dir(tmp_path)
    path = _static_layer_elsewhere(static, layer, west, north)
    manifest = _record_in_manifest(static, path.name)
    data = static.parent.parent

    for attempt in range(2):  # a rerun: the same error, still nothing set aside
        quarantined: list[dict] = []
        with pytest.raises(CoverageError) as err:
            _build(static, quarantined)
        message = str(err.value)
        assert message.startswith(f"{path}: the {layer} layer covers {extent}, {share} of the region's box "
                                  "104..104.2 E, 30..30.1 N: it was made for another area"), attempt
        assert f"xco2 covariates import {layer} FILE" in message and "not quarantined" in message
        assert path.exists() and quarantined == [] and not list((data / "quarantine").glob("*"))
        assert manifest.load()["status"].tolist() == ["ok"]


def test_layers_of_the_demo_box_under_the_whole_province_name_the_region_they_were_built_for(tmp_path):
    """The report: `make demo`, then `xco2 daily` with the default region moved the demo's good
    elevation.tif into quarantine/, and every later run pulled it and set it aside again."""
    from tasks.settings import Region

    static = _static_dir(tmp_path)
    data = static.parent.parent
    _build(static)  # the demo: covariates of its own box
    province = Grid.for_region(Region(), 0.01)

    for _ in range(2):
        with pytest.raises(CoverageError) as err:
            build_covariates(static, province, data / "regions" / "sichuan", quarantine_dir=data / "quarantine",
                             manifest_path=data / "raw" / "manifest.parquet")
        message = str(err.value)
        assert message.startswith(f"{static / 'elevation.tif'}: the elevation layer covers 102..107 E, 27..32 N, "
                                  "only 19% of the region's box 92.35..108.2 E, 26.05..34.32 N")
        assert message.endswith("(this data directory holds covariates built for region test "
                                "(104..104.2 E, 30..30.1 N))")
        assert (static / "elevation.tif").exists() and not (data / "quarantine").exists()


def test_a_layer_of_another_area_that_is_also_implausible_is_quarantined(tmp_path):
    """Damage over the part of the region a file does cover is still damage."""
    static = _static_dir(tmp_path)
    path = _tif(static / "elevation.tif", np.full((400, 400), 5e6, np.float32), 0.005, west=104.1, north=32.0)
    quarantined: list[dict] = []
    with pytest.raises(CovariateError, match="over the part of the region the file covers"):
        _build(static, quarantined)
    [row] = quarantined
    assert row["file"] == path.name and not path.exists() and "outside [-500, 9000] m" in row["problem"]


def test_a_layer_short_of_the_region_by_less_than_half_a_cell_is_used(tmp_path, caplog):
    """Rounding at a layer's edge is not another area: the sliver is filled from its neighbours."""
    static = _static_dir(tmp_path)
    # 0.001-degree elevation ending at 104.197 E: 0.003 degrees (under half a 0.01 cell) short.
    path = _tif(static / "elevation.tif", np.random.default_rng(9).uniform(300, 3000, (2500, 1197)).astype(np.float32),
                0.001, west=103.0)
    quarantined: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="tasks.covariates.static"):
        _build(static, quarantined)
    assert quarantined == [] and path.exists()
    [warning] = [r.getMessage() for r in caplog.records if path.name in r.getMessage()]
    assert "300 not covered by the file" in warning and "masked and filled" in warning
    cube = np.load(static.parent.parent / "regions" / "test" / "covariates" / "static.npy")
    assert np.isfinite(cube).all()


def test_a_handful_of_bad_ndvi_cells_are_masked_filled_and_logged(tmp_path, caplog):
    static = _static_dir(tmp_path)
    path = static / "ndvi_2020017.tif"
    values = _ndvi(np.random.default_rng(5))
    values[38, 41] = 30000  # inside the region (rows 38-39, columns 40-43 of the 0.05-degree raster)
    _tif(path, values, NDVI_RES, nodata=-3000)
    quarantined: list[dict] = []

    with caplog.at_level(logging.WARNING, logger="tasks.covariates.static"):
        meta = _build(static, quarantined)

    assert quarantined == [] and path.exists() and meta["ndvi_quarantined"] == {}
    [warning] = [r for r in caplog.records if path.name in r.getMessage()]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert str(path) in message and "ndvi: 1 of 8 values" in message and "e.g. 3" in message
    assert "masked and filled" in message
    layers = StaticCovariates(static.parent.parent / "regions" / "test").ndvi_for_day(date(2020, 1, 25))
    assert np.isfinite(layers).all() and float(layers[0].max()) <= 1.0


def test_a_composite_the_pull_quarantined_holds_its_days_back(tmp_path):
    static = _static_dir(tmp_path, composites=("001", "017", "049"))
    pulled = [{"product": "static", "file": "ndvi_2020033.tif", "problem": "not a readable GeoTIFF (cut short)",
               "quarantined_as": "somewhere"}, {"product": "oco2", "file": "x.nc4", "problem": "-"}]
    meta = _build(static, set_aside=pulled)
    assert list(meta["ndvi_quarantined"]) == ["2020-02-02"]
    region_dir = static.parent.parent / "regions" / "test"
    assert "cut short" in ndvi_problem(region_dir, date(2020, 2, 10))
    assert ndvi_problem(region_dir, date(2020, 1, 25)) is None


def test_without_a_quarantine_folder_a_bad_composite_is_named_and_left_in_place(tmp_path):
    static = _static_dir(tmp_path)
    bad = static / "ndvi_2020033.tif"
    _truncate(bad)
    with pytest.raises(CovariateInputError, match="ndvi_2020033.tif: not a readable GeoTIFF"):
        build_covariates(static, GRID, tmp_path / "region")
    assert bad.exists()


# ---- static layers -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer, damage, expected", [
    ("elevation", "truncate", "not a readable GeoTIFF"),
    ("elevation", lambda rng: rng.uniform(300, 3000, (1000, 1000)).astype(np.float32) * 1000,  # in mm
     "elevation: 800 of 800 values over the region are implausible or missing (800 outside [-500, 9000] m"),
    ("population", lambda rng: np.full((50, 50), -5.0, np.float32), "population: 2 of 2 values"),
    ("landcover", lambda rng: rng.choice([10, 50, 130], (400, 400)).astype(np.uint8),  # ESA CCI codes, not remapped
     "landcover: 128 of 128 values over the region are implausible or missing (128 outside [1, 7] class code"),
], ids=["elevation-truncated", "elevation-in-mm", "population-negative", "landcover-raw-codes"])
def test_a_bad_static_layer_is_quarantined_and_the_build_fails_naming_it(tmp_path, layer, damage, expected):
    static = _static_dir(tmp_path)
    path = static / f"{layer}.tif"
    if damage == "truncate":
        _truncate(path)
    else:
        res = {"elevation": 0.005, "population": 0.1, "landcover": 0.0125}[layer]
        _tif(path, damage(np.random.default_rng(6)), res)
    manifest = _record_in_manifest(static, path.name)
    quarantined: list[dict] = []

    with pytest.raises(CovariateError) as err:
        _build(static, quarantined)

    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "feeds every day" in message
    [row] = quarantined
    assert row["file"] == path.name and not path.exists() and expected in row["problem"]
    assert json.loads(Path(row["quarantined_as"] + ".json").read_text())["file"] == path.name
    assert manifest.load()["status"].tolist() == ["quarantined"]
    # A second try (another run, a task retry) still names the cause, not only a missing file.
    with pytest.raises(CovariateError) as again:
        _build(static)
    assert f"{path}: static covariate file is missing (last quarantined at" in str(again.value)
    assert expected in str(again.value)


# ---- through the daily flow, local mode ------------------------------------------------------------

START, END = date(2020, 5, 31), date(2020, 6, 2)  # inside composite 2020-145 (May 24..Jun 8, centre Jun 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("covariates-world") / "world"
    write_demo_world(root, SMALL_REGION, START, END, grid_step=0.01, seed=5, dense=True)
    return root / "remote"


def _overrides(source: Path, data_dir: Path, tracking_uri: str) -> dict:
    return {"data_dir": str(data_dir), "source": "local", "local_dir": str(source),
            "region": SMALL_REGION.model_dump(), "mlflow_tracking_uri": tracking_uri,
            "registered_model_name": "inputs-covariates-no-model", "archive_lookback_days": 1}


def _manifest_statuses(data_dir: Path, name: str) -> list[str]:
    df = pd.read_parquet(data_dir / "raw" / "manifest.parquet")
    return df.loc[df["local_file"].map(lambda f: Path(f).name.endswith(name)), "status"].tolist()


def test_bad_ndvi_composites_hold_back_only_their_days(prefect_harness, tracking_uri, world, tmp_path):
    from flows.daily import daily_update

    source, data_dir = tmp_path / "source", tmp_path / "xco2-data"
    shutil.copytree(world, source)
    good = source / "static" / "ndvi" / "ndvi_2020145.tif"
    # Neighbours of the window's composite: one cut short (centre May 17, feeds May 31), one in the
    # wrong scale (centre Jun 17, feeds Jun 2). Jun 1 is the centre of the good one: it needs only it.
    truncated = shutil.copy2(good, good.with_name("ndvi_2020129.tif"))
    _truncate(Path(truncated))
    with rasterio.open(good) as src:
        rescaled = src.read(1).astype(np.int32) * 100
        transform = src.transform
    wrong_scale = write_geotiff(good.with_name("ndvi_2020161.tif"), rescaled, transform)
    overrides = _overrides(source, data_dir, tracking_uri)

    result = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)

    rows = {r["day"]: r for r in result["days"]}
    assert sorted(rows) == ["2020-05-31", "2020-06-01", "2020-06-02"]
    assert rows["2020-06-01"]["ndvi"] == "yes" and rows["2020-06-01"]["samples"] > 100
    for day, name, why in (("2020-05-31", "ndvi_2020129.tif", "not a readable GeoTIFF"),
                           ("2020-06-02", "ndvi_2020161.tif", "outside [-0.2, 1]")):
        assert rows[day]["era5"] == "yes" and rows[day]["ndvi"] == "waiting" and rows[day]["samples"] == 0
        assert rows[day]["ndvi_problem"].startswith(f"waiting: NDVI composite {name} quarantined (")
        assert why in rows[day]["ndvi_problem"]
    quarantined = {q["file"]: q for q in result["quarantined"]}
    assert set(quarantined) == {"ndvi_2020129.tif", "ndvi_2020161.tif"}
    for name in quarantined:
        assert not (data_dir / "raw" / "static" / name).exists()
        assert list((data_dir / "quarantine").glob(f"*_{name}.json"))
        assert _manifest_statuses(data_dir, name) == ["quarantined"]
    meta = json.loads((data_dir / "regions" / SMALL_REGION.name / "covariates" / "static.json").read_text())
    assert set(meta["ndvi_quarantined"]) == {"2020-05-08", "2020-06-09"}

    # Good copies arrive: the next run pulls them again and the waiting days are sampled.
    shutil.copy2(good, truncated)
    shutil.copy2(good, wrong_scale)
    again = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)
    rows = {r["day"]: r for r in again["days"]}
    assert sorted(rows) == ["2020-05-31", "2020-06-02"]
    assert all(r["ndvi"] == "yes" and r["samples"] > 100 for r in rows.values())
    assert again["quarantined"] == []


def _elevation_in_mm(path: Path) -> None:
    with rasterio.open(path) as src:
        metres, transform = src.read(1), src.transform
    write_geotiff(path, metres * np.float32(1000), transform)


@pytest.mark.parametrize("damage, expected", [
    # Cut short, its directory is gone: the pull's read check sets it aside before the build.
    (_truncate, "not a readable GeoTIFF"),
    # Readable but in the wrong units: the build's plausibility check sets it aside.
    (_elevation_in_mm, "outside [-500, 9000] m"),
], ids=["truncated", "in-mm"])
def test_a_corrupt_elevation_fails_the_daily_run_naming_it_and_the_next_run_completes(
        prefect_harness, tracking_uri, world, tmp_path, damage, expected):
    from flows.daily import daily_update

    source, data_dir = tmp_path / "source", tmp_path / "xco2-data"
    shutil.copytree(world, source)
    elevation = source / "static" / "elevation.tif"
    damage(elevation)
    overrides = _overrides(source, data_dir, tracking_uri)

    state = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides, return_state=True)

    assert state.is_failed()
    with pytest.raises(CovariateError) as err:
        state.result()
    message = str(err.value)
    assert f"{data_dir / 'raw' / 'static' / 'elevation.tif'}: " in message and expected in message
    assert "quarantined" in message and not (data_dir / "raw" / "static" / "elevation.tif").exists()
    assert list((data_dir / "quarantine").glob("*_elevation.tif.json"))
    assert not list((data_dir / "regions" / SMALL_REGION.name / "samples").glob("day=*"))

    shutil.copy2(world / "static" / "elevation.tif", elevation)
    result = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)
    rows = result["days"]
    assert [r["day"] for r in rows] == ["2020-05-31", "2020-06-01", "2020-06-02"]
    assert all(r["era5"] == "yes" and r["ndvi"] == "yes" and r["samples"] > 100 for r in rows)


def test_the_demo_layers_under_another_region_fail_the_daily_run_and_stay_in_place(
        prefect_harness, tracking_uri, world, tmp_path):
    """Issue 20: the demo's data (layers of its small box) run with the whole province: the run
    ends Failed naming the layer, both extents and what to do; nothing is quarantined, and the next
    run neither pulls the layer again nor sets it aside, but says the same."""
    from flows.daily import daily_update
    from tasks.settings import Region

    source, data_dir = tmp_path / "source", tmp_path / "xco2-data"
    shutil.copytree(world, source)
    overrides = {**_overrides(source, data_dir, tracking_uri), "region": Region().model_dump()}
    elevation = data_dir / "raw" / "static" / "elevation.tif"

    for attempt in range(2):
        state = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides, return_state=True)
        assert state.is_failed(), attempt
        with pytest.raises(CoverageError) as err:
            state.result()
        message = str(err.value)
        assert message.startswith(f"{elevation}: the elevation layer covers 105.2..106.7 E, 29.7..31.2 N, only 1% "
                                  "of the region's box 92.35..108.2 E, 26.05..34.32 N"), attempt
        assert elevation.exists() and not list((data_dir / "quarantine").glob("*"))
        assert _manifest_statuses(data_dir, "elevation.tif") == ["ok"]  # fetched once, by the first run


# ---- the archive: daily run and backfill with a champion (slow) ------------------------------------

ARCHIVE_REGION_NAME = "chengdu-tiny-covariates"


@pytest.mark.slow
def test_days_fed_by_a_quarantined_composite_are_not_archived_until_a_good_copy_comes(
        prefect_harness, tracking_uri, tmp_path):
    """A tiny world with a champion: a wrong-scale composite arriving later keeps the days it
    feeds out of the archive (daily run and backfill), the others are mapped; a good copy lets
    the next daily run map them."""
    from flows.backfill import run_backfill
    from flows.daily import daily_update
    from flows.retrain import monthly_retrain
    from tasks.archive import day_cog_path, day_item_path
    from tasks.settings import Region, load_settings

    region = Region(name=ARCHIVE_REGION_NAME, west=103.95, south=30.55, east=104.15, north=30.75)
    start, end = date(2020, 6, 1), date(2020, 6, 4)
    overrides = {"data_dir": str(tmp_path / "xco2-data"), "source": "demo", "region": region.model_dump(),
                 "archive_lookback_days": 2, "max_epochs": 1, "max_training_samples": 1000,
                 "max_validation_samples": 300, "comparison_protocols": [],
                 "mlflow_tracking_uri": tracking_uri, "registered_model_name": "faults-inputs-covariates"}
    settings = load_settings(**overrides)
    write_demo_world(settings.data_dir / "demo", settings.region, start, end, grid_step=settings.grid_step,
                     seed=20200601, dense=True)
    window = {"start": start.isoformat(), "end": end.isoformat(), "overrides": overrides}
    daily_update(**window)
    monthly_retrain(overrides=overrides)
    assert [r["day"] for r in daily_update(**window)["archive_days"]] == ["2020-06-03", "2020-06-04"]

    # A composite of Jun 9..24 in the wrong scale arrives; Jun 4's map is lost meanwhile.
    ndvi_dir = settings.data_dir / "demo" / "remote" / "static" / "ndvi"
    good = ndvi_dir / "ndvi_2020145.tif"  # centre Jun 1: Jun 1 needs only it
    with rasterio.open(good) as src:
        rescaled, transform = src.read(1).astype(np.int32) * 100, src.transform
    bad = write_geotiff(ndvi_dir / "ndvi_2020161.tif", rescaled, transform)
    root = settings.archive_root
    for path in (day_cog_path(root, region.name, end), day_item_path(root, region.name, end)):
        path.unlink()

    result = daily_update(**window)

    assert [q["file"] for q in result["quarantined"]] == [bad.name]
    assert result["archive_days"] == [] and not day_cog_path(root, region.name, end).exists()
    assert ndvi_problem(settings.region_dir, end).startswith(f"waiting: NDVI composite {bad.name} quarantined")
    backfill = run_backfill(start.isoformat(), end.isoformat(), overrides=overrides)
    assert [r["day"] for r in backfill["days"]] == ["2020-06-01"]
    assert backfill["skipped_days"] == ["2020-06-02", "2020-06-03", "2020-06-04"]

    shutil.copy2(good, bad)  # a good copy of the composite comes in
    again = daily_update(**window)
    assert again["quarantined"] == [] and [r["day"] for r in again["archive_days"]] == ["2020-06-04"]
    assert ndvi_problem(settings.region_dir, end) is None


@pytest.mark.parametrize("failure", ["covariates", "coverage", "archive"])
def test_cli_daily_ends_with_the_cause_not_a_traceback(tmp_path, monkeypatch, capsys, failure):
    """A daily run that ends Failed for a cause it has reported (a bad static layer, archive days
    that could not be written) makes `xco2 daily` exit 1 with that cause as its last line."""
    import flows.daily
    from flows.cli import main

    def failed_run(**_):
        if failure == "covariates":
            raise CovariateError("/data/raw/static/elevation.tif: quarantined: unreadable")
        if failure == "coverage":
            raise CoverageError("/data/raw/static/elevation.tif", "the elevation layer", (105.2, 29.7, 106.7, 31.2),
                                (92.35, 26.05, 108.2, 34.32), "Build or import elevation for this region")
        raise flows.daily.ArchiveDaysFailed({"2020-06-02": "ArchiveWriteError: /a/x.tif: No space left on device"})

    monkeypatch.setattr(flows.daily, "daily_update", failed_run)
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    rc = main(["daily", "--start", "2020-06-01", "--end", "2020-06-02"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("xco2 daily: ")
    assert ("No space left on device" if failure == "archive" else "elevation.tif") in err[-1]
    if failure == "coverage":
        assert "covers 105.2..106.7 E, 29.7..31.2 N, only 1% of the region's box 92.35..108.2 E" in err[-1]
    assert not any("Traceback" in line for line in err)
