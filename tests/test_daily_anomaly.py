"""The daily anomaly of a mapped day (tasks/mapping/daily_anomaly.py) on a tiny sample store: the residual
cache per champion version, the map's field inside the region only, and the own-day score."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from models.residual_field import ResidualField
from tasks.mapping.daily_anomaly import daily_anomaly, field_of
from tasks.covariates.features import FEATURE_NAMES
from tasks.gridding.geometry import Grid
from tasks.samples.store import write_day

DAY = date(2020, 6, 15)
MODEL_PPM = 410.0
FIELD = ResidualField(local_variance=1.0, local_length_km=80.0, local_time_days=4.0, regional_variance=0.3,
                      regional_length_km=500.0, regional_time_days=30.0, noise_correlated=0.05,
                      noise_independent=0.1, window_days=3, superob_deg=0.1, lattice_deg=0.1)
GRID = Grid(west=104.0, south=30.0, east=105.0, north=31.0, step=0.05)


def samples(day: date, level_ppm: float, seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: np.zeros(n, np.float32) for name in FEATURE_NAMES})
    frame["longitude"] = rng.uniform(104.0, 105.0, n).astype(np.float32)
    frame["latitude"] = rng.uniform(30.0, 31.0, n).astype(np.float32)
    frame["xco2"] = MODEL_PPM + level_ppm + rng.normal(0, 0.1, n)
    frame["cell"] = np.arange(n, dtype=np.int64)
    frame["row"], frame["col"] = np.zeros(n, np.int32), np.arange(n, dtype=np.int32)
    frame["xco2_uncertainty"], frame["source"] = 0.5, "oco2"
    frame["n_soundings"] = np.ones(n, dtype=np.int32)
    frame["weight"], frame["fit_id"] = 1.0, ""
    return frame


class CountingModel:
    """The champion's prediction, counting the cells it was asked for."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert X.shape[1] == len(FEATURE_NAMES) and X.dtype == np.float32
        return np.full(len(X), MODEL_PPM)


@pytest.fixture()
def store(tmp_path):
    # The mapped day's observations sit 3 ppm above the model, the days around it on it.
    for k in range(-2, 3):
        write_day(tmp_path, DAY + timedelta(days=k), samples(DAY + timedelta(days=k), 3.0 if k == 0 else 0.0, k + 10))
    write_day(tmp_path, DAY + timedelta(days=10), samples(DAY, 0.0, 99))  # outside the window
    return tmp_path


def inside_mask() -> np.ndarray:
    inside = np.zeros(GRID.shape, bool)
    inside[:, : GRID.nx // 2] = True
    return inside


def test_field_is_nan_outside_and_the_own_day_score_leaves_the_day_out(store):
    model = CountingModel()
    result = daily_anomaly(store, 1, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000, inside=inside_mask())
    inside = inside_mask()
    assert result.mean.shape == result.half_width.shape == GRID.shape
    assert np.isnan(result.mean[~inside]).all() and np.isnan(result.half_width[~inside]).all()
    assert np.isfinite(result.mean[inside]).all() and (result.half_width[inside] > 0).all()
    # The map sees the day's +3 ppm ...
    assert 2.0 < np.nanmean(result.mean) < 3.5
    # ... its own-day score does not: predicted from the other days (~0), it misses by ~3 ppm.
    assert result.own_day_n > 0 and result.own_day_bias_ppm == pytest.approx(-3.0, abs=0.7)
    assert result.own_day_rmse_ppm >= abs(result.own_day_bias_ppm)
    assert (result.window_start, result.window_end) == (DAY - timedelta(days=3), DAY + timedelta(days=3))
    tags = result.to_tags()
    assert tags["own_day_superobs"] == str(result.own_day_n) and float(tags["own_day_bias_ppm"]) < -2
    assert model.calls == 5  # the five stored days within +-3 days, once each


def test_residuals_are_cached_per_version_and_recomputed_when_the_samples_change(store):
    model = CountingModel()
    first = daily_anomaly(store, 1, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 5
    assert len(list((store / "residuals" / "v1").glob("*.parquet"))) == 5
    again = daily_anomaly(store, 1, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 5  # every day from the cache
    assert np.array_equal(first.mean, again.mean) and first.own_day_rmse_ppm == again.own_day_rmse_ppm
    # A re-ingested day is recomputed (and only that day): the old residuals would be wrong.
    write_day(store, DAY, samples(DAY, 0.0, 10))
    changed = daily_anomaly(store, 1, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 6
    assert abs(changed.own_day_bias_ppm) < 0.7 and np.nanmean(changed.mean) < 1.0
    # Another champion's residuals are its own.
    daily_anomaly(store, 2, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 11
    # A damaged cache is only a cache.
    (store / "residuals" / "v2" / f"{DAY.isoformat()}.parquet").write_bytes(b"not parquet")
    daily_anomaly(store, 2, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 12


def test_without_observations_the_field_is_the_prior(tmp_path):
    write_day(tmp_path, DAY, samples(DAY, 0.0, 1).iloc[:0])  # a processed day with no samples
    model = CountingModel()
    result = daily_anomaly(tmp_path, 1, GRID, DAY, model, FEATURE_NAMES, FIELD, max_cells=1000)
    assert model.calls == 0 and result.n_superobs == 0 and result.own_day_n == 0
    assert np.allclose(result.mean, 0.0)
    prior = FIELD.interval_scale * np.sqrt(FIELD.prior_variance + FIELD.noise_scale * FIELD.point_noise())
    assert np.allclose(result.half_width, prior, rtol=1e-5)
    assert result.to_tags()["own_day_rmse_ppm"] == "nan"


def test_field_of_reads_the_champions_mapping():
    assert field_of(None) is None and field_of({"residual_field": None}) is None
    assert field_of({"residual_field": FIELD.to_dict()}) == FIELD
