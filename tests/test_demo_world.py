"""The demo world: layout, determinism, realism of sampling and truth, readable by the readers."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import rasterio

from demo_world import DemoWorld, truth_for_day, write_demo_world
from demo_world.noise import Sampler, hash_uniform, hash_uniform_scalar, value_noise_grid, value_noise_points
from tasks.gridding.geometry import Grid
from tasks.readers import day_of_granule, detect_format, era5_daily, read_era5, read_soundings
from tasks.settings import Region
from tasks.gridding.soundings import good_soundings, usable_soundings

# A 0.5 x 0.5 degree box on the Chengdu plain's northern edge (city, plain and foothills).
TINY = Region(name="tiny", west=104.0, south=30.5, east=104.5, north=31.0)
START, END = date(2020, 6, 1), date(2020, 6, 5)
SEED = 20200601


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DemoWorld:
    root = tmp_path_factory.mktemp("world")
    calls = []
    w = write_demo_world(root, TINY, START, END, seed=SEED, dense=True,
                         progress=lambda step, done, total: calls.append((step, done, total)))
    w.progress_calls = calls  # for the progress test
    return w


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid.for_region(TINY, 0.01)


def _days():
    return [START + timedelta(days=i) for i in range((END - START).days + 1)]


def _soundings(world: DemoWorld, source: str) -> pd.DataFrame:
    frames = []
    for rel in world.files[source]:
        df = read_soundings(world.path(rel))
        df["day"] = day_of_granule(rel)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _with_truth(world: DemoWorld, df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    df = usable_soundings(df, grid) if "day" not in df else _usable_keep_day(df, grid)
    truth = np.empty(len(df))
    for day, idx in df.groupby("day").groups.items():
        t = truth_for_day(world.root, day)
        row, col = grid.rowcol(df.loc[idx, "latitude"].to_numpy(),
                               df.loc[idx, "longitude"].to_numpy())
        truth[df.index.get_indexer(idx)] = t[row, col]
    return df.assign(truth=truth)


def _usable_keep_day(df: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    good = good_soundings(df)
    inside = grid.contains(good["latitude"].to_numpy(), good["longitude"].to_numpy())
    return good.loc[inside].reset_index(drop=True)


# ---- layout ----------------------------------------------------------------------------------


def test_layout_and_manifest(world, grid):
    root = world.root
    assert (root / "world.json").is_file()
    loaded = DemoWorld.load(root)
    assert loaded.gosat_bias == world.gosat_bias
    assert loaded.seed == SEED and loaded.start == START and loaded.end == END

    era5 = sorted(p.name for p in (root / "remote" / "era5").iterdir())
    assert era5 == [f"era5_single_levels_{d:%Y%m%d}.nc"
                    for d in _days() + [END + timedelta(days=1)]]
    for source, fmt in (("oco2", "oco2_lite"), ("oco3", "oco3_lite"), ("gosat", "gosat_c3s")):
        files = sorted((root / "remote" / source).iterdir())
        assert len(files) == len(_days()), source
        assert {day_of_granule(f) for f in files} == set(_days())
        assert detect_format(files[0]) == fmt
    assert detect_format(root / "remote" / "era5" / era5[0]) == "era5"

    for day in _days():
        with rasterio.open(root / "truth" / f"xco2_truth_{day:%Y%m%d}.tif") as src:
            assert src.crs.to_epsg() == 4326
            assert src.dtypes[0] == "float32"
            assert src.compression.name.lower() == "deflate"
            assert (src.height, src.width) == grid.shape
            assert src.transform.almost_equals(grid.transform)


def test_static_rasters_resolution_extent_and_types(world, grid):
    static = world.root / "remote" / "static"
    margin = 0.5 - 1e-9

    def check_extent(src):
        b = src.bounds
        assert b.left <= TINY.west - margin and b.right >= TINY.east + margin
        assert b.bottom <= TINY.south - margin and b.top >= TINY.north + margin
        assert src.crs.to_epsg() == 4326

    with rasterio.open(static / "elevation.tif") as src:
        check_extent(src)
        assert src.dtypes[0] == "float32" and src.res[0] < grid.step
        z = src.read(1)
        assert 300 < z.min() and z.max() < 6000
    with rasterio.open(static / "population.tif") as src:
        check_extent(src)
        assert src.dtypes[0] == "float32"
        assert src.res[0] == pytest.approx(2.5 / 60) and src.res[0] > grid.step
        assert src.read(1).max() > 5000  # Chengdu's northern districts are in the box
    with rasterio.open(static / "landcover.tif") as src:
        check_extent(src)
        assert src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.res[0] == pytest.approx(0.0025)
        classes = set(np.unique(src.read(1)))
        assert classes <= set(range(1, 8)) and {1, 5} <= classes
    ndvi = sorted((static / "ndvi").iterdir())
    assert [p.name for p in ndvi] == ["ndvi_2020145.tif"]  # 1-5 June lie in 145..160
    with rasterio.open(ndvi[0]) as src:
        check_extent(src)
        assert src.dtypes[0] == "int16" and src.res[0] < grid.step
        assert src.scales[0] == pytest.approx(1e-4)
        values = src.read(1) * 1e-4
        assert -0.2 <= values.min() and values.max() <= 0.95 and values.mean() > 0.3


def test_progress_is_reported(world):
    steps = {step for step, _, _ in world.progress_calls}
    assert {"static covariates", "era5", "days"} <= steps
    last = [c for c in world.progress_calls if c[0] == "days"][-1]
    assert last == ("days", len(_days()), len(_days()))


# ---- determinism -----------------------------------------------------------------------------


def test_same_seed_same_world(world, tmp_path):
    again = write_demo_world(tmp_path, TINY, START, END, seed=SEED, dense=True)
    for day in _days():
        name = f"xco2_truth_{day:%Y%m%d}.tif"
        assert (tmp_path / "truth" / name).read_bytes() == (world.root / "truth" /
                                                           name).read_bytes()
    for source in ("oco2", "oco3", "gosat"):
        assert again.files[source] == world.files[source]
        pd.testing.assert_frame_equal(_soundings(again, source), _soundings(world, source))
    assert again.gosat_bias == world.gosat_bias


def test_other_seed_other_world(world, tmp_path):
    other = write_demo_world(tmp_path, TINY, START, START, seed=SEED + 1, dense=True)
    assert not np.array_equal(truth_for_day(other.root, START), truth_for_day(world.root, START))


def test_a_cells_truth_does_not_depend_on_the_region(tmp_path):
    step = 0.05
    a = Region(name="a", west=104.0, south=30.5, east=104.5, north=31.0)
    b = Region(name="b", west=104.25, south=30.25, east=104.75, north=30.75)
    write_demo_world(tmp_path / "a", a, START, START, grid_step=step)
    write_demo_world(tmp_path / "b", b, START, START, grid_step=step)
    ta, tb = truth_for_day(tmp_path / "a", START), truth_for_day(tmp_path / "b", START)
    # Overlap: 104.25-104.5 E, 30.5-30.75 N; a's rows 5.. and cols 5..; b's rows 0.. cols 0..
    np.testing.assert_allclose(ta[5:10, 5:10], tb[0:5, 0:5], atol=1e-3)


def test_noise_on_grids_equals_noise_at_points():
    lats = np.linspace(31.0, 30.0, 37)
    lons = np.linspace(103.0, 104.0, 41)
    g = value_noise_grid(lats, lons, 0.13, key=99)
    la, lo = np.meshgrid(lats, lons, indexing="ij")
    np.testing.assert_allclose(g, value_noise_points(la, lo, 0.13, key=99), atol=1e-6)
    fractal = Sampler.on_grid(lats, lons).fractal(1.0, 0.05, 0.6, key=5)
    assert np.isfinite(fractal).all() and fractal.std() > 0.01


def test_a_hashed_value_is_the_same_at_one_point_and_in_an_array():
    # Scalar coordinates give a 0-d array (its annotation's type) and hash_uniform_scalar the same
    # value as a float: the demo world's draws of a day (a snapshot map's site, a pass's place).
    day = np.arange(737000, 737010)
    in_array = hash_uniform(12345, day, 3)
    at_points = [hash_uniform_scalar(12345, int(d), 3) for d in day]
    assert isinstance(hash_uniform(12345, 737004, 3), np.ndarray)
    assert all(type(v) is float for v in at_points)
    assert at_points == in_array.tolist()
    assert float(hash_uniform(12345, 737004, 3)) == at_points[4]
    assert ((in_array >= 0) & (in_array < 1)).all() and len(set(at_points)) == len(day)


# ---- sampling --------------------------------------------------------------------------------


def test_every_day_has_all_three_sources_in_the_region(world, grid):
    for source in ("oco2", "oco3", "gosat"):
        df = _soundings(world, source)
        usable = _usable_keep_day(df, grid)
        assert set(usable["day"]) == set(_days()), source
        # Files also hold soundings outside the region (real granules are global).
        outside = ~grid.contains(df["latitude"].to_numpy(), df["longitude"].to_numpy())
        assert outside.any(), source


def test_footprint_geometry_is_plausible(world, grid):
    oco2 = _soundings(world, "oco2")
    assert set(oco2["footprint"]) == set(range(1, 9))
    lat = oco2[[f"vertex_latitude_{i}" for i in range(4)]].to_numpy()
    lon = oco2[[f"vertex_longitude_{i}" for i in range(4)]].to_numpy()
    coslat = np.cos(np.radians(oco2["latitude"].to_numpy()))[:, None]
    y, x = lat * 110.57, lon * 111.32 * coslat
    area = 0.5 * np.abs((x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]) + (x[:, 1] * y[:, 2] - x[:, 2] *
                        y[:, 1]) + (x[:, 2] * y[:, 3] - x[:, 3] * y[:, 2]) + (x[:, 3] * y[:, 0]
                        - x[:, 0] * y[:, 3]))
    np.testing.assert_allclose(area, 1.29 * 2.25, rtol=0.02)
    gosat = _soundings(world, "gosat")
    assert (gosat["footprint_diameter_km"] == 10.5).all()
    assert gosat[[f"vertex_latitude_{i}" for i in range(4)]].isna().all().all()
    oco3 = _soundings(world, "oco3")
    import netCDF4
    with netCDF4.Dataset(world.path(world.files["oco3"][0])) as ds:
        assert 4 in set(ds["Sounding"]["operation_mode"][:])  # snapshot area maps
    assert len(oco3) > len(oco2) / 4


def test_bad_soundings_are_present_and_filtered(world):
    df = pd.concat([_soundings(world, s) for s in ("oco2", "oco3", "gosat")])
    flagged = df[df["quality_flag"] == 1]
    assert len(flagged) > 0.05 * len(df)
    assert flagged["xco2"].isna().any()  # fill value -999999 read as NaN
    assert ((flagged["xco2"] == 0) | (flagged["xco2"] > 9000)).any()
    good = good_soundings(df)
    assert good["xco2"].between(395, 430).all()
    assert (good["quality_flag"] == 0).all()


def test_reported_uncertainties_and_noise_are_plausible(world, grid):
    for source, (lo, hi), noise in (("oco2", (0.5, 1.2), (0.6, 1.2)),
                                    ("oco3", (0.5, 1.2), (0.6, 1.2))):
        df = _with_truth(world, _soundings(world, source), grid)
        assert df["xco2_uncertainty"].between(lo, hi).all()
        residual = df["xco2"] - df["truth"]
        assert abs(residual.mean()) < 0.15, source
        assert noise[0] < residual.std() < noise[1], source
    gosat = _soundings(world, "gosat")
    assert good_soundings(gosat)["xco2_uncertainty"].between(1.5, 2.5).all()


def test_gosat_bias_is_recoverable_by_a_linear_fit(world, grid):
    df = _with_truth(world, _soundings(world, "gosat"), grid)
    c0, c1 = world.gosat_bias["c0"], world.gosat_bias["c1"]
    assert len(df) > 60
    design = np.column_stack([np.ones(len(df)), df["truth"] - df["truth"].mean()])
    coef, *_ = np.linalg.lstsq(design, df["xco2"], rcond=None)
    residual = df["xco2"] - design @ coef
    sigma = residual.std(ddof=2)
    cov = sigma ** 2 * np.linalg.inv(design.T @ design)
    level_se, slope_se = np.sqrt(np.diag(cov))
    mean_truth = df["truth"].mean()
    assert abs(coef[1] - c1) < 4 * slope_se
    assert abs(coef[0] - (c0 + c1 * mean_truth)) < 4 * level_se
    # The bias is real: GOSAT differs from the truth by more than its standard error.
    bias_at_mean = c0 + (c1 - 1) * mean_truth
    assert abs(bias_at_mean) > 0.3
    assert 1.5 < sigma < 2.7


# ---- truth and ERA5 --------------------------------------------------------------------------


def test_truth_is_plausible(world, grid):
    maps = np.stack([truth_for_day(world.root, d) for d in _days()])
    assert maps.shape == (len(_days()),) + grid.shape
    assert np.isfinite(maps).all()
    assert 395 < maps.min() and maps.max() < 425
    assert maps.std(axis=(1, 2)).min() > 0.1  # spatial structure every day
    assert np.abs(np.diff(maps.mean(axis=(1, 2)))).max() > 0.01  # and day-to-day change
    # Chengdu's northern districts (104.07E 30.67N) read higher than the box's quieter north.
    row, col = grid.rowcol(np.array([30.67, 30.98]), np.array([104.07, 104.45]))
    assert (maps[:, row[0], col[0]] > maps[:, row[1], col[1]]).all()


def test_era5_of_the_world_gives_daily_covariates(world):
    hourly = read_era5([world.path(p) for p in world.files["era5"]])
    assert hourly.sizes["time"] == 24 * (len(_days()) + 1)
    assert set(hourly["expver"].values) <= {"0001", "0005"}
    lat, lon = hourly["latitude"].values, hourly["longitude"].values
    assert lat.min() <= TINY.south - 0.5 and lat.max() >= TINY.north + 0.5
    assert lon.min() <= TINY.west - 0.5 and lon.max() >= TINY.east + 0.5
    daily = era5_daily(hourly, _days())
    ranges = {"evaporation_mm": (0, 10), "precipitation_mm": (0, 200),
              "surface_pressure_hpa": (550, 1050), "relative_humidity_pct": (20, 100),
              "sunshine_duration_h": (0, 14.5), "temperature_c": (-15, 40),
              "wind_speed_ms": (0, 20)}
    for name, (lo, hi) in ranges.items():
        values = daily[name].values
        assert np.isfinite(values).all(), name
        assert lo <= values.min() and values.max() <= hi, name
