"""Issue 10, cases 4 and 12: bad meteorology is quarantined, only the days it feeds wait.

Before: an ERA5 file with NaN fields failed the whole daily run (`SampleStoreError: ... missing
values in ['relative_humidity_pct', 'temperature_c']`) and the later days were not processed;
one with `t2m = 1e20` was used silently and moved the map's mean by 2.4 ppm. Now the reader
refuses both, naming the file, the variable, the count and the value; the daily run quarantines
the file, the days it feeds wait (said so in the run's rows and summary), every other day is
sampled, and the next run pulls the file again.

Issue 20: sound ERA5 cut to another box is not damage: it is left in place and Era5CoverageError
names it, its extent and the region's box.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.demo import SMALL_REGION
from demo_world import write_demo_world
from demo_world.fixtures import tiny_era5_hourly
from demo_world.writers import write_era5_new_cds, write_era5_old_cds, write_era5_zip
from tasks.covariates.meteorology import Era5CoverageError, era5_readiness, meteo_for_day
from tasks.covariates.static import CovariateError
from tasks.gridding.geometry import Grid
from tasks.io.quarantine import InputFileError
from tasks.readers import inspect_file
from tasks.readers.era5 import read_era5_file

DAY = date(2020, 6, 1)
START, END = date(2020, 6, 1), date(2020, 6, 3)


def _era5(tmp_path: Path, writer=write_era5_new_cds, day: date = DAY, **changes) -> Path:
    """A one-day ERA5 file in a real layout, with `changes` = {variable: (index, value)}."""
    hourly = tiny_era5_hourly(day, n_days=1)
    for name, (index, value) in changes.items():
        values = hourly[name].values.copy()
        values[index] = value
        hourly[name] = (hourly[name].dims, values)
    return writer(tmp_path / f"era5_single_levels_{day:%Y%m%d}.nc", hourly)


def test_healthy_era5_in_every_layout_passes(tmp_path):
    for i, writer in enumerate((write_era5_new_cds, write_era5_zip, write_era5_old_cds)):
        folder = tmp_path / str(i)
        folder.mkdir()
        assert set(read_era5_file(_era5(folder, writer)).data_vars) == {"e", "tp", "sp", "t2m", "d2m", "u10", "v10",
                                                                       "sund"}


@pytest.mark.parametrize("writer", [write_era5_new_cds, write_era5_zip], ids=["netcdf", "zip"])
def test_nan_fields_are_refused_naming_file_variable_and_count(tmp_path, writer):
    path = _era5(tmp_path, writer, t2m=((slice(5, 8), slice(None), slice(None)), np.nan))
    n_cells = tiny_era5_hourly(DAY, n_days=1)["t2m"][0].size
    with pytest.raises(InputFileError) as err:
        read_era5_file(path)
    assert err.value.path == path and path.name in str(err.value)
    assert f"t2m: {3 * n_cells} NaN/inf" in err.value.problem
    # Relative humidity, made from t2m, is not blamed: only what the file holds is named.
    assert "d2m" not in err.value.problem


@pytest.mark.parametrize("variable, value", [
    ("t2m", 1e20), ("t2m", 0.0), ("d2m", 1000.0), ("sp", 0.0), ("sp", 5e5), ("u10", 500.0), ("v10", -300.0),
    ("tp", -1.0), ("tp", 3.0), ("e", 1.0), ("sund", 7200.0),
])
def test_values_outside_their_plausible_range_are_refused(tmp_path, variable, value):
    path = _era5(tmp_path, **{variable: ((3, 1, 2), value)})
    with pytest.raises(InputFileError) as err:
        read_era5_file(path)
    assert f"{variable}: 1 outside" in err.value.problem
    assert f"(e.g. {value:.6g})" in err.value.problem


def test_inspect_names_implausible_meteorology(tmp_path, capsys):
    from flows.cli import main

    path = _era5(tmp_path, t2m=((0, 0, 0), 1e20))
    with pytest.raises(InputFileError, match="t2m: 1 outside"):
        inspect_file(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert path.name in err and "t2m" in err and "1e+20" in err


def test_readiness_quarantines_the_bad_file_and_only_its_days_wait(tmp_path):
    era5_dir, quarantine_dir = tmp_path / "era5", tmp_path / "quarantine"
    era5_dir.mkdir()
    for offset in range(3):  # files of June 1, 2 and 3: days 1 and 2 have both of theirs
        _era5(era5_dir, day=date(2020, 6, 1 + offset))
    bad = _era5(era5_dir, day=date(2020, 6, 2), t2m=((0, 0, 0), np.nan))

    first = era5_readiness(era5_dir, date(2020, 6, 1), quarantine_dir)
    assert not first.ready and first.missing == [bad.name]
    assert "t2m: 1 NaN/inf" in first.why and not bad.exists()
    [entry] = first.quarantined
    note = json.loads(Path(entry["quarantined_as"] + ".json").read_text())
    assert note["file"] == bad.name and "t2m: 1 NaN/inf" in note["reason"]
    second = era5_readiness(era5_dir, date(2020, 6, 2), quarantine_dir)
    assert not second.ready and "not in the raw cache" in second.why and "t2m" in second.why
    # Without a quarantine folder (backfill, past-window) a bad file only makes the day wait.
    _era5(era5_dir, day=date(2020, 6, 4), sp=((0, 0, 0), -5.0))
    third = era5_readiness(era5_dir, date(2020, 6, 3))
    assert not third.ready and "sp: 1 outside" in third.why and (era5_dir / "era5_single_levels_20200604.nc").exists()


@pytest.mark.parametrize("bbox, extent, share", [
    ((80.0, 40.0, 81.0, 41.0), "80..81 E, 40..41 N", "none"),  # another region altogether
    ((103.5, 30.0, 104.0, 31.0), "103.5..104 E, 30..31 N", "only 50%"),  # the region's eastern part missing
], ids=["elsewhere", "west-part"])
def test_era5_of_another_area_is_named_and_left_in_place(tmp_path, bbox, extent, share):
    """Issue 20: sound ERA5 made for another box is not damaged (a copy pulled again would be the
    same): it is named with both extents, never quarantined, and every try says the same."""
    era5_dir, quarantine_dir = tmp_path / "era5", tmp_path / "quarantine"
    era5_dir.mkdir()
    files = [write_era5_new_cds(era5_dir / f"era5_single_levels_{day:%Y%m%d}.nc",
                                tiny_era5_hourly(day, n_days=1, bbox=bbox))
             for day in (DAY, DAY + timedelta(days=1))]
    grid = Grid(west=103.7, south=30.2, east=104.3, north=30.7, step=0.01)

    for attempt in range(2):
        # The daily run's readiness check reads the files: sound, so nothing is set aside.
        ready = era5_readiness(era5_dir, DAY, quarantine_dir)
        assert ready.ready and ready.quarantined == [], attempt
        with pytest.raises(Era5CoverageError) as err:
            meteo_for_day(era5_dir, DAY, grid)
        message = str(err.value)
        assert message.startswith(f"{files[0]}: its ERA5 grid (and that of {files[1].name}) covers {extent}, "
                                  f"{share} of the region's box 103.7..104.3 E, 30.2..30.7 N: it was made for "
                                  "another area and is left where it is (not quarantined). Pull ERA5 for this "
                                  "region's box"), attempt
        # The daily run and `xco2 daily` end on it as they do on a bad static layer.
        assert isinstance(err.value, CovariateError) and not isinstance(err.value, InputFileError)
        assert all(f.exists() for f in files) and not quarantine_dir.exists()


# ---- through the daily flow, local mode ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs-world") / "world"
    write_demo_world(root, SMALL_REGION, START, END, grid_step=0.01, seed=5, dense=True)
    return root / "remote"


def _damage(path: Path, variable: str, index, value) -> None:
    """Rewrite a demo ERA5 file (a CDS ZIP) with one variable damaged at `index`."""
    hourly = read_era5_file(path)
    values = hourly[variable].values.copy()
    values[index] = value
    hourly[variable] = (hourly[variable].dims, values)
    write_era5_zip(path, hourly)


def _manifest_statuses(data_dir: Path, name: str) -> list[str]:
    df = pd.read_parquet(data_dir / "raw" / "manifest.parquet")
    return df.loc[df["local_file"].map(lambda f: Path(f).name) == name, "status"].tolist()


def test_bad_era5_days_wait_while_the_rest_of_the_window_is_sampled(prefect_harness, tracking_uri, world,
                                                                    tmp_path):
    from flows.daily import daily_update

    source, data_dir = tmp_path / "source", tmp_path / "xco2-data"
    shutil.copytree(world, source)
    hot_file = source / "era5" / "era5_single_levels_20200601.nc"  # feeds June 1
    nan_file = source / "era5" / "era5_single_levels_20200602.nc"  # feeds June 1 and 2
    _damage(nan_file, "t2m", (slice(0, 24), slice(None), slice(None)), np.nan)
    _damage(hot_file, "t2m", (0, 1, 1), 1e20)
    overrides = {"data_dir": str(data_dir), "source": "local", "local_dir": str(source),
                 "region": SMALL_REGION.model_dump(), "mlflow_tracking_uri": tracking_uri,
                 "registered_model_name": "inputs-meteorology-no-model", "archive_lookback_days": 1}

    result = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)

    rows = {r["day"]: r for r in result["days"]}
    assert sorted(rows) == ["2020-06-01", "2020-06-02", "2020-06-03"]
    # The report's failure: a day after the bad one was never reached. Now it is sampled.
    assert rows["2020-06-03"]["era5"] == "yes" and rows["2020-06-03"]["samples"] > 100
    for day in ("2020-06-01", "2020-06-02"):
        assert rows[day]["era5"] == "waiting" and rows[day]["samples"] == 0
        assert nan_file.name in rows[day]["era5_problem"] and "t2m" in rows[day]["era5_problem"]
    assert hot_file.name in rows["2020-06-01"]["era5_problem"] and "1e+20" in rows["2020-06-01"]["era5_problem"]
    assert "NaN" in rows["2020-06-02"]["era5_problem"]
    quarantined = {q["file"]: q for q in result["quarantined"]}
    assert set(quarantined) == {nan_file.name, hot_file.name}
    assert "NaN" in quarantined[nan_file.name]["problem"] and "1e+20" in quarantined[hot_file.name]["problem"]
    for name in (nan_file.name, hot_file.name):
        assert not (data_dir / "raw" / "era5" / SMALL_REGION.name / name).exists()
        assert list((data_dir / "quarantine").glob(f"*_{name}.json"))
        assert _manifest_statuses(data_dir, name) == ["quarantined"]

    # The archive delivers good copies: the next run pulls them again and the waiting days go on.
    shutil.copy2(world / "era5" / nan_file.name, nan_file)
    shutil.copy2(world / "era5" / hot_file.name, hot_file)
    again = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)
    rows = {r["day"]: r for r in again["days"]}
    assert sorted(rows) == ["2020-06-01", "2020-06-02"]
    assert all(r["era5"] == "yes" and r["samples"] > 100 for r in rows.values())
    assert again["quarantined"] == []
    # A new delivery is a new remote id: its row is 'ok', the quarantined one stays as history.
    assert sorted(_manifest_statuses(data_dir, nan_file.name)) == ["ok", "quarantined"]


def test_era5_of_another_area_fails_the_daily_run_and_stays_in_place(prefect_harness, tracking_uri, world, tmp_path):
    """Issue 20: ERA5 cut to another box ends the daily run Failed naming it, not quarantined; the
    next run does not pull it again and says the same."""
    from flows.daily import daily_update

    source, data_dir = tmp_path / "source", tmp_path / "xco2-data"
    shutil.copytree(world, source)
    for path in sorted((source / "era5").glob("era5_single_levels_*.nc")):
        hourly = read_era5_file(path)
        write_era5_zip(path, hourly.assign_coords(longitude=hourly["longitude"].values - 5.0))
    overrides = {"data_dir": str(data_dir), "source": "local", "local_dir": str(source),
                 "region": SMALL_REGION.model_dump(), "mlflow_tracking_uri": tracking_uri,
                 "registered_model_name": "inputs-meteorology-no-model", "archive_lookback_days": 1}
    era5_dir = data_dir / "raw" / "era5" / SMALL_REGION.name

    for attempt in range(2):
        state = daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides, return_state=True)
        assert state.is_failed(), attempt
        with pytest.raises(Era5CoverageError) as err:
            state.result()
        assert str(err.value).startswith(f"{era5_dir / 'era5_single_levels_20200601.nc'}: its ERA5 grid"), attempt
        assert "none of the region's box 105.7..106.2 E, 30.2..30.7 N" in str(err.value)
        assert not list((data_dir / "quarantine").glob("*"))
        for path in (source / "era5").glob("*.nc"):
            assert (era5_dir / path.name).exists() and _manifest_statuses(data_dir, path.name) == ["ok"]
