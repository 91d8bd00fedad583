"""Static layers: `import_layer` (any CRS/resolution -> EPSG:4326 layers) and `build_static_layers`
from the archives, with only the earthaccess/cdsapi calls faked; the fakes write files in the
real formats (NASADEM zipped SRTM .hgt, GPW GeoTIFF in a zip, CCI land cover NetCDF in a zip)."""

from __future__ import annotations

import json
import zipfile
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from tasks.settings import load_settings
from tasks.sources.static_layers import (
    Clients,
    StaticLayerError,
    build_static_layers,
    has_hdf4,
    import_layer,
    read_layers_json,
    static_dir,
)
from tasks.sources.static_layers import clients as clients_module
from tasks.sources.static_layers.common import sha256_of

WEST, SOUTH, EAST, NORTH = 100.6, 30.6, 101.4, 31.4  # region; + 0.5 degree margin = 100.1..101.9, 30.1..31.9


def elevation_at(lon, lat):
    return 1000.0 + 500.0 * (np.asarray(lat) - 30.0) + 100.0 * (np.asarray(lon) - 100.0)


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.netrc or ~/.cdsapirc
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("CDSAPI_RC", raising=False)
    monkeypatch.setenv("EARTHDATA_USERNAME", "tester")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "not-a-real-password")
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    monkeypatch.setenv("CDSAPI_URL", "https://cds.example.invalid/api")
    monkeypatch.setenv("CDSAPI_KEY", "not-a-real-key")
    monkeypatch.setattr(clients_module, "SLEEP", lambda s: None)  # retries without waiting
    return load_settings(data_dir=tmp_path / "data",
                         region={"name": "testbox", "west": WEST, "south": SOUTH, "east": EAST, "north": NORTH})


def from_origin(west: float, north: float, xsize: float, ysize: float) -> Affine:
    return Affine(xsize, 0.0, west, 0.0, -ysize, north)


def write_raster(path: Path, data: np.ndarray, crs, transform, nodata=None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype, "crs": crs, "transform": transform}
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def projected_raster(path: Path, crs: str, pixel_m: float, fn, dtype, box=(100.0, 30.0, 102.0, 32.0),
                     nodata=None) -> Path:
    """A raster in a projected CRS whose pixels hold fn(lon, lat) of their centres."""
    x0, y0, x1, y1 = transform_bounds("EPSG:4326", crs, *box, densify_pts=21)
    width, height = int((x1 - x0) / pixel_m), int((y1 - y0) / pixel_m)
    transform = from_origin(x0, y1, pixel_m, pixel_m)
    xs, ys = np.meshgrid(x0 + (np.arange(width) + 0.5) * pixel_m, y1 - (np.arange(height) + 0.5) * pixel_m)
    lons, lats = warp_points(crs, "EPSG:4326", xs.ravel(), ys.ravel())
    data = fn(np.asarray(lons), np.asarray(lats)).reshape(height, width).astype(dtype)
    return write_raster(path, data, crs, transform, nodata)


def geographic_raster(path: Path, step: float, fn, dtype, box=(100.0, 30.0, 102.0, 32.0), nodata=None) -> Path:
    west, south, east, north = box
    width, height = int(round((east - west) / step)), int(round((north - south) / step))
    lons = west + (np.arange(width) + 0.5) * step
    lats = north - (np.arange(height) + 0.5) * step
    lon, lat = np.meshgrid(lons, lats)
    return write_raster(path, fn(lon, lat).astype(dtype), "EPSG:4326", from_origin(west, north, step, step), nodata)


def sample(path: Path, lon: float, lat: float):
    with rasterio.open(path) as src:
        row, col = src.index(lon, lat)
        return src.read(1)[row, col]


# ---------------------------------------------------------------- import_layer

def test_import_elevation_from_web_mercator_500m(settings, tmp_path):
    src = projected_raster(tmp_path / "dem_3857.tif", "EPSG:3857", 500.0, elevation_at, np.float32)
    out = import_layer(settings, "elevation", src)

    assert out == static_dir(settings) / "elevation.tif"
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326
        assert ds.dtypes[0] == "float32" and ds.nodata == -32768
        step = ds.transform.a
        assert 0.003 < step < 0.006  # about the source's 500 m, not resampled to something else
        b = ds.bounds  # region + 0.5 degree margin, cropped out of the larger source
        assert b.left <= WEST - 0.5 + step and b.right >= EAST + 0.5 - step
        assert b.bottom <= SOUTH - 0.5 + step and b.top >= NORTH + 0.5 - step
        assert b.left > 100.0 and b.right < 102.0
        data = ds.read(1)
    assert (data != -32768).mean() > 0.99
    for lon, lat in [(100.7, 30.7), (101.0, 31.0), (101.35, 31.3), (100.2, 31.8)]:
        assert sample(out, lon, lat) == pytest.approx(elevation_at(lon, lat), abs=6.0)


def test_import_of_a_very_fine_source_is_area_averaged_to_the_pixel_cap(settings, tmp_path, monkeypatch):
    from tasks.sources.static_layers import common

    monkeypatch.setattr(common, "MAX_PIXELS", 40_000)  # as if the source were a 30 m DEM of a province
    src = projected_raster(tmp_path / "dem_fine.tif", "EPSG:3857", 500.0, elevation_at, np.float32)
    out = import_layer(settings, "elevation", src)
    with rasterio.open(out) as ds:
        assert ds.width * ds.height <= 40_000 * 1.05 and ds.transform.a > 0.008
    entry = read_layers_json(static_dir(settings))["elevation.tif"]
    assert entry["resampling"] == "average" and entry["step_deg"] == pytest.approx(ds.transform.a)
    assert sample(out, 101.0, 31.0) == pytest.approx(elevation_at(101.0, 31.0), abs=6.0)


def lccs_field(lon, lat):
    """ESA CCI codes: cropland west, forest east, urban square, water corner, no data strip."""
    codes = np.where(lon < 101.0, 10, 70)
    codes = np.where((np.abs(lon - 100.5) < 0.1) & (np.abs(lat - 30.5) < 0.1), 190, codes)
    codes = np.where((lon > 101.5) & (lat > 31.5), 210, codes)
    codes = np.where(lat < 30.15, 0, codes)
    return codes


