"""Past the training window on a small dense demo world: the model trained as the retrain trains it
(tasks/steps/retrain.py), the maps made as the archive makes them (tasks/mapping/daily_anomaly.py), scored
against the truth.

Slow (a 30-day world of the demo's 0.5 degree Chengdu box, daily flow, one training): 4.5 min of
CPU measured (20 min wall on two busy shared cores): `pytest -m slow tests/test_past_window.py`.
The issue's 60-day figures come from `xco2 past-window` on a 100-day world.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from flows.demo import SMALL_REGION
from tasks.steps.past_window import MAPS, PastWindowOptions, field_at_cells, past_window_check
from models.residual_field import ResidualField
from tasks.mapping.daily_anomaly import daily_anomaly
from demo_world import truth_for_day, write_demo_world
from tasks.covariates.features import FEATURE_NAMES
from tasks.gridding.geometry import Grid
from tasks.settings import load_settings

pytestmark = pytest.mark.slow

START, TRAIN_END, END = date(2020, 6, 1), date(2020, 6, 22), date(2020, 6, 30)


@pytest.fixture(scope="module")
def small_world(prefect_harness, tmp_path_factory):
    from flows.daily import daily_update

    root = tmp_path_factory.mktemp("past-window")
    overrides = {"data_dir": str(root / "data"), "source": "demo", "seed": 20200601, "max_epochs": 3,
                 "max_training_samples": 6000, "max_validation_samples": 2000, "comparison_protocols": [],
                 "region": SMALL_REGION.model_dump()}
    settings = load_settings(**overrides)
    write_demo_world(settings.data_dir / "demo", settings.region, START, END, grid_step=settings.grid_step,
                     seed=20200601, dense=True)
    daily_update(start=START.isoformat(), end=END.isoformat(), overrides=overrides)
    return settings, root


def test_the_field_at_cells_is_the_archives_daily_anomaly(small_world):
    """What the check scores is what map_day adds: the same observations and conditioning, so at
    the cells it equals tasks/mapping/daily_anomaly.py's map up to its lattice's bilinear interpolation."""
    settings, _ = small_world
    grid = Grid.for_region(settings.region, settings.grid_step)
    field = ResidualField(0.3, 20.0, 2.0, 0.4, 200.0, 10.0, 0.2, 0.5, window_days=6)

    def model(X):  # a flat model: the residuals carry the world's whole signal into the field
        return np.full(len(X), 412.0)

    day = date(2020, 6, 25)
    full = daily_anomaly(settings.region_dir, "test-field", grid, day, model, FEATURE_NAMES, field, 300)
    rows, cols = np.divmod(np.random.default_rng(0).choice(grid.n_cells, 200, replace=False), grid.nx)
    at_cells = field_at_cells(settings.region_dir, "test-field", grid, day, model, field, 300, rows, cols)
    assert at_cells.n_superobs == full.n_superobs > 50
    assert np.std(at_cells.mean) > 0.1  # a field with structure, not a constant both sides agree on
    assert np.max(np.abs(at_cells.mean - full.mean[rows, cols])) < 0.05
    nightly = field_at_cells(settings.region_dir, "test-field", grid, day, model, field, 300, rows, cols,
                             up_to_day=True)
    assert 0 < nightly.n_superobs < at_cells.n_superobs  # the days after the mapped day left out
    # Without the days after it, the field knows less about the day.
    assert np.mean(nightly.variance) > np.mean(at_cells.variance)


def test_maps_after_the_training_window_are_scored_against_the_truth(small_world):
    settings, root = small_world
    out = root / "out"
    days = (END - TRAIN_END).days
    result = past_window_check(settings, PastWindowOptions(train_end=TRAIN_END, days=days, cells_per_day=1500),
                               lambda d: truth_for_day(settings.data_dir / "demo", d), out)
    maps = result["maps"]
    assert set(maps) == set(MAPS)
    assert all(np.isfinite(maps[m]["bias"]) and maps[m]["rmse"] > 0 for m in MAPS)
    # The daily anomaly is what carries the observations of the day into the map: it must beat
    # the background alone, which knows only the trend and the season.
    assert maps["map"]["rmse"] < maps["background"]["rmse"]
    # The interval for a retrieval is wider than the one for the truth, so it covers more of it.
    for m in ("map", "map_nightly"):
        assert 0 < maps[m]["coverage68_noise_free"] <= maps[m]["coverage68_band2"] <= 1
    # Band 3 (the true column's interval) when the retrain could calibrate it, scored by distance too.
    parts = result["true_column_by_distance"]
    if "coverage68_true_column" in maps["map"]:
        assert 0 <= maps["map"]["coverage68_true_column"] <= 1 and len(parts) == min(3, days)
        assert all(p["mean_half_width_true_column"] > 0 for p in parts)
        assert all(p["background_variance_extrapolated"] >= 0 and p["background_variance_left"] >= 0 for p in parts)
    else:
        assert parts == [] and result["residual_field"]["true_column_scale"] is None
    daily = pd.read_csv(out / "past_window_daily.csv")
    assert list(daily["day"]) == [(TRAIN_END + timedelta(days=i)).isoformat() for i in range(1, days + 1)]
    # On the world's last day no later observation exists: the archive's and the nightly maps agree.
    last = daily.iloc[-1]
    assert last["superobs"] == last["superobs_nightly"] and last["bias_map"] == pytest.approx(last["bias_map_nightly"])
    assert (daily["superobs_nightly"] <= daily["superobs"]).all()
    assert (out / "past_window_bias.png").stat().st_size > 10_000
    # The check's own residual cache goes; the champions' caches are not its to keep.
    residuals = settings.region_dir / "residuals"
    assert not residuals.exists() or not any(p.name.startswith("vpast-window") for p in residuals.iterdir())


def test_a_window_without_its_meteorology_is_refused_naming_what_is_missing(small_world):
    settings, root = small_world
    with pytest.raises(ValueError, match="missing ERA5 for 5 days"):
        past_window_check(settings, PastWindowOptions(train_end=END, days=5), lambda d: None, root / "refused")
