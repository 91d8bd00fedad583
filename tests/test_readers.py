"""Readers of the real formats, checked against files written by the demo-world writers."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import date, datetime

import netCDF4
import numpy as np
import pandas as pd
import pytest

from demo_world.fixtures import tiny_era5_hourly, tiny_soundings
from demo_world.writers import (
    write_era5_new_cds,
    write_era5_old_cds,
    write_era5_zip,
    write_gosat_c3s,
    write_oco_lite,
)
from tasks.io.quarantine import InputFileError
from tasks.readers import (
    MissingEra5Steps,
    day_of_granule,
    detect_format,
    era5_daily,
    inspect_file,
    read_era5,
    read_soundings,
)
from tasks.readers.era5 import relative_humidity_pct
from tasks.gridding.soundings import COLUMNS, good_soundings

DAY = date(2020, 6, 1)
N_GOOD = 40

LITE_ROOT_VARIABLES = {
    "sounding_id", "date", "latitude", "longitude", "time", "solar_zenith_angle",
    "sensor_zenith_angle", "xco2_quality_flag", "xco2_qf_bitflag", "xco2_qf_simple_bitflag",
    "source_files", "file_index", "vertex_latitude", "vertex_longitude", "xco2",
    "xco2_uncertainty", "xco2_apriori", "pressure_levels", "co2_profile_apriori",
    "xco2_averaging_kernel", "pressure_weight",
}


# The soundings table's columns as every reader returns them (tasks/readers/soundings_table.py).
SOUNDINGS_DTYPES = {**{c: "float64" for c in COLUMNS}, "time": "datetime64[ns, UTC]", "quality_flag": "int8",
                    "footprint": "int16", "source": "object"}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["time", "footprint"]).reset_index(drop=True)


# ---- OCO Lite --------------------------------------------------------------------------------


@pytest.mark.parametrize("mission", ["oco2", "oco3"])
def test_oco_lite_round_trip_keeps_every_sounding(tmp_path, mission):
    written = tiny_soundings(mission, DAY, n=N_GOOD)
    path = write_oco_lite(tmp_path, written, mission=mission)

    assert path.name.startswith(f"{mission}_LtCO2_200601_")
    assert path.suffix == ".nc4"
    assert detect_format(path) == f"{mission}_lite"
    assert day_of_granule(path) == DAY

    df = read_soundings(path)
    assert list(df.columns) == COLUMNS
    assert df.dtypes.astype(str).to_dict() == SOUNDINGS_DTYPES
    assert len(df) == len(written)  # good and bad alike
    assert set(df["source"]) == {mission}
    got, want = _sorted(df), _sorted(written)
    np.testing.assert_allclose(got["latitude"], want["latitude"], atol=1e-5)
    np.testing.assert_allclose(got["longitude"], want["longitude"], atol=1e-5)
    np.testing.assert_allclose(got["vertex_latitude_2"], want["vertex_latitude_2"], atol=1e-5)
    np.testing.assert_array_equal(got["footprint"], want["footprint"])
    assert (got["time"] - want["time"]).abs().max() < pd.Timedelta(milliseconds=1)
    # Fill (-999999) comes back as NaN, other values as written (float32 in the file).
    np.testing.assert_allclose(got["xco2"], want["xco2"], rtol=1e-6, equal_nan=True)
    assert got["footprint_diameter_km"].isna().all()


@pytest.mark.parametrize("mission", ["oco2", "oco3"])
def test_good_soundings_drops_flagged_and_absurd_values(tmp_path, mission):
    path = write_oco_lite(tmp_path, tiny_soundings(mission, DAY, n=N_GOOD), mission=mission)
    df = read_soundings(path)
    assert (df["quality_flag"] == 1).sum() == 6
    assert df["xco2"].isna().sum() == 1  # the fill value
    assert {0.0, 9999.0} <= set(df["xco2"].round(3))
    good = good_soundings(df)
    assert len(good) == N_GOOD
    assert good["xco2"].between(400, 425).all()


def test_lite_file_has_the_real_layout(tmp_path):
    written = tiny_soundings("oco3", DAY, n=16)
    path = write_oco_lite(tmp_path, written, mission="oco3")
    with netCDF4.Dataset(path) as ds:
        assert LITE_ROOT_VARIABLES <= set(ds.variables)
        assert ds.dimensions["levels"].size == 20
        assert ds.dimensions["vertices"].size == 4
        assert ds.dimensions["epoch_dimension"].size == 7
        assert {"Sounding", "Retrieval", "Meteorology", "Preprocessors"} <= set(ds.groups)
        assert {"operation_mode", "land_fraction", "footprint", "orbit", "target_id",
                "target_name"} <= set(ds["Sounding"].variables)
        assert ds["xco2"].getncattr("_FillValue") == np.float32(-999999)
        assert ds["time"].units.startswith("seconds since 1970-01-01")
        ids = ds["sounding_id"][:]
        times = pd.to_datetime(ds["time"][:], unit="s", utc=True)
        footprints = ds["Sounding"]["footprint"][:]
        raw_xco2 = ds["xco2"][:].data
    assert ids.dtype == np.int64
    first = times[0]
    expected = int(f"{first:%Y%m%d%H%M%S}{first.microsecond // 100000}{footprints[0]}")
    assert ids[0] == expected
    assert (raw_xco2 == -999999).sum() == 1


def test_lite_time_units_are_honoured(tmp_path):
    path = write_oco_lite(tmp_path, tiny_soundings("oco2", DAY, n=8), mission="oco2")
    expected = read_soundings(path)["time"]
    shift = (datetime(1980, 1, 6) - datetime(1970, 1, 1)).total_seconds()
    with netCDF4.Dataset(path, "a") as ds:
        ds["time"][:] = ds["time"][:] - shift
        ds["time"].units = "seconds since 1980-01-06 00:00:00"
    pd.testing.assert_series_equal(read_soundings(path)["time"], expected)


def test_lite_without_a_telling_name_is_recognised_by_content(tmp_path):
    path = write_oco_lite(tmp_path, tiny_soundings("oco3", DAY, n=8), mission="oco3")
    renamed = path.with_name("granule.nc4")
    path.rename(renamed)
    assert detect_format(renamed) == "oco3_lite"
    assert set(read_soundings(renamed)["source"]) == {"oco3"}


# ---- GOSAT C3S -------------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["ppm", "1e-9", "mol/mol", "1"])
def test_gosat_reads_ppm_whatever_the_units_attribute(tmp_path, units):
    written = tiny_soundings("gosat", DAY, n=N_GOOD)
    path = write_gosat_c3s(tmp_path, written, xco2_units=units)
    assert path.name == "20200601-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc"
    assert detect_format(path) == "gosat_c3s"
    with netCDF4.Dataset(path) as ds:
        assert ds["xco2"].units == units
        assert "sounding_dim" in ds.dimensions
    df = read_soundings(path)
    assert set(df["source"]) == {"gosat"}
    assert (df["footprint_diameter_km"] == 10.5).all()
    assert (df["footprint"] == 0).all()
    got, want = _sorted(df), written.sort_values("time").reset_index(drop=True)
    good = want["quality_flag"] == 0
    np.testing.assert_allclose(got.loc[good, "xco2"], want.loc[good, "xco2"], rtol=1e-6)
    np.testing.assert_allclose(got.loc[good, "xco2_uncertainty"],
                               want.loc[good, "xco2_uncertainty"], rtol=1e-6)
    assert len(good_soundings(df)) == N_GOOD


def test_gosat_with_an_impossible_magnitude_is_refused(tmp_path):
    ppb = tiny_soundings("gosat", DAY, n=10)
    ppb["xco2"] = ppb["xco2"] * 1000.0  # ~4e5: neither ppm nor mol/mol
    path = write_gosat_c3s(tmp_path, ppb, xco2_units="ppb")
    with pytest.raises(InputFileError) as err:
        read_soundings(path)
    assert path.name in str(err.value)
    assert "median" in str(err.value) and "4" in str(err.value)


# ---- ERA5 ------------------------------------------------------------------------------------


@pytest.fixture()
def hourly():
    return tiny_era5_hourly(DAY, n_days=2)


def test_era5_layouts_read_the_same(tmp_path, hourly):
    zipped = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc", hourly)
    single = write_era5_new_cds(tmp_path / "new.nc", hourly)
    old = write_era5_old_cds(tmp_path / "old.nc", hourly)
    old_mixed = write_era5_old_cds(
        tmp_path / "old_mixed.nc",
        hourly.assign_coords(expver=("time", ["0001"] * 30 + ["0005"] * 19)),
        expver_dimension=True)

    assert zipfile.is_zipfile(zipped)  # a ZIP despite the .nc suffix
    with zipfile.ZipFile(zipped) as zf:
        assert sorted(zf.namelist()) == ["data_stream-oper_stepType-accum.nc",
                                         "data_stream-oper_stepType-instant.nc"]
    with netCDF4.Dataset(single) as ds:
        assert ds["valid_time"].dtype == np.int64
        assert ds["latitude"][0] > ds["latitude"][-1]  # stored decreasing
        assert "GRIB_paramId" in ds["t2m"].ncattrs()
    with netCDF4.Dataset(old) as ds:
        assert ds["time"].units.startswith("hours since 1900-01-01")
        assert ds["sp"].dtype == np.int16

    reference = hourly.sortby("latitude")
    for path in (zipped, single, old, old_mixed):
        assert detect_format(path) == "era5"
        ds = read_era5(path)
        assert ds["t2m"].dims == ("time", "latitude", "longitude")
        assert (np.diff(ds["latitude"].values) > 0).all()
        assert set(ds.data_vars) == set(hourly.data_vars)
        np.testing.assert_array_equal(ds["time"].values, reference["time"].values)
        packed = path in (old, old_mixed)
        for name in hourly.data_vars:
            span = float(reference[name].max() - reference[name].min())
            tol = span / 60000 if packed else 0.0
            np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=0,
                                       atol=tol + 1e-7, err_msg=f"{path.name}: {name}")
    assert set(read_era5(zipped)["expver"].values) == {"0001"}
    mixed = read_era5(old_mixed)["expver"].values
    assert list(mixed[:30]) == ["0001"] * 30 and list(mixed[30:]) == ["0005"] * 19


def test_era5_daily_values_are_hand_computed_sums(tmp_path, hourly):
    path = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc", hourly)
    ds = read_era5(path)
    daily = era5_daily(ds, [DAY, date(2020, 6, 2)])
    assert daily["precipitation_mm"].dims == ("day", "latitude", "longitude")
    assert daily.sizes["day"] == 2

    h = hourly.sortby("latitude")
    accum = h.sel(time=slice("2020-06-01T01:00", "2020-06-02T00:00"))  # 01 UTC d .. 00 UTC d+1
    inst = h.sel(time=slice("2020-06-01T00:00", "2020-06-01T23:00"))
    assert accum.sizes["time"] == inst.sizes["time"] == 24
    d0 = daily.isel(day=0)
    np.testing.assert_allclose(d0["precipitation_mm"], accum["tp"].sum("time") * 1000, rtol=1e-5)
    np.testing.assert_allclose(d0["evaporation_mm"], -accum["e"].sum("time") * 1000, rtol=1e-5)
    assert (d0["evaporation_mm"] > 0).all()  # negative e is evaporation
    np.testing.assert_allclose(d0["sunshine_duration_h"], accum["sund"].sum("time") / 3600,
                               rtol=1e-5)
    np.testing.assert_allclose(d0["surface_pressure_hpa"], inst["sp"].mean("time") / 100,
                               rtol=1e-6)
    np.testing.assert_allclose(d0["temperature_c"], inst["t2m"].mean("time") - 273.15,
                               rtol=1e-5)
    speed = np.hypot(inst["u10"].astype(float), inst["v10"].astype(float)).mean("time")
    np.testing.assert_allclose(d0["wind_speed_ms"], speed, rtol=1e-5)
    t, td = 25.0, 15.0  # Magnus: RH = 100 exp(a Td/(b+Td) - a T/(b+T))
    by_hand = 100 * np.exp(17.625 * td / (243.04 + td) - 17.625 * t / (243.04 + t))
    assert relative_humidity_pct(t + 273.15, td + 273.15) == pytest.approx(by_hand)
    assert float(d0["relative_humidity_pct"].max()) <= 100.0


def test_era5_daily_needs_the_next_days_00_step(tmp_path):
    hourly = tiny_era5_hourly(DAY, n_days=1, extra_step=False)
    ds = read_era5(write_era5_zip(tmp_path / "era5_single_levels_20200601.nc", hourly))
    with pytest.raises(MissingEra5Steps, match="2020-06-02T00:00"):
        era5_daily(ds, [DAY])


def test_era5_days_join_across_files(tmp_path):
    two_days = tiny_era5_hourly(DAY, n_days=2, extra_step=False)
    first = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc",
                           two_days.isel(time=slice(0, 24)))
    second = write_era5_zip(tmp_path / "era5_single_levels_20200602.nc",
                            two_days.isel(time=slice(24, 48)))
    ds = read_era5([second, first])
    assert ds.sizes["time"] == 48
    assert pd.DatetimeIndex(ds["time"].values).is_monotonic_increasing
    daily = era5_daily(ds, [DAY])  # the second file closes day 1's accumulations
    assert np.isfinite(daily["precipitation_mm"]).all()


# ---- broken files ----------------------------------------------------------------------------


def _lite_file(tmp_path):
    return write_oco_lite(tmp_path, tiny_soundings("oco2", DAY, n=16), mission="oco2")


def _broken_files(tmp_path):
    text = tmp_path / "oco2_LtCO2_200601_B11100Ar_200709041757s.nc4.html"
    text.write_text("<html><body>502 Bad Gateway</body></html>")
    lite = _lite_file(tmp_path / "ok")
    truncated = tmp_path / "truncated.nc4"
    truncated.write_bytes(lite.read_bytes()[: lite.stat().st_size // 2])
    foreign = tmp_path / "foreign.nc"
    with netCDF4.Dataset(foreign, "w") as ds:
        ds.createDimension("x", 3)
        ds.createVariable("temperature", "f4", ("x",))[:] = [1, 2, 3]
    empty = tmp_path / "empty.nc"
    empty.write_bytes(b"")
    era5 = write_era5_zip(tmp_path / "era5.nc", tiny_era5_hourly(DAY, n_days=1))
    bad_zip = tmp_path / "bad_zip.nc"
    bad_zip.write_bytes(era5.read_bytes()[:200])
    not_era5_zip = tmp_path / "gosat.zip"
    with zipfile.ZipFile(not_era5_zip, "w") as zf:
        zf.write(write_gosat_c3s(tmp_path, tiny_soundings("gosat", DAY, n=4)), "gosat.nc")
    return {"text": text, "truncated": truncated, "foreign": foreign, "empty": empty,
            "bad_zip": bad_zip, "not_era5_zip": not_era5_zip,
            "missing": tmp_path / "missing.nc4"}


@pytest.mark.parametrize("kind", ["text", "truncated", "foreign", "empty", "bad_zip",
                                  "not_era5_zip", "missing"])
def test_broken_files_raise_input_file_error_naming_the_file(tmp_path, kind):
    path = _broken_files(tmp_path)[kind]
    for call in (detect_format, read_soundings, inspect_file):
        with pytest.raises(InputFileError) as err:
            call(path)
        assert err.value.path == path
        assert path.name in str(err.value)
        assert err.value.problem


def test_era5_file_is_not_a_soundings_granule(tmp_path):
    path = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc",
                          tiny_era5_hourly(DAY, n_days=1))
    with pytest.raises(InputFileError, match="not a soundings granule"):
        read_soundings(path)
    lite = _lite_file(tmp_path)
    with pytest.raises(InputFileError, match="expected an ERA5 file"):
        read_era5(lite)


# ---- inspect and names -----------------------------------------------------------------------


def test_inspect_describes_a_whole_soundings_file(tmp_path):
    written = tiny_soundings("oco2", DAY, n=N_GOOD)
    path = write_oco_lite(tmp_path, written, mission="oco2")
    info = inspect_file(path)
    json.dumps(info)  # JSON-able as is
    assert info["format"] == "oco2_lite"
    assert info["file"] == path.name
    assert info["soundings"] == len(written)
    assert info["good"] == N_GOOD
    assert info["time_start"] == pd.Timestamp(written["time"].min()).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert pd.Timestamp(info["time_end"]) >= pd.Timestamp(info["time_start"])
    good = written[written["quality_flag"] == 0]["xco2"]
    assert info["xco2_mean"] == pytest.approx(good.mean(), abs=1e-3)
    assert info["xco2_min"] == pytest.approx(good.min(), abs=1e-3)
    assert info["xco2_max"] == pytest.approx(good.max(), abs=1e-3)
    assert info["xco2_units_detected"] == "ppm"
    assert info["day_from_name"] == "2020-06-01"


def test_inspect_reports_detected_mole_fraction_units(tmp_path):
    path = write_gosat_c3s(tmp_path, tiny_soundings("gosat", DAY, n=12), xco2_units="mol/mol")
    info = inspect_file(path)
    assert info["format"] == "gosat_c3s"
    assert info["xco2_units_attribute"] == "mol/mol"
    assert info["xco2_units_detected"] == "mol/mol"
    assert 400 < info["xco2_mean"] < 425


def test_inspect_describes_an_era5_file(tmp_path):
    path = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc",
                          tiny_era5_hourly(DAY, n_days=1, expver="0005"))
    info = inspect_file(path)
    json.dumps(info)
    assert info["format"] == "era5"
    assert info["soundings"] == 0 and info["good"] == 0
    assert info["xco2_mean"] is None and info["xco2_min"] is None and info["xco2_max"] is None
    assert set(info["variables"]) == {"e", "tp", "sp", "t2m", "d2m", "u10", "v10", "sund"}
    assert info["time_start"] == "2020-06-01T00:00:00.000Z"
    assert info["time_end"] == "2020-06-02T00:00:00.000Z"
    assert info["expver"] == ["0005"]
    assert info["grid"]["latitude_step"] == 0.25
    assert info["container"] == "zip"


@pytest.mark.parametrize("name, day", [
    ("oco2_LtCO2_200601_B11100Ar_200709041757s.nc4", date(2020, 6, 1)),
    ("oco3_LtCO2_191231_B10400Br_200201120000s.nc4", date(2019, 12, 31)),
    ("20200715-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc", date(2020, 7, 15)),
    ("era5_single_levels_20200721.nc", date(2020, 7, 21)),
])
def test_day_of_granule_from_real_names(name, day):
    assert day_of_granule(f"/some/dir/{name}") == day


def test_day_of_granule_refuses_other_names():
    with pytest.raises(InputFileError, match="does not carry a day"):
        day_of_granule("notes.txt")


def test_copies_keep_their_format(tmp_path):
    # A file moved into an archive keeps being recognised (content, not location).
    path = write_gosat_c3s(tmp_path, tiny_soundings("gosat", DAY, n=4))
    copy = tmp_path / "archive" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert detect_format(copy) == "gosat_c3s"


def test_new_and_old_cds_files_read_together(tmp_path):
    from datetime import date as _date

    from demo_world.fixtures import tiny_era5_hourly
    from demo_world.writers import write_era5_old_cds, write_era5_zip
    from tasks.readers import read_era5

    hourly = tiny_era5_hourly(_date(2020, 6, 1), n_days=2, extra_step=False)
    first = hourly.isel(time=slice(0, 24))
    second = hourly.isel(time=slice(24, 48))
    a = write_era5_zip(tmp_path / "era5_single_levels_20200601.nc", first)
    b = write_era5_old_cds(tmp_path / "era5_single_levels_20200602.nc", second)
    both = read_era5([a, b])
    assert both.sizes["time"] == 48
    assert list(both["expver"].values[:24]) == list(read_era5(a)["expver"].values)
