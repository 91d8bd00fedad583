from datetime import date

import numpy as np
import pytest
import rasterio
from affine import Affine

from tasks.covariates.static import (
    CovariateError, StaticCovariates, area_weighted, build_covariates, class_fractions,
    neighbourhood_mean, window_cells,
)
from tasks.covariates.features import (FEATURE_NAMES, FEATURES, METEO_NAMES, NDVI_NAMES, STATIC_NAMES, DayLayers,
                                      feature_table_markdown)
from tasks.gridding.geometry import Grid
from tasks.covariates.meteorology import MeteorologyError, _bilinear_weights, regrid_bilinear

GRID = Grid(west=104.0, south=30.0, east=104.2, north=30.1, step=0.01)


def _tif(path, data, west, north, res, nodata=None, crs="EPSG:4326"):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=Affine(res, 0, west, 0, -res, north),
                       nodata=nodata) as dst:
        dst.write(data, 1)
    return path


def test_finer_source_is_averaged_by_area(tmp_path):
    fine = np.arange(40 * 20, dtype=np.float32).reshape(20, 40)  # 0.005 deg: 2 x 2 per cell
    out = area_weighted(_tif(tmp_path / "e.tif", fine, 104.0, 30.1, 0.005), GRID)
    expected = fine.reshape(10, 2, 20, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_coarser_source_gives_each_cell_its_pixel(tmp_path):
    coarse = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)  # 0.1 deg pixels
    out = area_weighted(_tif(tmp_path / "p.tif", coarse, 104.0, 30.1, 0.1), GRID)
    assert out.shape == GRID.shape
    assert np.all(out[:, :10] == pytest.approx(1.0)) and np.all(out[:, 10:] == pytest.approx(2.0))


def test_nodata_and_missing_file(tmp_path):
    data = np.full((10, 20), -9999, dtype=np.float32)
    data[:, :10] = 5
    out = area_weighted(_tif(tmp_path / "n.tif", data, 104.0, 30.1, 0.01, nodata=-9999), GRID)
    assert np.all(out[:, :10] == 5) and np.all(np.isnan(out[:, 10:]))
    with pytest.raises(CovariateError, match="missing"):
        area_weighted(tmp_path / "absent.tif", GRID)