def test_import_landcover_utm_maps_esa_cci_codes(settings, tmp_path):
    src = projected_raster(tmp_path / "lc_utm.tif", "EPSG:32647", 300.0, lccs_field, np.uint8, nodata=0)
    out = import_layer(settings, "landcover", src)

    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.dtypes[0] == "uint8" and ds.nodata == 0
        values = set(np.unique(ds.read(1)).tolist())
    assert values <= {0, 1, 2, 5, 6}
    assert sample(out, 100.6, 31.0) == 1  # 10 cropland, rainfed
    assert sample(out, 101.3, 31.0) == 2  # 70 needleleaved evergreen tree cover
    assert sample(out, 100.5, 30.5) == 5  # 190 urban
    assert sample(out, 101.7, 31.7) == 6  # 210 water
    entry = read_layers_json(static_dir(settings))["landcover.tif"]
    assert entry["landcover_input"] == "ESA CCI LCCS codes mapped to 7 classes"
    assert entry["resampling"] == "nearest"


def test_import_landcover_accepts_our_classes_and_rejects_unknown_codes(settings, tmp_path):
    ours = geographic_raster(tmp_path / "ours.tif", 0.005, lambda lon, lat: np.where(lon < 101, 3, 7), np.uint8)
    out = import_layer(settings, "landcover", ours)
    assert sample(out, 100.7, 31.0) == 3 and sample(out, 101.3, 31.0) == 7

    odd = geographic_raster(tmp_path / "odd.tif", 0.005, lambda lon, lat: np.where(lon < 101, 3, 42), np.uint8)
    with pytest.raises(StaticLayerError, match=r"odd\.tif: land cover codes \[42\]"):
        import_layer(settings, "landcover", odd)


def test_import_landcover_from_a_cds_zip_downloaded_by_hand(settings, tmp_path):
    FakeCdsClient().retrieve("satellite-land-cover", {"year": ["2020"], "area": [32.0, 100.0, 30.0, 102.0]},
                             tmp_path / "download.zip")
    out = import_layer(settings, "landcover", tmp_path / "download.zip")
    assert sample(out, 100.6, 31.0) == 1 and sample(out, 101.7, 31.7) == 6
    with rasterio.open(out) as ds:
        assert ds.transform.a == pytest.approx(1 / 360) and ds.bounds.left == pytest.approx(100.1, abs=0.003)

    FakeCdsClient().retrieve("satellite-land-cover", {"year": ["2020"], "area": [51.0, 10.0, 50.0, 11.0]},
                             tmp_path / "europe.zip")
    with pytest.raises(StaticLayerError, match=r"europe\.zip: does not overlap region 'testbox'"):
        import_layer(settings, "landcover", tmp_path / "europe.zip")


def test_import_ndvi_floats_are_scaled_to_mod13q1_int16(settings, tmp_path):
    def ndvi(lon, lat):
        return 0.1 + 0.3 * (lat - 30.0)  # 0.1..0.7

    src = geographic_raster(tmp_path / "ndvi.tif", 0.004, ndvi, np.float32)
    out = import_layer(settings, "ndvi", src, composite_start=date(2020, 1, 17))

    assert out.name == "ndvi_2020017.tif"
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.dtypes[0] == "int16" and ds.nodata == -3000
        assert ds.scales[0] == pytest.approx(1e-4)
    for lon, lat in [(100.7, 30.7), (101.2, 31.3)]:
        assert sample(out, lon, lat) == pytest.approx(ndvi(lon, lat) * 1e4, abs=25)
    assert read_layers_json(static_dir(settings))["ndvi_2020017.tif"]["ndvi_input"] == "floats -1..1, scaled by 1e4"

    # The covariate builder reads it as MOD13Q1 scaling.
    from tasks.covariates.static import build_ndvi_layers
    from tasks.gridding.geometry import Grid

    layers = build_ndvi_layers(out, Grid.for_region(settings.region, 0.01))
    assert np.isfinite(layers).all()
    assert float(layers[0].mean()) == pytest.approx(ndvi(101.0, 31.0), abs=0.02)


def test_import_ndvi_mod13q1_integers_and_its_errors(settings, tmp_path):
    ints = geographic_raster(tmp_path / "mod13q1.tif", 0.0025, lambda lon, lat: np.full(lon.shape, 4321),
                             np.int16, nodata=-3000)
    out = import_layer(settings, "ndvi", ints, composite_start=date(2020, 2, 2))
    assert out.name == "ndvi_2020033.tif" and sample(out, 101.0, 31.0) == 4321

    with pytest.raises(StaticLayerError, match=r"mod13q1\.tif: an NDVI composite needs its start date"):
        import_layer(settings, "ndvi", ints)
    wrong = geographic_raster(tmp_path / "ndvi_pct.tif", 0.005, lambda lon, lat: lon * 0 + 45.5, np.float32)
    with pytest.raises(StaticLayerError, match=r"ndvi_pct\.tif: NDVI values span 45\.5\.\.45\.5; floating-point"):
        import_layer(settings, "ndvi", wrong, composite_start=date(2020, 1, 1))
    undeclared = geographic_raster(tmp_path / "fill.tif", 0.005, lambda lon, lat: np.where(lon < 101, -3001, 5000),
                                   np.int16)
    with pytest.raises(StaticLayerError, match=r"fill\.tif: NDVI values span -3001\.\.5000; MOD13Q1 integers"):
        import_layer(settings, "ndvi", undeclared, composite_start=date(2020, 1, 1))
    byte = geographic_raster(tmp_path / "byte.tif", 0.005, lambda lon, lat: lon * 0 + 200, np.uint8)
    with pytest.raises(StaticLayerError, match=r"byte\.tif: 8-bit NDVI \(uint8\) is not MOD13Q1 scaling"):
        import_layer(settings, "ndvi", byte, composite_start=date(2020, 1, 1))


def test_import_outside_the_region_names_file_and_region(settings, tmp_path):
    far = geographic_raster(tmp_path / "alps.tif", 0.01, elevation_at, np.float32, box=(10.0, 45.0, 11.0, 46.0))
    with pytest.raises(StaticLayerError) as err:
        import_layer(settings, "elevation", far)
    message = str(err.value)
    assert str(far) in message and "does not overlap region 'testbox'" in message
    assert "W 100.6" in message and "lon 10.0000..11.0000" in message
    assert not (static_dir(settings) / "elevation.tif").exists()


