"""The daily-anomaly field (models/residual_field.py): super-observations, the ML fit and its
gradient, kriging, the interval's calibration, and the map's lattice."""

from __future__ import annotations

import numpy as np
import pytest

from models.residual_field import (PARAMETERS, SPATIAL_SHAPES, ResidualField, ResidualFieldError, Superobs, _distance,
                                   _negative_log_likelihood, _xy_km, calibrate_interval, condition, day_number,
                                   fit_residual_field, interval_half_width, predict_map, predict_points, superobs,
                                   window)

LAT0 = 30.0
FIELD = ResidualField(local_variance=1.0, local_length_km=80.0, local_time_days=4.0, regional_variance=0.3,
                      regional_length_km=500.0, regional_time_days=30.0, noise_correlated=0.05, noise_independent=0.1)


def simulated(field: ResidualField, n: int, seed: int, days: int = 20) -> Superobs:
    """A draw of the field plus its nugget at random places and days (one sounding each)."""
    rng = np.random.default_rng(seed)
    lon, lat = rng.uniform(103, 107, n), rng.uniform(28, 32, n)
    day = rng.integers(0, days, n).astype(np.float64)
    xy = _xy_km(lon, lat, LAT0)
    K = field.covariance(xy, day, xy, day)
    K[np.diag_indices_from(K)] += field.nugget(np.ones(n))
    return Superobs(lon, lat, day, np.linalg.cholesky(K) @ rng.normal(size=n), np.ones(n))


def test_superobs_average_by_day_and_cell_weighted_by_soundings():
    lon = np.array([104.01, 104.02, 104.03, 104.51, 104.01])
    lat = np.array([30.01, 30.02, 30.03, 30.01, 30.01])
    days = np.array(["2020-01-01"] * 4 + ["2020-01-02"])
    residual = np.array([1.0, 2.0, 40.0, -1.0, 5.0])
    weight = np.array([1.0, 3.0, 0.5, 2.0, 1.0])
    obs = superobs(lon, lat, days, residual, weight, superob_deg=0.1, clip_ppm=4.0)
    assert len(obs) == 3  # two cells on the first day, one on the second
    first = np.flatnonzero((obs.day == day_number(["2020-01-01"])[0]) & (obs.lon < 104.1))[0]
    # 40 ppm is clipped to 4 about the day's weighted median (2) before averaging: one bad retrieval
    # does not carry the cell.
    assert obs.residual[first] == pytest.approx((1 * 1 + 3 * 2 + 0.5 * 6) / 4.5)
    assert obs.weight[first] == pytest.approx(4.5)
    assert obs.lon[first] == pytest.approx((104.01 + 3 * 104.02 + 0.5 * 104.03) / 4.5)
    assert sorted(obs.weight) == pytest.approx([1.0, 2.0, 4.5])
    # NaN residuals and weight 0 count as no observation.
    none = superobs(lon[:2], lat[:2], days[:2], np.array([np.nan, 1.0]), np.array([1.0, 0.0]), 0.1)
    assert len(none) == 0


def test_a_whole_day_off_the_model_is_followed_while_its_outliers_are_clipped():
    """Past its training window a background drifts: a day 5 ppm above it keeps its level (clipping
    about 0 would cut it to the clip), and its one bad retrieval is still cut to the clip."""
    rng = np.random.default_rng(3)
    n = 200
    lon, lat = rng.uniform(104, 105, n), rng.uniform(30, 31, n)
    residual = 5.0 + rng.normal(0, 0.3, n)
    residual[0] = 60.0
    obs = superobs(lon, lat, np.array(["2020-01-01"] * n), residual, np.ones(n), superob_deg=10.0, clip_ppm=2.0)
    assert len(obs) == 1
    clipped = residual.copy()
    clipped[0] = np.median(residual) + 2.0
    assert obs.residual[0] == pytest.approx(clipped.mean(), abs=0.01)
    assert obs.residual[0] == pytest.approx(5.0, abs=0.1)


@pytest.mark.parametrize("shape", SPATIAL_SHAPES)
def test_analytic_gradient_matches_finite_differences(shape: str):
    obs = simulated(FIELD, 40, seed=0)
    xy = _xy_km(obs.lon, obs.lat, LAT0)
    D, DT = _distance(xy, xy), np.abs(obs.day[:, None] - obs.day[None, :])
    inv_w = 1.0 / np.random.default_rng(1).uniform(0.5, 3, len(obs))
    logp = np.log([0.7, 60.0, 3.0, 0.2, 400.0, 20.0, 0.08, 0.15])
    value, grad = _negative_log_likelihood(logp, D, DT, obs.residual, inv_w, shape)
    h = 1e-5
    numeric = np.array([(_negative_log_likelihood(logp + h * e, D, DT, obs.residual, inv_w, shape)[0]
                         - _negative_log_likelihood(logp - h * e, D, DT, obs.residual, inv_w, shape)[0]) / (2 * h)
                        for e in np.eye(len(logp))])
    assert np.isfinite(value)
    assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-5)


