"""A day's granules to gridded cells and fused targets; a bad granule is set aside, the day goes on."""

from __future__ import annotations

from datetime import date

import numpy as np

from tasks.samples import ingest
from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.covariates.features import FEATURE_NAMES, METEO_NAMES, NDVI_NAMES, STATIC_NAMES, DayLayers
from tasks.gridding.geometry import Grid

DAY = date(2020, 6, 1)
GRID = Grid(west=103.8, south=30.4, east=104.3, north=30.9, step=0.01)


def test_grid_day_quarantines_a_bad_granule_and_keeps_the_rest(tmp_path):
    oco2 = write_oco_lite(tmp_path / "in", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    gosat = write_gosat_c3s(tmp_path / "in", tiny_soundings("gosat", DAY), day=DAY)
    bad = tmp_path / "in" / "oco3_LtCO2_200601_B10400Br_200701000000s.nc4"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an HDF5 signature and nothing behind it
    result = ingest.grid_day(DAY, {"oco2": [oco2], "oco3": [bad], "gosat": [gosat]}, GRID,
                             tmp_path / "region", tmp_path / "quarantine")
    assert len(result.quarantined) == 1 and result.quarantined[0]["file"] == bad.name
    assert "HDF" in result.quarantined[0]["problem"] or "NetCDF" in result.quarantined[0]["problem"]
    assert not bad.exists() and list((tmp_path / "quarantine").glob(f"*{bad.name}.json"))
    assert result.soundings["oco2"] == 40 and result.soundings["oco3"] == 0 and result.soundings["gosat"] > 0
    assert len(result.cells["oco2"]) > 40 and len(result.cells["oco3"]) == 0
    assert set(ingest.load_gridded(tmp_path / "region", "oco2")) == {DAY}


def test_fused_targets_and_samples(tmp_path):
    region = tmp_path / "region"
    oco2 = write_oco_lite(tmp_path / "in", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    gosat = write_gosat_c3s(tmp_path / "in", tiny_soundings("gosat", DAY, center=(30.8, 104.2)), day=DAY)
    ingest.grid_day(DAY, {"oco2": [oco2], "oco3": [], "gosat": [gosat]}, GRID, region, tmp_path / "q")
    fit = ingest.fit_gosat(region, GRID)
    assert (region / "gosat_fit.json").is_file()
    targets = ingest.fused_targets(region, DAY, fit)
    assert set(targets["source"]) == {"oco2", "gosat"} and targets["cell"].is_unique
    gosat = targets["source"] == "gosat"
    assert set(targets.loc[gosat, "fit_id"]) == {fit.fit_id} and set(targets.loc[~gosat, "fit_id"]) == {""}
    ny, nx = GRID.shape
    layers = DayLayers(DAY, np.zeros((len(STATIC_NAMES), ny, nx), np.float32),
                       np.zeros((len(NDVI_NAMES), ny, nx), np.float32),
                       np.ones((len(METEO_NAMES), ny, nx), np.float32), GRID.lats, GRID.lons)
    samples = ingest.day_samples(targets, layers, GRID)
    assert len(samples) == len(targets)
    lat, lon = GRID.centre(*GRID.cell_rowcol(samples["cell"].to_numpy()))
    np.testing.assert_allclose(samples["latitude"], lat, rtol=1e-6)
    np.testing.assert_allclose(samples["longitude"], lon, rtol=1e-6)
    assert list(samples.columns[-len(FEATURE_NAMES):]) == list(FEATURE_NAMES)
    assert samples["weight"].tolist() == targets["weight"].tolist()
    assert samples["fit_id"].tolist() == targets["fit_id"].tolist()