def test_import_unreadable_or_unreferenced_files_fail_clearly(settings, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("elevation is high here\n")
    with pytest.raises(StaticLayerError, match=r"notes\.txt: not a raster file GDAL can read"):
        import_layer(settings, "elevation", text)
    with pytest.raises(StaticLayerError, match=r"missing\.tif: no such file"):
        import_layer(settings, "elevation", tmp_path / "missing.tif")

    bare = tmp_path / "no_crs.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
                       transform=from_origin(100, 32, 0.1, 0.1)) as dst:
        dst.write(np.ones((10, 10), np.float32), 1)
    with pytest.raises(StaticLayerError, match=r"no_crs\.tif: has no coordinate reference system"):
        import_layer(settings, "elevation", bare)
    with pytest.raises(StaticLayerError, match="unknown static layer 'slope'"):
        import_layer(settings, "slope", bare)


def test_import_value_ranges_are_checked(settings, tmp_path):
    feet = geographic_raster(tmp_path / "dem_feet.tif", 0.01, lambda lon, lat: elevation_at(lon, lat) * 10,
                             np.float32)
    with pytest.raises(StaticLayerError, match=r"dem_feet\.tif: .* elevation values lie outside -500\.\.9000 m"):
        import_layer(settings, "elevation", feet)
    negative = geographic_raster(tmp_path / "pop.tif", 0.01, lambda lon, lat: lon * 0 - 5.0, np.float32)
    with pytest.raises(StaticLayerError, match=r"pop\.tif: .* population values lie outside 0\.\.1e\+06"):
        import_layer(settings, "population", negative)


def test_layers_json_records_every_import(settings, tmp_path):
    dem = geographic_raster(tmp_path / "dem.tif", 0.005, elevation_at, np.float32)
    pop = geographic_raster(tmp_path / "pop.tif", 1 / 120, lambda lon, lat: lon * 0 + 250.0, np.float32)
    out_dem = import_layer(settings, "elevation", dem)
    with zipfile.ZipFile(tmp_path / "pop.zip", "w") as z:  # as SEDAC delivers it
        z.write(pop, pop.name)
    out_pop = import_layer(settings, "population", tmp_path / "pop.zip")

    data = json.loads((static_dir(settings) / "layers.json").read_text())
    assert set(data) == {"elevation.tif", "population.tif"}
    for out, src in [(out_dem, dem), (out_pop, tmp_path / "pop.zip")]:
        entry = data[out.name]
        assert entry["file"] == out.name and entry["source"] == str(src.resolve())
        assert entry["sha256"] == sha256_of(out) and entry["source_sha256"] == sha256_of(src)
        assert entry["method"] == "import" and entry["crs"] == "EPSG:4326"
        assert datetime.fromisoformat(entry["when"]).tzinfo is not None
    assert data["population.tif"]["region_coverage"] == 1.0
    assert sample(out_pop, 101.0, 31.0) == pytest.approx(250.0)

    import_layer(settings, "elevation", dem)  # re-import replaces the entry, keeps the others
    assert set(read_layers_json(static_dir(settings))) == {"elevation.tif", "population.tif"}


# ---------------------------------------------------------------- fakes of the archives

class HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class FakeGranule:
    def __init__(self, name: str, write) -> None:
        self.name, self.write = name, write

    def data_links(self, access=None, in_region=False):
        return [f"https://data.example.invalid/archive/{self.name}"]


class FakeEarthaccess:
    """earthaccess.login / search_data / download; download writes the real file formats."""

    def __init__(self, collections: dict[str, list[FakeGranule]], failures: dict[str, list] | None = None):
        self.collections = collections
        self.failures = failures or {}  # granule name -> exceptions raised by successive downloads
        self.searches: list[dict] = []
        self.downloaded: list[str] = []
        self.logins: list[str] = []

    def login(self, strategy="all", persist=False):
        self.logins.append(strategy)
        return SimpleNamespace(authenticated=True)

    def search_data(self, count=-1, **query):
        self.searches.append(query)
        return list(self.collections.get(query["short_name"], []))

    def download(self, granules, local_path=None, **kwargs):
        out = []
        for g in granules:
            pending = self.failures.get(g.name)
            if pending:
                raise pending.pop(0)
            path = Path(local_path) / g.name
            g.write(path)
            self.downloaded.append(g.name)
            out.append(str(path))
        return out


def nasadem_tile(lat0: int, lon0: int, n: int = 3601) -> FakeGranule:
    """NASADEM_HGT_nYYeXXX.zip holding nYYeXXX.hgt: big-endian int16, n x n samples, 1 degree."""
    stem = f"n{lat0:02d}e{lon0:03d}"

    def write(path: Path) -> None:
        lats = lat0 + 1 - np.arange(n) / (n - 1)
        lons = lon0 + np.arange(n) / (n - 1)
        lon, lat = np.meshgrid(lons, lats)
        heights = np.round(elevation_at(lon, lat)).astype(">i2")
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr(f"{stem}.hgt", heights.tobytes())

    return FakeGranule(f"NASADEM_HGT_{stem}.zip", write)


def population_at(lon, lat):
    return 100.0 * (np.asarray(lon) - 99.0) + 10.0 * (np.asarray(lat) - 29.0)


def gpw_granule(name: str, year: int = 2020) -> FakeGranule:
    def write(path: Path) -> None:
        tif = path.parent / f"gpw_v4_population_density_rev11_{year}_30_sec.tif"
        geographic_raster(tif, 1 / 120, population_at, np.float32, box=(99.0, 29.0, 103.0, 33.0),
                          nodata=-3.4028230607370965e38)
        with zipfile.ZipFile(path, "w") as z:
            z.write(tif, tif.name)
            z.writestr(f"gpw_v4_population_density_rev11_{year}_30_sec.tif.aux.xml", "<PAMDataset/>")
        tif.unlink()

    return FakeGranule(name, write)


def never(name: str) -> FakeGranule:
    def write(path: Path) -> None:
        raise AssertionError(f"{name} should not have been downloaded")

    return FakeGranule(name, write)