def test_ml_fit_recovers_the_scales_of_simulated_data():
    """One dominant component of 80 km and 4 days: the fit finds its order of magnitude."""
    truth = ResidualField(1.0, 80.0, 4.0, 1e-6, 1000.0, 100.0, 0.05, 0.1)
    fit = fit_residual_field(simulated(truth, 150, seed=1), LAT0, seed=0)
    dominant = 0 if fit.local_variance >= fit.regional_variance else 1
    length = (fit.local_length_km, fit.regional_length_km)[dominant]
    time = (fit.local_time_days, fit.regional_time_days)[dominant]
    assert 80 / 3 < length < 80 * 3 and 4 / 3 < time < 4 * 3
    assert 0.5 < fit.prior_variance < 2.0
    assert fit.local_length_km <= fit.regional_length_km  # the shorter one is named local
    assert 3 <= fit.window_days <= 60 and fit.n_fit == 150
    with pytest.raises(ResidualFieldError, match="too few"):
        fit_residual_field(simulated(truth, 10, seed=2), LAT0)


def test_the_likelihood_chooses_the_spatial_shape_of_the_data():
    """A smooth field (Matern 5/2) and a rough one (exponential), each 250 super-observations on one
    day: the fit names each one's shape, and a field's shape survives its description."""
    fits = {}
    for shape in ("matern52", "matern12"):
        truth = ResidualField(1.0, 150.0, 5.0, 1e-6, 2000.0, 100.0, 0.01, 0.02, spatial_shape=shape)
        fits[shape] = fit_residual_field(simulated(truth, 250, seed=5, days=1), LAT0, seed=0)
    assert fits["matern52"].spatial_shape != "matern12"
    assert fits["matern12"].spatial_shape == "matern12"
    assert ResidualField.from_dict(fits["matern52"].to_dict()) == fits["matern52"]
    old = {k: v for k, v in fits["matern52"].to_dict().items() if k != "spatial_shape"}
    assert ResidualField.from_dict(old).spatial_shape == "matern12"  # fitted before the choice: exponential
    with pytest.raises(ResidualFieldError, match="spatial_shape"):
        ResidualField.from_dict({**old, "spatial_shape": "gaussian"})


def test_kriging_interpolates_without_noise_and_returns_the_prior_far_away():
    exact = ResidualField(1.0, 80.0, 4.0, 0.3, 500.0, 30.0, 0.0, 0.0)
    obs = simulated(exact, 30, seed=3)
    kriging = condition(exact, obs, LAT0)
    for i in range(0, 30, 7):
        mean, var = kriging.predict(obs.lon[i:i + 1], obs.lat[i:i + 1], obs.day[i])
        assert mean[0] == pytest.approx(obs.residual[i], abs=1e-6) and var[0] == pytest.approx(0.0, abs=1e-6)
    far_mean, far_var = kriging.predict(np.array([140.0]), np.array([-10.0]), 5000.0)
    assert far_mean[0] == pytest.approx(0.0, abs=1e-9) and far_var[0] == pytest.approx(exact.prior_variance)
    # No observations at all: the prior.
    empty = condition(exact, obs.subset(np.array([], dtype=int)), LAT0)
    m, v = empty.predict(np.array([104.0]), np.array([30.0]), 3.0)
    assert m[0] == 0.0 and v[0] == exact.prior_variance


def test_window_and_leaving_the_day_out():
    obs = simulated(FIELD, 60, seed=4, days=10)
    near = window(obs, 5.0, 2)
    assert set(near.day) <= {3.0, 4.0, 5.0, 6.0, 7.0} and 5.0 in set(near.day)
    assert 5.0 not in set(window(obs, 5.0, 2, exclude_day=True).day)
    own = window(obs, 5.0, 0)
    with_day, _ = predict_points(FIELD, obs, LAT0, own.lon, own.lat, own.day)
    without_day, _ = predict_points(FIELD, obs, LAT0, own.lon, own.lat, own.day, exclude_own_day=True)
    others = obs.subset(np.flatnonzero(obs.day != 5.0))
    expected, _ = condition(FIELD, window(others, 5.0, FIELD.window_days), LAT0).predict(own.lon, own.lat, 5.0)
    assert np.allclose(without_day, expected) and not np.allclose(with_day, without_day)