def test_class_fractions_sum_to_one(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(1, 8, size=(40, 80)).astype(np.uint8)  # 0.0025 deg: 4 x 4 per cell
    frac = class_fractions(_tif(tmp_path / "lc.tif", labels, 104.0, 30.1, 0.0025, nodata=0), GRID, 7)
    np.testing.assert_allclose(frac.sum(axis=0), 1.0, atol=1e-5)
    block = labels[:4, :4]
    assert frac[2, 0, 0] == pytest.approx((block == 3).mean())


def test_neighbourhood_mean_ignores_missing_cells():
    a = np.ones((9, 9), dtype=np.float32)
    a[4, 4] = np.nan
    a[0, 0] = 10
    m = neighbourhood_mean(a, 3)
    assert m[4, 4] == pytest.approx(1.0)
    assert m[0, 0] == pytest.approx((10 + 3) / 4)  # the corner window holds 4 cells inside the grid
    assert window_cells(25, 0.01) == 23 and window_cells(5, 0.01) == 5


def test_feature_table_is_complete_and_unique():
    assert len(FEATURES) == 46 == len(set(FEATURE_NAMES))
    assert len(STATIC_NAMES) + len(NDVI_NAMES) + len(METEO_NAMES) + 5 == 46
    md = feature_table_markdown()
    assert md.count("\n") == 47 and "`precipitation_mm`" in md


def test_day_layers_put_features_in_table_order():
    ny, nx = GRID.shape
    static = np.stack([np.full((ny, nx), i, np.float32) for i in range(len(STATIC_NAMES))])
    ndvi = np.stack([np.full((ny, nx), 100 + i, np.float32) for i in range(len(NDVI_NAMES))])
    meteo = np.stack([np.full((ny, nx), 200 + i, np.float32) for i in range(len(METEO_NAMES))])
    layers = DayLayers(date(2020, 7, 1), static, ndvi, meteo, GRID.lats, GRID.lons)
    x = layers.for_cells(np.array([0, 9]), np.array([0, 19]))
    names = list(FEATURE_NAMES)
    assert x.shape == (2, 46)
    assert x[0, names.index("elevation_m")] == 0 and x[0, names.index("ndvi")] == 100
    assert x[0, names.index("evaporation_mm")] == 200
    assert x[1, names.index("latitude")] == pytest.approx(30.005)
    assert x[1, names.index("longitude")] == pytest.approx(104.195)
    assert x[0, names.index("years_since_2015")] == pytest.approx((date(2020, 7, 1) - date(2015, 1, 1)).days / 365.25)
    np.testing.assert_array_equal(layers.for_rows(0, 2), layers.for_cells(np.repeat([0, 1], nx), np.tile(np.arange(nx), 2)))


def test_bilinear_regridding_is_exact_on_a_plane():
    import xarray as xr

    lat = np.array([30.5, 30.25, 30.0, 29.75])  # ERA5 stores latitude decreasing
    lon = np.array([103.75, 104.0, 104.25, 104.5])
    field = 2.0 * lat[:, None] + 3.0 * lon[None, :]
    ds = xr.Dataset({n: (("latitude", "longitude"), field) for n in METEO_NAMES},
                    coords={"latitude": lat, "longitude": lon})
    out = regrid_bilinear(ds, GRID)
    expected = 2.0 * GRID.lats[:, None] + 3.0 * GRID.lons[None, :]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    with pytest.raises(MeteorologyError, match="does not cover"):
        _bilinear_weights(np.array([0.0, 1.0]), np.array([0.5, 2.0]))


def test_build_covariates_once_then_reuse(tmp_path):
    rng = np.random.default_rng(0)
    static = tmp_path / "static"
    (static / "ndvi").mkdir(parents=True)
    west, north = 102.0, 32.0  # generous margin around GRID for the 150 km windows
    _tif(static / "elevation.tif", rng.uniform(300, 3000, (1000, 1000)).astype(np.float32), west, north, 0.005)
    _tif(static / "population.tif", rng.uniform(0, 500, (50, 50)).astype(np.float32), west, north, 0.1)
    _tif(static / "landcover.tif", rng.integers(1, 8, (400, 400)).astype(np.uint8), west, north, 0.0125, nodata=0)
    for doy in ("001", "017"):
        _tif(static / "ndvi" / f"ndvi_2020{doy}.tif", rng.integers(1000, 8000, (100, 100)).astype(np.int16),
             west, north, 0.05)
    region_dir = tmp_path / "region"
    meta = build_covariates(static, GRID, region_dir)
    assert meta["static_names"] == list(STATIC_NAMES) and len(meta["ndvi"]) == 2
    stamp = (region_dir / "covariates" / "static.npy").stat().st_mtime_ns
    build_covariates(static, GRID, region_dir)
    assert (region_dir / "covariates" / "static.npy").stat().st_mtime_ns == stamp  # not rebuilt
    cov = StaticCovariates(region_dir)
    assert cov.static.shape == (len(STATIC_NAMES),) + GRID.shape and np.isfinite(cov.static).all()
    first, second = cov.ndvi_for_day(date(2020, 1, 9)), cov.ndvi_for_day(date(2020, 1, 25))
    middle = cov.ndvi_for_day(date(2020, 1, 17))
    np.testing.assert_allclose(middle, 0.5 * (first + second), rtol=1e-5)
    assert 0.1 <= float(first[0].mean()) <= 0.8  # MOD13Q1 scaling applied


def test_a_reimported_layer_is_gridded_again(tmp_path):
    import os

    test_build_covariates_once_then_reuse(tmp_path)
    elevation = tmp_path / "static" / "elevation.tif"
    os.utime(elevation, ns=(elevation.stat().st_atime_ns, elevation.stat().st_mtime_ns + 10**9))
    cube = tmp_path / "region" / "covariates" / "static.npy"
    before = cube.stat().st_mtime_ns
    build_covariates(tmp_path / "static", GRID, tmp_path / "region")
    assert cube.stat().st_mtime_ns != before
