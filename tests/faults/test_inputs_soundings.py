"""Issue 10, case 13 (part): bad soundings are dropped one by one, not their granule; a granule
quarantined at gridding is marked in the manifest and not pulled again.

Before: ten latitudes outside [-90, 90] refused the whole granule (all its good soundings
lost), and a granule quarantined at gridding stayed 'ok' in the manifest, so every run pulled
and quarantined it again. Now each sounding is judged alone (position, time, quality flag,
XCO2, uncertainty: tasks.gridding.plausibility) and the drops are logged per reason; only a granule that
cannot be read is quarantined, and the manifest says so ('rejected', with the reason).
"""

from __future__ import annotations

import logging
from datetime import date

import netCDF4
import numpy as np
import pandas as pd
import pytest

from tasks.samples import ingest
from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.gridding.geometry import Grid
from tasks.io.quarantine import InputFileError
from tasks.readers import read_soundings
from tasks.settings import load_settings
from tasks.gridding.soundings import screen_soundings
from tasks.sources import Manifest, pull

DAY = date(2020, 6, 1)
GRID = Grid(west=103.8, south=30.4, east=104.3, north=30.9, step=0.01)
N_GOOD = 40
N_FLAGGED = 6  # tiny_soundings: 3 flagged plausible + 3 flagged absurd (0, 9999, NaN)


def _grid(tmp_path, **granules):
    files = {"oco2": [], "oco3": [], "gosat": [], **granules}
    return ingest.grid_day(DAY, files, GRID, tmp_path / "region", tmp_path / "quarantine")


def test_ten_bad_latitudes_drop_ten_soundings_not_the_granule(tmp_path, caplog):
    soundings = tiny_soundings("oco2", DAY, n=N_GOOD)
    soundings.loc[:9, "latitude"] = [999.0, -91.0] * 5
    path = write_oco_lite(tmp_path / "in", soundings, mission="oco2", day=DAY)

    assert len(read_soundings(path)) == N_GOOD + N_FLAGGED  # the reader keeps every sounding
    with caplog.at_level(logging.INFO, logger="tasks.gridding.soundings"):
        result = _grid(tmp_path, oco2=[path])
    assert result.quarantined == [] and path.exists()
    assert result.soundings["oco2"] == N_GOOD - 10 and len(result.cells["oco2"]) > 0
    [record] = [r for r in caplog.records if path.name in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"dropped {10 + N_FLAGGED} of {N_GOOD + N_FLAGGED} soundings (latitude 10, quality_flag {N_FLAGGED})" \
        in record.getMessage()


def test_each_implausible_value_drops_its_own_sounding(tmp_path):
    soundings = tiny_soundings("oco2", DAY, n=N_GOOD)
    soundings.loc[0, "longitude"] = 500.0
    soundings.loc[1, "xco2"] = 1e6
    soundings.loc[2, "xco2_uncertainty"] = 0.0
    soundings.loc[3, "xco2_uncertainty"] = 1e3
    soundings.loc[4, "time"] = pd.Timestamp("2019-03-01T06:00", tz="UTC")  # another day's sounding
    path = write_oco_lite(tmp_path / "in", soundings, mission="oco2", day=DAY)
    with netCDF4.Dataset(path, "a") as ds:  # a corrupt time value: 1e15 s is 31 million years
        times = ds["time"][:]
        times[5] = 1e15
        ds["time"][:] = times

    df = read_soundings(path)
    assert len(df) == N_GOOD + N_FLAGGED and df["time"].isna().sum() == 1
    kept, dropped = screen_soundings(df, DAY)
    assert dropped == {"latitude": 0, "longitude": 1, "time": 2, "quality_flag": N_FLAGGED, "xco2": 1,
                       "xco2_uncertainty": 2}
    assert len(kept) == N_GOOD - 6
    assert _grid(tmp_path, oco2=[path]).soundings["oco2"] == N_GOOD - 6


def test_gosat_soundings_are_judged_the_same_way(tmp_path):
    soundings = tiny_soundings("gosat", DAY, n=N_GOOD)
    intact = _grid(tmp_path / "intact", gosat=[write_gosat_c3s(tmp_path / "intact", soundings, day=DAY)])
    soundings.loc[:2, "latitude"] = np.nan  # the first three lie in the region
    result = _grid(tmp_path / "damaged", gosat=[write_gosat_c3s(tmp_path / "damaged", soundings, day=DAY)])
    assert result.quarantined == [] and result.soundings["gosat"] == intact.soundings["gosat"] - 3 > 0


def test_times_mostly_impossible_mean_wrong_units_and_refuse_the_granule(tmp_path):
    path = write_oco_lite(tmp_path / "in", tiny_soundings("oco2", DAY, n=N_GOOD), mission="oco2", day=DAY)
    with netCDF4.Dataset(path, "a") as ds:
        ds["time"][:] = ds["time"][:] * 1e6
    with pytest.raises(InputFileError, match="wrong units or not this product"):
        read_soundings(path)


def _unreadable_granule(folder):
    """A granule that passes the pull's check (it opens and has the Lite variables) but cannot
    be read whole: its Sounding/footprint variable is gone."""
    path = write_oco_lite(folder, tiny_soundings("oco2", date(2020, 6, 2), n=8), mission="oco2",
                          day=date(2020, 6, 2))
    with netCDF4.Dataset(path, "a") as ds:
        ds.groups["Sounding"].renameVariable("footprint", "footprint_lost")
    return path


def test_a_granule_quarantined_at_gridding_is_marked_and_not_pulled_again(tmp_path):
    source = tmp_path / "source"
    good = write_oco_lite(source / "oco2", tiny_soundings("oco2", DAY, n=N_GOOD), mission="oco2", day=DAY)
    broken = _unreadable_granule(source / "oco2")
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    first = pull(settings, products=("oco2",))
    assert sorted(first.fetched["oco2"]) == sorted([good.name, broken.name]) and not first.quarantined

    cached = settings.raw_dir / "oco2" / broken.name
    manifest = settings.manifest_path
    result = ingest.grid_day(date(2020, 6, 2), {"oco2": [cached]}, GRID, settings.region_dir,
                             settings.quarantine_dir, manifest_path=manifest)
    [entry] = result.quarantined
    assert entry["file"] == broken.name and "footprint is missing" in entry["problem"]
    rows = Manifest(manifest).load().set_index("local_file")
    row = rows.loc[f"raw/oco2/{broken.name}"]
    assert row["status"] == "rejected" and "footprint is missing" in row["problem"]
    assert rows.loc[f"raw/oco2/{good.name}", "status"] == "ok"

    again = pull(settings, products=("oco2",))
    assert again.fetched["oco2"] == [] and again.skipped["oco2"] == 2 and not again.quarantined