def test_calibrated_interval_holds_68_percent_on_both_holdouts():
    """Blocks far from data (large field variance) and whole days (small): one scale and one noise
    share fitted on both give 68% on each, and hold on fresh draws of the same kind."""
    rng = np.random.default_rng(5)
    field = FIELD  # point noise 0.15 ppm2
    true_noise_share, true_scale = 3.0, 1.3

    def holdout(n: int, variance_range: tuple[float, float]):
        var = rng.uniform(*variance_range, n)
        mean = rng.normal(0, 1, n)
        residual = mean + rng.normal(0, 1, n) * true_scale * np.sqrt(var + true_noise_share * field.point_noise())
        return residual, mean, var

    holdouts = {"spatial blocks": holdout(3000, (0.8, 1.3)), "whole days": holdout(3000, (0.0, 0.1))}
    calibrated, coverage = calibrate_interval(field, holdouts)
    assert set(coverage) == set(holdouts)
    assert all(abs(c - 0.6827) < 0.02 for c in coverage.values())
    assert calibrated.noise_scale == pytest.approx(true_noise_share, rel=0.5)
    for kind in ((0.8, 1.3), (0.0, 0.1)):
        residual, mean, var = holdout(3000, kind)
        inside = np.abs(residual - mean) <= interval_half_width(calibrated, var)
        assert abs(inside.mean() - 0.6827) < 0.03
    # Too few held-out values: the field is returned unchanged.
    same, none = calibrate_interval(field, {"whole days": tuple(x[:5] for x in holdouts["whole days"])})
    assert same == field and none == {}


def test_calibration_counts_each_sounding_once():
    """Copies of a few noisy soundings (GOSAT: one sounding, ~80 cells) weighted by their independent
    soundings do not set the interval; counted per cell they widen it for everything else."""
    rng = np.random.default_rng(6)
    var = np.full(4000, 0.5)
    precise = rng.normal(0, 1, 2000) * np.sqrt(0.5 + FIELD.point_noise())
    noisy = np.repeat(rng.normal(0, 4.0, 25), 80)  # 25 soundings, 80 cells each
    residual = np.concatenate([precise, noisy])
    weight = np.concatenate([np.ones(2000), np.full(2000, 1 / 80)])
    holdout = {"whole days": (residual, np.zeros(4000), var)}
    per_cell, _ = calibrate_interval(FIELD, holdout)
    per_sounding, coverage = calibrate_interval(FIELD, holdout, {"whole days": weight})
    assert abs(coverage["whole days"] - 0.6827) < 0.01
    inside = np.abs(precise) <= interval_half_width(per_sounding, var[:2000])
    assert abs(inside.mean() - 0.6827) < 0.03  # the precise soundings' interval is theirs
    assert interval_half_width(per_cell, var[:1])[0] > 1.5 * interval_half_width(per_sounding, var[:1])[0]


def test_map_is_nan_outside_the_region_and_follows_the_observations():
    obs = simulated(FIELD, 80, seed=6, days=5)
    lons, lats = np.arange(103.0, 107.0, 0.1) + 0.05, np.arange(28.0, 32.0, 0.1) + 0.05
    inside = np.zeros((len(lats), len(lons)), bool)
    inside[5:30, 5:30] = True
    mean, var = predict_map(FIELD, obs, LAT0, lons, lats, 2.0, inside)
    assert mean.shape == var.shape == inside.shape
    assert np.isnan(mean[~inside]).all() and np.isnan(var[~inside]).all()
    assert np.isfinite(mean[inside]).all() and (var[inside] >= 0).all() and (var[inside] <= FIELD.prior_variance).all()
    # The lattice's bilinear interpolation stays close to kriging every cell directly.
    LON, LAT = np.meshgrid(lons, lats)
    direct, _ = condition(FIELD, window(obs, 2.0, FIELD.window_days), LAT0, around_day=2.0).predict(
        LON[inside], LAT[inside], 2.0)
    assert np.abs(mean[inside] - direct).max() < 0.1 * np.abs(direct).max()


def test_description_round_trips_and_refuses_nonsense():
    fitted = FIELD.__class__(**{**FIELD.to_dict(), "interval_scale": 1.2, "clip_ppm": 2.5, "window_days": 9})
    assert ResidualField.from_dict(fitted.to_dict()) == fitted
    assert ResidualField.from_dict({**fitted.to_dict(), "from_a_newer_version": 1}) == fitted
    with pytest.raises(ResidualFieldError, match="lacks"):
        ResidualField.from_dict({k: v for k, v in fitted.to_dict().items() if k != PARAMETERS[1]})
    with pytest.raises(ResidualFieldError, match="local_variance"):
        ResidualField(**{**FIELD.to_dict(), "local_variance": -1.0})
    with pytest.raises(ResidualFieldError, match="local_length_km"):
        ResidualField(**{**FIELD.to_dict(), "local_length_km": 0.0})
    with pytest.raises(ResidualFieldError, match="noise_independent"):
        ResidualField(**{**FIELD.to_dict(), "noise_independent": float("nan")})