def write_cci_netcdf(path: Path, area: list[float], year: int) -> None:
    """A CCI land cover NetCDF like the CDS's: lccs_class(time, lat, lon) bytes with _Unsigned."""
    import netCDF4

    north, west, south, east = area
    step = 1 / 360
    c0, c1 = int(np.floor((west + 180) / step)), int(np.ceil((east + 180) / step))
    r0, r1 = int(np.floor((90 - north) / step)), int(np.ceil((90 - south) / step))
    lons = -180 + (np.arange(c0, c1) + 0.5) * step
    lats = 90 - (np.arange(r0, r1) + 0.5) * step  # north to south, as in the CCI files
    lon, lat = np.meshgrid(lons, lats)
    codes = lccs_field(lon, lat).astype(np.uint8)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.createDimension("time", 1)
        ds.createDimension("lat", lats.size)
        ds.createDimension("lon", lons.size)
        ds.createVariable("time", "i4", ("time",))[:] = [year * 0]
        v_lat = ds.createVariable("lat", "f8", ("lat",))
        v_lat[:] = lats
        v_lat.units = "degrees_north"
        v_lon = ds.createVariable("lon", "f8", ("lon",))
        v_lon[:] = lons
        v_lon.units = "degrees_east"
        crs = ds.createVariable("crs", "i4")
        crs.wkt = 'GEOGCS["WGS 84"]'
        var = ds.createVariable("lccs_class", "i1", ("time", "lat", "lon"), zlib=True)
        var.set_auto_scale(False)
        var[0] = codes.view(np.int8)
        var.setncattr("_Unsigned", "true")
        var.long_name = "Land cover class defined in LCCS"
        var.flag_values = np.array([0, 10, 70, 190, 210], dtype=np.uint8).view(np.int8)
        ds.createVariable("processed_flag", "i1", ("time", "lat", "lon"))[0] = np.ones_like(codes, np.int8)


class FakeCdsClient:
    instances: list["FakeCdsClient"] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.requests: list[tuple[str, dict]] = []
        FakeCdsClient.instances.append(self)

    def retrieve(self, name, request, target=None):
        self.requests.append((name, request))
        target = Path(target)
        year = int(request["year"][0])
        nc = target.parent / f"C3S-LC-L4-LCCS-Map-300m-P1Y-{year}-v2.1.1.area-subset.nc"
        write_cci_netcdf(nc, request["area"], year)
        with zipfile.ZipFile(target, "w") as z:
            z.write(nc, nc.name)
        nc.unlink()
        return SimpleNamespace(location="https://cds.example.invalid/result")


def fake_archives(extra_failures=None) -> tuple[FakeEarthaccess, SimpleNamespace]:
    ea = FakeEarthaccess({
        "NASADEM_HGT": [nasadem_tile(lat, lon) for lat in (30, 31) for lon in (100, 101)],
        "CIESIN_SEDAC_GPWv4_POPDENS_R11": [
            never("gpw-v4-population-density-rev11_2015_30_sec_tif.zip"),
            never("gpw-v4-population-density-rev11_2020_2pt5_min_tif.zip"),
            gpw_granule("gpw-v4-population-density-rev11_2020_30_sec_tif.zip"),
            never("gpw-v4-population-density-rev11_2020_30_sec_asc.zip"),
        ],
    }, failures=extra_failures)
    FakeCdsClient.instances = []
    return ea, SimpleNamespace(Client=FakeCdsClient)


# ---------------------------------------------------------------- build_static_layers

def test_build_all_layers_from_faked_archives(settings):
    ea, cds = fake_archives()
    report = build_static_layers(settings, 2021, date(2021, 1, 1), date(2021, 1, 31),
                                 clients=Clients(earthaccess=ea, cdsapi=cds))
    folder = static_dir(settings)

    assert report["elevation"]["status"] == "built", report
    assert report["population"]["status"] == "built", report
    assert report["landcover"]["status"] == "built", report

    # Elevation: the NASADEM .hgt tiles read through GDAL's SRTMHGT driver inside their zips.
    search = next(q for q in ea.searches if q["short_name"] == "NASADEM_HGT")
    assert search["version"] == "001" and search["bounding_box"] == pytest.approx((100.1, 30.1, 101.9, 31.9))
    with rasterio.open(folder / "elevation.tif") as ds:
        assert ds.crs.to_epsg() == 4326 and ds.transform.a == pytest.approx(0.0025)
        assert ds.bounds.left == pytest.approx(100.1) and ds.bounds.top == pytest.approx(31.9)
        assert (ds.read(1) != ds.nodata).all()
    for lon, lat in [(100.3, 30.4), (101.0, 31.0), (101.8, 31.8)]:
        assert sample(folder / "elevation.tif", lon, lat) == pytest.approx(elevation_at(lon, lat), abs=2.0)

    # Population: GPW year nearest 2021 is 2020, the 30 arc-second GeoTIFF, cropped to region + margin.
    assert "gpw-v4-population-density-rev11_2020_30_sec_tif.zip" in ea.downloaded
    with rasterio.open(folder / "population.tif") as ds:
        assert ds.transform.a == pytest.approx(1 / 120)
        assert ds.bounds.left == pytest.approx(100.1) and ds.bounds.right == pytest.approx(101.9)
    assert sample(folder / "population.tif", 101.0, 31.0) == pytest.approx(population_at(101.0, 31.0), abs=1.0)

    # Land cover: one CDS request, LCCS bytes (>127 too) mapped to our classes.
    (client,) = FakeCdsClient.instances
    assert client.kwargs["url"] == "https://cds.example.invalid/api" and client.kwargs["key"] == "not-a-real-key"
    ((name, request),) = client.requests
    assert name == "satellite-land-cover"
    assert request == {"variable": "all", "year": ["2021"], "version": ["v2_1_1"],
                       "area": [31.9, 100.1, 30.1, 101.9]}
    lc = folder / "landcover.tif"
    assert sample(lc, 100.6, 31.0) == 1 and sample(lc, 101.3, 31.0) == 2
    assert sample(lc, 100.5, 30.5) == 5 and sample(lc, 101.7, 31.7) == 6 and sample(lc, 101.0, 30.12) == 0

    record = read_layers_json(folder)
    assert record["elevation.tif"]["source"] == "earthaccess:NASADEM_HGT.001"
    assert len(record["elevation.tif"]["tiles"]) == 4
    assert record["landcover.tif"]["year"] == 2021 and record["population.tif"]["year"] == 2020
    assert all(record[f]["sha256"] == sha256_of(folder / f) for f in record)
    assert not list(folder.glob(".download-*"))  # temp downloads removed
    assert ea.logins == ["environment"]  # logged in once for all Earthdata layers

    # The pipeline's covariate builder takes the three layers as they are.
    from tasks.covariates.static import build_static_layers as grid_static_layers
    from tasks.covariates.features import STATIC_NAMES
    from tasks.gridding.geometry import Grid

    grid = Grid.for_region(settings.region, 0.01)
    cube = grid_static_layers(folder, grid)
    assert cube.shape == (len(STATIC_NAMES), grid.ny, grid.nx) and np.isfinite(cube).all()
    elevation = cube[STATIC_NAMES.index("elevation_m")]
    assert float(elevation[grid.ny // 2, grid.nx // 2]) == pytest.approx(elevation_at(101.0, 31.0), abs=10)


# ---------------------------------------------------------------- NDVI from MOD13Q1/MYD13Q1 HDF4 granules

SPHERE_R = 6371007.181  # MODIS sinusoidal sphere
TILE_M = 20015109.354 / 18  # one MODIS tile: 1111950.519667 m
# Near Chengdu; + 0.5 degree margin = 103.1..104.9 E, 30.1..31.9 N: inside v05 (30..40 N), and
# across the h26/h27 edge (x = 10007554.677 m: 103.9 E at 30 N, 106.0 E at 31.9 N), so the
# south-east of the box lies in h27v05 and the rest in h26v05.
CD_WEST, CD_SOUTH, CD_EAST, CD_NORTH = 103.6, 30.6, 104.4, 31.4
LAKE = (104.2, 31.2, 104.4, 31.4)  # fill -3000 in the Terra composite


def terra_ndvi(lon, lat):
    return 0.2 + 0.2 * (np.asarray(lon) - 103.0)  # 0.22..0.58 over the box


def aqua_ndvi(lon, lat):
    return 0.3 + 0.2 * (np.asarray(lat) - 30.0)  # 0.32..0.68


def in_lake(lon, lat, pad=0.0):
    w, s, e, n = LAKE
    return (lon > w - pad) & (lon < e + pad) & (lat > s - pad) & (lat < n + pad)


@pytest.fixture
def chengdu(settings, tmp_path):
    return load_settings(data_dir=tmp_path / "data", region={
        "name": "chengdu", "west": CD_WEST, "south": CD_SOUTH, "east": CD_EAST, "north": CD_NORTH})


def modis_struct_metadata(h: int, v: int, n: int) -> str:
    """StructMetadata.0 of a MOD13Q1 granule (HDF-EOS2 ODL), as in the real files."""
    ul_x, ul_y = -20015109.354 + h * TILE_M, 10007554.677 - v * TILE_M
    fields = "".join(
        f'\t\t\tOBJECT=DataField_{i}\n\t\t\t\tDataFieldName="{name}"\n\t\t\t\tDataType=DFNT_INT16\n'
        f'\t\t\t\tDimList=("YDim","XDim")\n\t\t\t\tCompressionType=HDFE_COMP_DEFLATE\n'
        f'\t\t\t\tDeflateLevel=8\n\t\t\tEND_OBJECT=DataField_{i}\n'
        for i, name in enumerate(["250m 16 days NDVI", "250m 16 days EVI"], 1))
    return (
        "GROUP=SwathStructure\nEND_GROUP=SwathStructure\nGROUP=GridStructure\n\tGROUP=GRID_1\n"
        '\t\tGridName="MODIS_Grid_16DAY_250m_500m_VI"\n'
        f"\t\tXDim={n}\n\t\tYDim={n}\n"
        f"\t\tUpperLeftPointMtrs=({ul_x:.6f},{ul_y:.6f})\n"
        f"\t\tLowerRightMtrs=({ul_x + TILE_M:.6f},{ul_y - TILE_M:.6f})\n"
        "\t\tProjection=GCTP_SNSOID\n\t\tProjParams=(6371007.181000,0,0,0,0,0,0,0,0,0,0,0,0)\n"
        "\t\tSphereCode=-1\n\t\tGridOrigin=HDFE_GD_UL\n\t\tGROUP=Dimension\n\t\tEND_GROUP=Dimension\n"
        f"\t\tGROUP=DataField\n{fields}\t\tEND_GROUP=DataField\n\t\tGROUP=MergedFields\n"
        "\t\tEND_GROUP=MergedFields\n\tEND_GROUP=GRID_1\nEND_GROUP=GridStructure\n"
        "GROUP=PointStructure\nEND_GROUP=PointStructure\nEND\n\x00")


def write_vi_granule(path: Path, h: int, v: int, fn, n: int = 480, lake: bool = False,
                     patch: tuple[slice, slice] | None = None) -> None:
    """A MOD13Q1/MYD13Q1-like HDF4 file (pyhdf SD): NDVI and EVI SDSs with the real attributes.

    NDVI holds round(fn(lon, lat) * 1e4) at each pixel centre (inverse sinusoidal on the MODIS
    sphere, computed here without PROJ), -3000 off the globe and in the lake. `n` x `n` pixels
    (4800 in the real files); with `patch`, only those pixels get values, the rest is fill.
    """
    from pyhdf.SD import SD, SDC

    ul_x, ul_y = -20015109.354 + h * TILE_M, 10007554.677 - v * TILE_M
    pixel = TILE_M / n
    rows, cols = patch if patch else (slice(0, n), slice(0, n))
    ys = ul_y - (np.arange(n)[rows] + 0.5) * pixel
    xs = ul_x + (np.arange(n)[cols] + 0.5) * pixel
    lat = np.degrees(ys / SPHERE_R)[:, None]
    lon = np.degrees(xs[None, :] / (SPHERE_R * np.cos(np.radians(lat))))
    ndvi = np.round(fn(lon, lat) * 1e4)
    ndvi = np.where(np.abs(lon) > 180, -3000, ndvi)
    if lake:
        ndvi = np.where(in_lake(lon, lat), -3000, ndvi)
    full = np.full((n, n), -3000, dtype=np.int16)
    full[rows, cols] = ndvi.astype(np.int16)

    hdf = SD(str(path), SDC.WRITE | SDC.CREATE)
    hdf.attr("HDFEOSVersion").set(SDC.CHAR, "HDFEOS_V2.19")
    hdf.attr("StructMetadata.0").set(SDC.CHAR, modis_struct_metadata(h, v, n))
    for name, values in [("250m 16 days NDVI", full), ("250m 16 days EVI", np.where(full == -3000, -3000,
                                                                                      full // 2 + 1234))]:
        sds = hdf.create(name, SDC.INT16, (n, n))
        sds.dim(0).setname("YDim:MODIS_Grid_16DAY_250m_500m_VI")
        sds.dim(1).setname("XDim:MODIS_Grid_16DAY_250m_500m_VI")
        sds.setcompress(SDC.COMP_DEFLATE, value=1)
        sds.long_name = name
        sds.units = name.split()[-1]
        sds.setrange(-2000, 10000)
        sds.setfillvalue(-3000)
        sds.setcal(10000.0, 0.0, 0.0, 0.0, SDC.FLOAT32)  # scale_factor 10000: NDVI = value / 10000
        sds[:] = values.astype(np.int16)
        sds.endaccess()
    hdf.end()


def vi_granule(product: str, start: str, h: int, v: int, fn, production: str = "2021020000000",
               lake: bool = False) -> FakeGranule:
    def write(path: Path) -> None:
        write_vi_granule(path, h, v, fn, lake=lake)

    return FakeGranule(f"{product}.A{start}.h{h:02d}v{v:02d}.061.{production}.hdf", write)


def corrupt_granule(name: str) -> FakeGranule:
    def write(path: Path) -> None:
        path.write_bytes(b"\x0e\x03\x13\x01" + b"<html>503 Service Unavailable</html>" * 50)

    return FakeGranule(name, write)


def ndvi_archive(aqua_h27: FakeGranule | None = None, terra: bool = True) -> FakeEarthaccess:
    """Terra 2021-001 and Aqua 2021-009 composites, tiles h26v05 + h27v05 each (and decoys)."""
    terra_tiles = [
        vi_granule("MOD13Q1", "2021001", 26, 5, terra_ndvi, lake=True),
        vi_granule("MOD13Q1", "2021001", 27, 5, terra_ndvi, lake=True),
        never("MOD13Q1.A2021001.h27v05.061.2021017000000.hdf"),  # an older production of the same tile
        never("MOD13Q1.A2021017.h26v05.061.2021034000000.hdf"),  # a composite outside the window
    ] if terra else [never(f"MOD13Q1.A2021001.h{h}v05.061.2021020000000.hdf") for h in (26, 27)]
    return FakeEarthaccess({
        "MOD13Q1": terra_tiles,
        "MYD13Q1": [
            vi_granule("MYD13Q1", "2021009", 26, 5, aqua_ndvi),
            aqua_h27 or vi_granule("MYD13Q1", "2021009", 27, 5, aqua_ndvi),
            never("MYD13Q1.A2021009.h26v05.060.2021026000000.hdf"),  # another collection version
        ],
    })


def centres(ds) -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(ds.width), np.arange(ds.height))
    xs, ys = ds.transform @ (cols + 0.5, rows + 0.5)
    return np.asarray(xs), np.asarray(ys)


def test_ndvi_built_from_mod13q1_and_myd13q1_hdf4_granules(chengdu):
    ea = ndvi_archive()
    report = build_static_layers(chengdu, 2021, date(2021, 1, 1), date(2021, 1, 16),
                                 clients=Clients(earthaccess=ea), layers=("ndvi",))
    status = report["ndvi"]
    assert status["status"] == "built", status
    assert status["files"] == ["ndvi_2021001.tif", "ndvi_2021009.tif"]  # Terra, then Aqua 8 days later

    assert [q["short_name"] for q in ea.searches] == ["MOD13Q1", "MYD13Q1"]
    for q in ea.searches:
        assert q["version"] == "061" and q["temporal"] == ("2021-01-01", "2021-01-16")
        assert q["bounding_box"] == pytest.approx((103.1, 30.1, 104.9, 31.9))
    assert sorted(ea.downloaded) == [
        "MOD13Q1.A2021001.h26v05.061.2021020000000.hdf", "MOD13Q1.A2021001.h27v05.061.2021020000000.hdf",
        "MYD13Q1.A2021009.h26v05.061.2021020000000.hdf", "MYD13Q1.A2021009.h27v05.061.2021020000000.hdf"]

    folder = static_dir(chengdu)
    for name, fn, lake in [("ndvi_2021001.tif", terra_ndvi, True), ("ndvi_2021009.tif", aqua_ndvi, False)]:
        with rasterio.open(folder / name) as ds:
            assert ds.crs.to_epsg() == 4326 and ds.dtypes[0] == "int16" and ds.nodata == -3000
            assert ds.scales[0] == pytest.approx(1e-4)
            assert ds.transform.a == pytest.approx(0.0025) and ds.transform.e == pytest.approx(-0.0025)
            assert tuple(ds.bounds) == pytest.approx((103.1, 30.1, 104.9, 31.9))
            data = ds.read(1)
            lon, lat = centres(ds)
        valid = data != -3000
        # Every pixel has data, from both tiles (no seam at the h26/h27 edge), except the lake.
        assert valid[~in_lake(lon, lat, pad=0.03)].all()
        if lake:
            assert not valid[in_lake(lon, lat, pad=-0.03)].any()  # fill -3000 stays no data
        else:
            assert valid.all()
        # The values are the pattern written into the tiles: within one 2.3 km source pixel
        # (0.024 degree of longitude, 0.021 of latitude) of slope 0.2 NDVI per degree. Next to
        # the lake only its far-side neighbours count (fill is no data, not averaged in).
        away = valid & ~in_lake(lon, lat, pad=0.03)
        error = np.abs(data[away] - fn(lon, lat)[away] * 1e4)
        assert error.max() <= 50 and error.mean() <= 15
    assert sample(folder / "ndvi_2021001.tif", 104.8, 30.2) == pytest.approx(terra_ndvi(104.8, 30.2) * 1e4, abs=50)
    assert sample(folder / "ndvi_2021009.tif", 104.8, 30.2) == pytest.approx(aqua_ndvi(104.8, 30.2) * 1e4, abs=50)

    record = read_layers_json(folder)
    terra_entry, aqua_entry = record["ndvi_2021001.tif"], record["ndvi_2021009.tif"]
    assert terra_entry["source"] == "earthaccess:MOD13Q1.061" and aqua_entry["source"] == "earthaccess:MYD13Q1.061"
    assert terra_entry["method"] == "build" and terra_entry["composite_start"] == "2021-01-01"
    assert aqua_entry["composite_start"] == "2021-01-09" and aqua_entry["composite_end"] == "2021-01-24"
    assert terra_entry["tiles"] == ["MOD13Q1.A2021001.h26v05.061.2021020000000.hdf",
                                    "MOD13Q1.A2021001.h27v05.061.2021020000000.hdf"]
    assert aqua_entry["region_coverage"] == 1.0 and terra_entry["region_coverage"] < 1.0
    assert all(record[f]["sha256"] == sha256_of(folder / f) for f in record)
    assert not list(folder.glob(".download-*"))

    # The covariate builder reads them as MOD13Q1 scaling (1e-4) on the 0.01 degree grid.
    from tasks.covariates.static import build_ndvi_layers
    from tasks.gridding.geometry import Grid

    grid = Grid.for_region(chengdu.region, 0.01)
    aqua = build_ndvi_layers(folder / "ndvi_2021009.tif", grid)
    assert aqua.shape[1:] == grid.shape and np.isfinite(aqua).all()
    assert float(aqua[0].mean()) == pytest.approx(aqua_ndvi(104.0, 31.0), abs=0.005)
    terra = build_ndvi_layers(folder / "ndvi_2021001.tif", grid)
    assert np.isfinite(terra).all()  # the lake is filled from its neighbours
    assert float(terra[0][40, 20]) == pytest.approx(terra_ndvi(103.805, 30.995), abs=0.005)

    again = build_static_layers(chengdu, 2021, date(2021, 1, 1), date(2021, 1, 16),
                                clients=Clients(earthaccess=ndvi_archive(terra=False)), layers=("ndvi",))
    assert again["ndvi"]["status"] == "skipped" and again["ndvi"]["files"] == status["files"]


def test_ndvi_corrupt_granule_fails_its_composite_only_and_a_rerun_fetches_just_that(chengdu):
    bad = "MYD13Q1.A2021009.h27v05.061.2021020000000.hdf"
    ea = ndvi_archive(aqua_h27=corrupt_granule(bad))
    report = build_static_layers(chengdu, 2021, date(2021, 1, 1), date(2021, 1, 16),
                                 clients=Clients(earthaccess=ea), layers=("ndvi",))
    status = report["ndvi"]
    assert status["status"] == "failed" and status["files"] == ["ndvi_2021001.tif"]
    message = status["message"]
    assert "1 of 2 NDVI composites failed: MYD13Q1 composite 2021-01-09 (ndvi_2021009.tif)" in message
    assert f"{bad}: not a readable HDF4 file" in message and "Written: ndvi_2021001.tif" in message
    folder = static_dir(chengdu)
    assert (folder / "ndvi_2021001.tif").is_file() and not (folder / "ndvi_2021009.tif").exists()
    assert set(read_layers_json(folder)) == {"ndvi_2021001.tif"}
    assert not list(folder.glob(".download-*"))

    # Terra's composite alone covers 2021-01-01..16, but it was built from the archive: the
    # rerun still fetches the failed Aqua composite, and only that (Terra's granules are `never`).
    ea = ndvi_archive(terra=False)
    report = build_static_layers(chengdu, 2021, date(2021, 1, 1), date(2021, 1, 16),
                                 clients=Clients(earthaccess=ea), layers=("ndvi",))
    assert report["ndvi"]["status"] == "built" and report["ndvi"]["files"] == ["ndvi_2021009.tif"]
    assert [q["short_name"] for q in ea.searches] == ["MYD13Q1"]
    assert all(name.startswith("MYD13Q1.A2021009.") for name in ea.downloaded) and len(ea.downloaded) == 2
    assert sample(folder / "ndvi_2021009.tif", 104.0, 31.0) == pytest.approx(aqua_ndvi(104.0, 31.0) * 1e4, abs=50)


def test_ndvi_reads_the_real_4800_pixel_tile_layout(tmp_path):
    """A full-size tile (4800 x 4800 pixels of 231.656 m) is georeferenced from StructMetadata.0."""
    from tasks.sources.static_layers import ndvi

    path = tmp_path / "MOD13Q1.A2021001.h26v05.061.2021020000000.hdf"
    # Values only around 104.0 E, 31.0 N (row 4320, column 4389.8 of h26v05).
    write_vi_granule(path, 26, 5, terra_ndvi, n=4800, patch=(slice(4300, 4340), slice(4370, 4410)))
    bounds = ndvi.sinusoidal_bounds((103.99, 30.99, 104.01, 31.01))
    part = ndvi.read_ndvi_tile(path, bounds)
    g = part.geometry
    assert g.origin == "StructMetadata.0" and (g.width, g.height) == (4800, 4800)
    assert g.pixel_x == pytest.approx(231.656358263889, abs=1e-6) and g.pixel_y == pytest.approx(g.pixel_x)
    assert (g.ul_x, g.ul_y) == pytest.approx((8895604.157333, 4447802.078667), abs=1e-3)
    assert part.data.shape[0] < 30 and part.data.shape[1] < 30  # only the window was read, not 4800 x 4800
    assert np.isfinite(part.data).all()
    rows, cols = np.indices(part.data.shape)
    xs, ys = part.transform @ (cols.ravel() + 0.5, rows.ravel() + 0.5)
    lons, lats = warp_points(ndvi.SINUSOIDAL, "EPSG:4326", xs, ys)
    # Every pixel read holds the value written for its centre: PROJ's sinusoidal agrees with the writer's.
    np.testing.assert_allclose(part.data.ravel(), np.round(terra_ndvi(lons, lats) * 1e4), atol=0.51)
    # The tile name alone gives the same grid (used when a file has no StructMetadata.0).
    named = ndvi.tile_geometry(None, (4800, 4800), 26, 5, path.name)
    assert named.transform.almost_equals(g.transform, precision=1e-3)
    # The real h08v05 corners (from a MOD13Q1 v061 granule's StructMetadata) match the tile grid.
    real = modis_struct_metadata(8, 5, 4800)
    assert "UpperLeftPointMtrs=(-11119505.196667,4447802.078667)" in real
    assert "LowerRightMtrs=(-10007554.677000,3335851.559000)" in real
    (lon0, lon1), (lat0, lat1) = warp_points(ndvi.SINUSOIDAL, "EPSG:4326", [10007554.677, -11119505.196667],
                                             [3335851.559, 4447802.078667])
    assert (lon0, lat0) == pytest.approx((103.923, 30.0), abs=1e-3)  # south-west corner of h27v05
    assert (lon1, lat1) == pytest.approx((-130.541, 40.0), abs=1e-3)  # north-west corner of h08v05


def test_ndvi_scale_factor_conventions_and_bad_files(tmp_path):
    from tasks.sources.static_layers import ndvi

    raw = np.array([[-3000, -2000, 0], [5000, 10000, 12000]], dtype=np.int16)
    modis = ndvi._to_ndvi_1e4(raw, {"_FillValue": -3000, "valid_range": [-2000, 10000], "scale_factor": 10000.0},
                              "x")
    cf = ndvi._to_ndvi_1e4(raw, {"_FillValue": -3000, "valid_range": [-2000, 10000], "scale_factor": 1e-4}, "x")
    np.testing.assert_array_equal(modis, cf)
    assert np.isnan(modis[0, 0]) and np.isnan(modis[1, 2]) and modis[1, 0] == 5000 and modis[0, 1] == -2000

    odd = tmp_path / "MOD13Q1.A2021001.h26v05.061.2021020000000.hdf"
    from pyhdf.SD import SD, SDC

    hdf = SD(str(odd), SDC.WRITE | SDC.CREATE)
    sds = hdf.create("250m 16 days EVI", SDC.INT16, (48, 48))
    sds[:] = np.zeros((48, 48), np.int16)
    sds.endaccess()
    hdf.end()
    with pytest.raises(StaticLayerError, match=r"h26v05\.061\.2021020000000\.hdf: no readable '250m 16 days NDVI'"):
        ndvi.read_ndvi_tile(odd, (0, 0, 1e7, 1e7))


def test_ndvi_without_pyhdf_says_how_to_import_instead(chengdu, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyhdf", None)  # as if pyhdf were not installed
    assert not has_hdf4()
    ea = ndvi_archive()
    report = build_static_layers(chengdu, 2021, date(2021, 1, 1), date(2021, 1, 31),
                                 clients={"earthaccess": ea}, layers=("ndvi",))
    status = report["ndvi"]
    assert status["status"] == "failed" and status["files"] == []
    message = status["message"]
    assert "pyhdf" in message and "HDF4" in message and "cannot be imported (ModuleNotFoundError" in message
    assert "xco2 covariates import ndvi FILE.tif --start YYYY-MM-DD" in message and "AppEEARS" in message
    assert "No NDVI composite covering 2021-01-01..2021-01-31 is present yet" in message
    assert ea.searches == [] and ea.downloaded == [] and ea.logins == []  # nothing fetched in vain


def test_ndvi_imported_composites_covering_the_range_are_skipped(settings, tmp_path):
    src = geographic_raster(tmp_path / "n.tif", 0.005, lambda lon, lat: lon * 0 + 0.5, np.float32)
    for start in (date(2021, 1, 1), date(2021, 1, 17)):
        import_layer(settings, "ndvi", src, composite_start=start)
    ea, cds = fake_archives()
    report = build_static_layers(settings, 2021, date(2021, 1, 3), date(2021, 2, 1),
                                 clients=Clients(ea, cds), layers=("ndvi",))
    assert report["ndvi"]["status"] == "skipped"
    assert report["ndvi"]["files"] == ["ndvi_2021001.tif", "ndvi_2021017.tif"]
    assert "imported composites already cover" in report["ndvi"]["message"] and ea.searches == []

    # One uncovered day: the archive is asked for the composites not present (none there here).
    report = build_static_layers(settings, 2021, date(2021, 1, 3), date(2021, 2, 2),
                                 clients=Clients(ea, cds), layers=("ndvi",))
    assert report["ndvi"]["status"] == "failed"
    message = report["ndvi"]["message"]
    assert "MOD13Q1/MYD13Q1 061: no granules for the 3 composites of 2021-01-03..2021-02-02" in message
    assert sorted(q["short_name"] for q in ea.searches) == ["MOD13Q1", "MYD13Q1"]


def test_a_failing_layer_does_not_stop_the_others(settings, monkeypatch):
    monkeypatch.delenv("CDSAPI_KEY")  # land cover: no CDS credentials
    ea, cds = fake_archives(extra_failures={"NASADEM_HGT_n30e100.zip": [HTTPError(404)]})  # elevation: 404
    report = build_static_layers(settings, 2021, date(2021, 1, 1), date(2021, 1, 31),
                                 clients=Clients(earthaccess=ea, cdsapi=cds))

    assert report["elevation"]["status"] == "failed"
    assert "downloading 4 NASADEM_HGT tiles" in report["elevation"]["message"]
    assert report["landcover"]["status"] == "failed"
    assert "no Copernicus CDS credentials" in report["landcover"]["message"]
    assert report["population"]["status"] == "built"
    assert (static_dir(settings) / "population.tif").is_file()
    assert not (static_dir(settings) / "elevation.tif").exists()
    assert not (static_dir(settings) / "landcover.tif").exists()
    assert set(read_layers_json(static_dir(settings))) == {"population.tif"}
    assert not list(static_dir(settings).glob(".download-*"))
    assert FakeCdsClient.instances == []


def test_transient_download_failure_is_retried_and_present_layers_are_skipped(settings):
    ea, cds = fake_archives(extra_failures={"NASADEM_HGT_n31e101.zip": [ConnectionError("reset by peer")]})
    clients = Clients(earthaccess=ea, cdsapi=cds)
    layers = ("elevation", "landcover")
    first = build_static_layers(settings, 2015, date(2015, 1, 1), date(2015, 1, 2), clients=clients, layers=layers)
    assert first["elevation"]["status"] == "built"
    assert FakeCdsClient.instances[0].requests[0][1]["version"] == ["v2_0_7cds"]  # 1992-2015 maps

    again = build_static_layers(settings, 2015, date(2015, 1, 1), date(2015, 1, 2), clients=clients, layers=layers)
    assert {k: v["status"] for k, v in again.items()} == {"elevation": "skipped", "landcover": "skipped"}
    assert len(FakeCdsClient.instances) == 1

    forced = build_static_layers(settings, 2030, date(2015, 1, 1), date(2015, 1, 2), clients=clients,
                                 layers=("landcover",), force=True)
    assert forced["landcover"]["status"] == "built"
    assert FakeCdsClient.instances[-1].requests[0][1]["year"] == ["2022"]  # latest map served
    assert "latest map (2022)" in forced["landcover"]["message"]


def test_build_rejects_a_reversed_ndvi_window(settings):
    with pytest.raises(ValueError, match="after"):
        build_static_layers(settings, 2021, date(2021, 2, 1), date(2021, 1, 1), clients=Clients())
