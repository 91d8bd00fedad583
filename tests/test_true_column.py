"""The true column's interval (issue 22): the background's coefficient uncertainty carried to each
cell and day, and its scale calibrated on held-out retrievals with their retrieval noise taken out."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from models.background import TERMS, Background, fit_background, time_terms
from models.residual_field import (ResidualField, ResidualFieldError, Superobs, calibrate_true_column, condition,
                                   day_number, held_out_noise, level_excess_variance, pair_distance, reported_noise_scale,
                                   true_column_half_width)
from tasks.covariates.features import time_features

NAMES = ["latitude", "longitude", "years_since_2015", "doy_sin", "doy_cos"]


def _window(first: date, days: int, n_per_day: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells of `days` days from `first`: features, day numbers, and XCO2 with a day level and noise."""
    rng = np.random.default_rng(seed)
    day = np.repeat(day_number([first])[0] + np.arange(days), n_per_day)
    lat, lon = rng.uniform(30, 31, day.size), rng.uniform(104, 105, day.size)
    years, s, c = time_terms(day)
    X = np.column_stack([lat, lon, years, s, c])
    level = np.repeat(rng.normal(0, 0.8, days), n_per_day)  # a day's tracks share their level
    y = 410 + 2.4 * (years - 5.5) + 1.5 * s - 2.0 * c + level + rng.normal(0, 1.0, day.size)
    return X, day, y


def test_time_terms_are_the_feature_sets():
    for d in (date(2015, 1, 1), date(2016, 2, 29), date(2020, 7, 10), date(2023, 12, 31)):
        years, s, c = time_terms(day_number([d]))
        want = time_features(d)
        assert years[0] == pytest.approx(want["years_since_2015"])
        assert s[0] == pytest.approx(want["doy_sin"]) and c[0] == pytest.approx(want["doy_cos"])


def test_background_variance_grows_past_its_window_and_round_trips():
    X, day, y = _window(date(2020, 6, 1), 40, 50, seed=0)
    fit = fit_background(X, y, NAMES)
    C = fit.covariance_matrix()
    assert C is not None and C.shape == (len(TERMS), len(TERMS))
    assert np.allclose(C, C.T) and np.all(np.linalg.eigvalsh(C) > -1e-9)
    inside = fit.variance_at(day_number([date(2020, 6, 20)]), np.array([30.5]), np.array([104.5]))[0]
    later = [fit.variance_at(day_number([date(2020, 7, 10)]) + k, np.array([30.5]), np.array([104.5]))[0]
             for k in (0, 20, 50)]
    assert inside < later[0] < later[1] < later[2]
    # Days, not cells, are the independent pieces: with a day level of 0.8 ppm over 40 days the
    # mean level is known to about 0.8 / sqrt(40) ~ 0.13 ppm, not to 1.0 / sqrt(2000) ~ 0.02.
    assert 0.08 < np.sqrt(inside) < 0.4
    again = Background.from_dict(fit.to_dict())
    assert again == fit
    old = {k: v for k, v in fit.to_dict().items() if k != "covariance"}
    assert Background.from_dict(old).covariance is None
    assert Background.from_dict(old).variance_at(day, X[:, 0], X[:, 1]).max() == 0


def test_background_error_is_within_its_claimed_sd_inside_and_past_its_window():
    """Over fresh draws of a 120-day window, the background's error against the known curve, in
    units of its claimed sd, inside the window and up to 120 days past it: not overconfident (rms
    z under 1.3; the per-day count makes it conservative, ~0.3-0.6) and not vacuous."""
    z: dict[int, list[float]] = {}
    for seed in range(12):
        X, _, y = _window(date(2020, 1, 1), 120, 20, seed=100 + seed)
        fit = fit_background(X, y, NAMES)
        for offset in (60, 119, 150, 240):
            d = day_number([date(2020, 1, 1)]) + offset
            years, s, c = time_terms(d)
            curve = 410 + 2.4 * (years - 5.5) + 1.5 * s - 2.0 * c
            estimate = fit.evaluate(years, s, c, np.array([30.5]), np.array([104.5]))
            sd = np.sqrt(fit.variance_at(d, np.array([30.5]), np.array([104.5])))
            z.setdefault(offset, []).append(float((estimate - curve)[0] / sd[0]))
    rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in z.items()}
    assert all(0.1 < r < 1.3 for r in rms.values()), rms


def _field() -> ResidualField:
    return ResidualField(0.3, 20.0, 2.0, 0.4, 200.0, 10.0, 0.05, 0.2, window_days=6, true_column_scale=1.3)


def test_background_variance_after_conditioning_is_the_predictors_error_variance():
    """g' S g with g = b - B' lambda equals the error variance of the archive's predictor under the
    field's covariance plus the background's, computed the long way."""
    X, _, y = _window(date(2020, 6, 1), 30, 40, seed=3)
    background = fit_background(X, y, NAMES)
    S = background.covariance_matrix()
    assert S is not None
    field = _field()
    rng = np.random.default_rng(1)
    n = 60
    t0 = float(day_number([date(2020, 7, 5)])[0])
    obs = Superobs(rng.uniform(104, 105, n), rng.uniform(30, 31, n), t0 - rng.integers(0, 5, n).astype(float),
                   rng.normal(0, 1, n), rng.uniform(1, 5, n))
    kriging = condition(field, obs, 30.5)
    lon, lat = np.array([104.2, 104.9, 106.5]), np.array([30.3, 30.8, 32.0])
    _, var, extra = kriging.predict_with_background(lon, lat, t0, background)
    from models.residual_field import _xy_km

    xy_o, xy_t = _xy_km(obs.lon, obs.lat, 30.5), _xy_km(lon, lat, 30.5)
    K = field.covariance(xy_o, obs.day, xy_o, obs.day) + np.diag(field.nugget(obs.weight))
    k = field.covariance(xy_t, np.full(3, t0), xy_o, obs.day)
    lam = np.linalg.solve(K, k.T)  # kriging weights, [n, 3]
    B = background.basis_at(obs.day, obs.lat, obs.lon)
    b0 = background.basis_at(np.full(3, t0), lat, lon)
    K_tot = K + B @ S @ B.T
    k_tot = k + b0 @ S @ B.T
    k0_tot = field.prior_variance + np.einsum("ij,jk,ik->i", b0, S, b0)
    long_way = k0_tot - 2 * np.einsum("ni,in->i", lam, k_tot) + np.einsum("ni,nm,mi->i", lam, K_tot, lam)
    np.testing.assert_allclose(var + extra, long_way, rtol=1e-6, atol=1e-9)
    # Far from every observation the background's whole variance remains; near them far less.
    alone = background.variance_at(np.full(3, t0), lat, lon)
    assert extra[2] > 0.5 * alone[2] and extra[0] < alone[0]


def test_calibrated_scale_recovers_the_true_columns_and_covers_the_truth():
    """Held-out errors are the true column's error plus retrieval noise of known (reported)
    variance: the scale and the unmodelled variance found without the truth cover the truth 68 %,
    where the variance alone is too narrow for small V and too wide for large."""
    rng = np.random.default_rng(7)
    field = _field()
    a_true, u_true = 1.6, 0.05
    holdouts, weights, truth_error = {}, {}, {}
    for name in ("spatial blocks", "whole days"):
        n = 20000
        v = rng.uniform(0.01, 0.3, n)
        w = rng.integers(1, 4, n).astype(float)
        uncertainty = rng.uniform(0.5, 1.2, n)  # the retrievals' reported 1-sigma, as the demo world draws them
        t = rng.normal(0, np.sqrt(a_true ** 2 * v + u_true))
        e = t + uncertainty * rng.standard_normal(n)
        holdouts[name] = (e, v, held_out_noise(field, uncertainty))
        weights[name], truth_error[name] = w, (t, v)
    calibrated, coverage = calibrate_true_column(field, holdouts, weights)
    assert calibrated.true_column_scale == pytest.approx(a_true, rel=0.15)
    assert calibrated.unmodelled_variance == pytest.approx(u_true, abs=0.03)
    assert all(abs(c - 0.6827) < 0.03 for c in coverage.values())
    for t, v in truth_error.values():
        half = true_column_half_width(calibrated, v)
        assert half is not None and abs(np.mean(np.abs(t) <= half) - 0.6827) < 0.03


def _days_and_blocks(rng: np.random.Generator, n_days: int, a_true: float, u_true: float, day_sd: float,
                     ) -> tuple[dict, dict, dict]:
    """Held-out whole days (V ~0.5-0.9, comparable to the noise) and blocks near the observations
    (V ~0.01-0.05), errors = true column's + retrieval noise; the true column's error on whole days
    shares a per-day factor (a day's field is one draw: lognormal with sd `day_sd`), so a few days
    leave its scale uncertain."""
    holdouts, days, truth = {}, {}, {}
    field = _field()
    per_day = 400
    for name, (v_low, v_high) in (("whole days", (0.5, 0.9)), ("spatial blocks", (0.01, 0.05))):
        d = np.repeat(np.arange(n_days), per_day).astype(float)
        v = rng.uniform(v_low, v_high, d.size)
        factor = np.exp(day_sd * rng.standard_normal(n_days) - day_sd ** 2 / 2)[d.astype(int)] if name == "whole days" \
            else np.ones(d.size)
        t = rng.normal(0, np.sqrt(factor * a_true ** 2 * v + u_true))
        uncertainty = rng.uniform(0.6, 1.0, d.size)
        holdouts[name] = (t + uncertainty * rng.standard_normal(d.size), v, held_out_noise(field, uncertainty))
        days[name], truth[name] = d, (t, v)
    return holdouts, days, truth


def test_the_scale_is_read_on_whole_days_and_the_floor_near_the_observations():
    """Many held-out days that agree: the scale is theirs (not 1), and the floor u is what the blocks
    near the observations show beyond it (one line through all bins put it elsewhere)."""
    rng = np.random.default_rng(11)
    a_true, u_true = 0.7, 0.04
    holdouts, days, truth = _days_and_blocks(rng, 60, a_true, u_true, day_sd=0.0)
    calibrated, _ = calibrate_true_column(_field(), holdouts, scale_from="whole days", days=days)
    assert calibrated.true_column_scale == pytest.approx(a_true, rel=0.1)
    assert calibrated.unmodelled_variance == pytest.approx(u_true, abs=0.02)
    for t, v in truth.values():
        half = true_column_half_width(calibrated, v)
        assert half is not None and abs(np.mean(np.abs(t) <= half) - 0.6827) < 0.05


def test_a_scale_the_held_out_days_do_not_determine_is_the_fields_own():
    """Six held-out days whose true-column error swings from day to day: the scale read from them
    (below 1) is not told apart from 1 by resampling the days, so the field's own variance (a = 1)
    stays; with the same values and no days to resample, the reading is kept."""
    rng = np.random.default_rng(3)
    holdouts, days, _ = _days_and_blocks(rng, 6, 0.8, 0.0, day_sd=0.7)
    undetermined, _ = calibrate_true_column(_field(), holdouts, scale_from="whole days", days=days)
    assert undetermined.true_column_scale == 1.0
    read, _ = calibrate_true_column(_field(), holdouts, scale_from="whole days")
    assert read.true_column_scale is not None and read.true_column_scale < 0.95
    # the resampling is seeded: the same held-out values give the same interval
    again, _ = calibrate_true_column(_field(), holdouts, scale_from="whole days", days=days)
    assert again == undetermined


def test_no_scale_when_the_reported_noise_alone_covers_the_held_out_retrievals():
    rng = np.random.default_rng(3)
    field = _field()
    v = rng.uniform(0.05, 0.6, 3000)
    uncertainty = np.full(3000, 0.8)
    quiet = 0.9 * uncertainty * rng.standard_normal(3000)  # errors within the noise the retrievals report
    calibrated, coverage = calibrate_true_column(field, {"whole days": (quiet, v, held_out_noise(field, uncertainty))})
    assert calibrated.true_column_scale is None and coverage == {}
    assert true_column_half_width(calibrated, v) is None


def test_a_held_out_cells_noise_is_its_soundings_not_the_nugget_per_weight():
    """A GOSAT sounding fills ~80 cells, each of weight 1/80 and each with the sounding's whole noise:
    the noise of a held-out cell is k x its reported uncertainty^2, whatever its weight."""
    field = replace(_field(), reported_noise_scale=1.5)
    np.testing.assert_allclose(held_out_noise(field, np.array([2.0, 0.5])), [6.0, 0.375])
    # Without an uncertainty (a frame without the column, a missing value): one sounding's noise.
    np.testing.assert_allclose(held_out_noise(field, None, 2), [field.point_noise()] * 2)
    np.testing.assert_allclose(held_out_noise(field, np.array([np.nan])), [field.point_noise()])


def test_reported_noise_scale_from_same_day_neighbours():
    """Neighbouring samples of one day differ by their noise: k recovers the factor by which the
    reported uncertainties understate it; pairs of equal values (one shared sounding) do not count,
    and neither do pairs of different days."""
    rng = np.random.default_rng(5)
    n_days, per_day = 20, 300
    day = np.repeat(np.arange(n_days), per_day).astype(float) + 18000
    lon, lat = rng.uniform(104, 104.3, day.size), rng.uniform(30, 30.3, day.size)
    truth = 410 + np.repeat(rng.normal(0, 1.0, n_days), per_day)  # a day level, the same for neighbours
    reported = rng.uniform(0.5, 1.5, day.size)
    value = truth + np.sqrt(2.0) * reported * rng.standard_normal(day.size)
    k = reported_noise_scale(lon, lat, day.astype("datetime64[D]"), value, reported, max_deg=0.05)
    assert k == pytest.approx(2.0, rel=0.1)
    shared = value.copy()
    shared[1::2] = shared[::2]  # every other sample repeats its neighbour's sounding
    lon[1::2], lat[1::2] = lon[::2] + 0.001, lat[::2]
    k_shared = reported_noise_scale(lon, lat, day.astype("datetime64[D]"), shared, reported, max_deg=0.05)
    assert k_shared == pytest.approx(2.0, rel=0.15)
    assert reported_noise_scale(lon[:3], lat[:3], day[:3].astype("datetime64[D]"), value[:3], reported[:3]) is None


def test_pairs_reach_the_data_spacing_where_samples_are_binned_coarser():
    """The real benchmark's retrievals come in 0.25-degree bins with one constant reported
    uncertainty: no two are within 0.05 degree, so the pairs reach the 4 edge neighbours (not the
    diagonals) and k is the neighbours' noise over the constant; on a 0.01-degree grid the pairs
    stay within 0.05 degree."""
    rng = np.random.default_rng(7)
    lon0, lat0 = np.meshgrid(np.arange(20) * 0.2496 - 60.0, np.arange(20) * 0.2496 - 10.0)
    n_days = 30
    day = np.repeat(np.arange(n_days) + 18000.0, lon0.size).astype("datetime64[D]")
    lon, lat = np.tile(lon0.ravel(), n_days), np.tile(lat0.ravel(), n_days)
    assert pair_distance(lon, lat, day) == pytest.approx(1.2 * 0.2496)
    fine_lon, fine_lat = np.meshgrid(np.arange(30) * 0.01 + 104, np.arange(30) * 0.01 + 30)
    assert pair_distance(fine_lon.ravel(), fine_lat.ravel(), np.full(fine_lon.size, 18000.0)) == 0.05
    noise_sd, reported = 1.2, np.full(lon.size, 0.5)
    value = 410 + noise_sd * rng.standard_normal(lon.size)
    k = reported_noise_scale(lon, lat, day, value, reported)  # the pairs reach the lattice by default
    assert k is not None and k * 0.5 ** 2 == pytest.approx(noise_sd ** 2, rel=0.1)
    assert reported_noise_scale(lon, lat, day, value, reported, max_deg=0.05) is None


def test_a_field_without_a_true_column_scale_has_no_true_column_interval():
    old = ResidualField.from_dict({k: v for k, v in _field().to_dict().items()
                                   if k not in ("true_column_scale", "unmodelled_variance", "reported_noise_scale")})
    assert old.true_column_scale is None and old.unmodelled_variance == 0 and old.reported_noise_scale == 1
    assert true_column_half_width(old, np.ones(3)) is None
    half = true_column_half_width(_field(), np.full(2, 0.25), np.array([0.0, 0.75]))
    assert half is not None
    np.testing.assert_allclose(half, np.array([1.3 * 0.5, 1.3 * 1.0]))
    # The unmodelled variance widens every cell alike, where the field claims to know the column.
    wide = true_column_half_width(replace(_field(), unmodelled_variance=0.09), np.array([0.0, 0.25]))
    assert wide is not None
    np.testing.assert_allclose(wide, np.sqrt(1.3 ** 2 * np.array([0.0, 0.25]) + 0.09))
    with pytest.raises(ResidualFieldError):
        replace(_field(), unmodelled_variance=-0.1)



def _samples_by_day(rng: np.random.Generator, n_days: int, per_day: int, side_deg: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Day index, latitude, longitude and date of `per_day` samples a day from 2020-06-01, scattered
    over a square of `side_deg` at 30N 104E."""
    import pandas as pd

    day = np.repeat(np.arange(n_days), per_day)
    lat, lon = rng.uniform(30, 30 + side_deg, day.size), rng.uniform(104, 104 + side_deg, day.size)
    dates = (pd.Timestamp("2020-06-01") + pd.to_timedelta(day, unit="D")).to_numpy()
    return day, lat, lon, dates

def test_the_forward_fold_sees_what_a_background_extrapolated_past_its_window_misses():
    """The true column's interval is also scored on the last third of the training days predicted
    with a background of the first two thirds: a background that drifts past its window shows there,
    which folds inside the window cannot see; only earlier days fit that background."""
    import pandas as pd

    from models.holdouts import FORWARD_FOLD, fit_field

    rng = np.random.default_rng(11)
    n_days, per_day = 24, 14
    day, lat, lon, dates = _samples_by_day(rng, n_days, per_day, side_deg=1.0)
    n = day.size
    residual = np.repeat(rng.normal(0, 0.5, n_days), per_day) + rng.normal(0, 0.3, n)
    frame = pd.DataFrame({"latitude": lat, "longitude": lon, "day": dates, "weight": np.ones(n)})
    X, _, y = _window(date(2020, 6, 1), n_days, 10, seed=2)
    background = fit_background(X, y, NAMES)
    training = np.arange(n)
    fitted_on: list[np.ndarray] = []

    def background_without(rest: np.ndarray) -> Background:
        fitted_on.append(rest)
        return background

    def drifting(rest: np.ndarray) -> np.ndarray:
        # Past the last day it was fitted on, this background's east-west gradient drifts 0.3 ppm
        # a day across the box (a level alone the same day's other observations would correct).
        last = day[rest].max()
        return residual + 0.3 * np.maximum(day - last, 0) * 2 * (lon - 104.5)

    plain = fit_field(frame, residual, training, {}, seed=0, cross_validate=True, background=background)
    forward = fit_field(frame, residual, training, {}, seed=0, cross_validate=True, background=background,
                        residual_without=drifting, background_without=background_without)
    assert FORWARD_FOLD in forward.true_column_coverage and FORWARD_FOLD not in plain.true_column_coverage
    assert fitted_on and all(day[rest].max() < 16 for rest in fitted_on)  # the first two thirds only
    # Scored, not fitted to: the scale is the in-window folds', and the drift shows in the forward
    # fold's coverage alone.
    assert plain.field.true_column_scale is not None
    # (Not to the digit: the folds' residuals come from `drifting` here, which moves the last days'
    # residuals of a fold that holds them out, and the moments see that.)
    assert forward.field.true_column_scale == pytest.approx(plain.field.true_column_scale, rel=0.01)
    assert forward.field.unmodelled_variance == pytest.approx(plain.field.unmodelled_variance, abs=0.005)
    assert forward.true_column_coverage[FORWARD_FOLD] < forward.true_column_coverage["whole days"] - 0.1


def test_summaries_read_the_true_columns_coverage():
    import pandas as pd

    from tasks.steps.past_window import true_column_by_distance
    from tasks.steps.demo import true_column_vs_truth

    curves = [{"name": "retrieval interval vs retrievals, spatial blocks", "coverage": {"68 %": 0.7}},
              {"name": "true column vs truth, spatial blocks", "coverage": {"50 %": 0.5, "68 %": 0.66},
               "range68": {"low": 0.5, "high": 0.8, "groups": 4, "unit": "blocks"}},
              {"name": "true column vs truth, whole days", "coverage": {"68 %": None}}]
    assert true_column_vs_truth(curves) == {
        "spatial blocks": {"coverage": 0.66, "range": {"low": 0.5, "high": 0.8, "groups": 4, "unit": "blocks"}},
        "whole days": None}
    assert true_column_vs_truth([]) == {}
    # Six days past the window in thirds: coverage pooled over the cells, half-width weighted by cells.
    daily = pd.DataFrame({"cells": [2, 2, 2, 2, 4, 4], "coverage_true_column_map": [1, 0, 1, 1, 0.5, 0.5],
                          "half_width_true_column_map": [0.1, 0.1, 0.2, 0.2, 0.3, 0.6]})
    pooled = [(None, {"true_column": np.array(h)}) for h in
              ([1, 1], [0, 0], [1, 1], [1, 1], [1, 0, 1, 0], [1, 1, 0, 0])]
    parts = true_column_by_distance(daily, pooled)
    assert [p["days"] for p in parts] == ["1-2", "3-4", "5-6"]
    assert [p["coverage68_true_column"] for p in parts] == [0.5, 1.0, 0.5]
    assert [p["mean_half_width_true_column"] for p in parts] == [0.1, 0.2, 0.45]
    assert all("background_variance_extrapolated" not in p for p in parts)
    # The background's parameter variance, extrapolated and left after the day's observations, by part.
    daily["background_variance_extrapolated"] = [0.01, 0.03, 0.05, 0.05, 0.08, 0.11]
    daily["background_variance_left_map"] = [0.001, 0.001, 0.002, 0.002, 0.0, 0.003]
    parts = true_column_by_distance(daily, pooled)
    assert [p["background_variance_extrapolated"] for p in parts] == [0.02, 0.05, 0.095]
    assert [p["background_variance_left"] for p in parts] == [0.001, 0.002, 0.0015]
    assert true_column_by_distance(daily.drop(columns="coverage_true_column_map"), pooled) == []


def test_the_field_fit_reads_the_noise_from_the_samples_reported_uncertainties():
    """fit_field takes each held-out value's noise from its reported uncertainty, scaled on the
    training samples' same-day neighbours: samples of a GOSAT-like weight (1/80) get their
    sounding's noise, and the true column's error is found under it."""
    import pandas as pd

    from models.holdouts import fit_field

    rng = np.random.default_rng(13)
    n_days, per_day = 24, 60
    day, lat, lon, dates = _samples_by_day(rng, n_days, per_day, side_deg=0.2)
    n = day.size
    level = np.repeat(rng.normal(0, 0.5, n_days), per_day)  # the day's level the field follows
    reported = rng.uniform(0.5, 1.2, n)
    noise = 1.2 * reported * rng.standard_normal(n)  # the reported uncertainties understate it: k = 1.44
    X, _, _ = _window(date(2020, 6, 1), n_days, per_day, seed=4)
    background = fit_background(X, 410 + level + noise, NAMES)
    frame = pd.DataFrame({"latitude": lat, "longitude": lon, "day": dates, "weight": np.full(n, 1 / 80),
                          "xco2": 410 + level + noise, "xco2_uncertainty": reported, "n_soundings": np.ones(n, int)})
    residual = level + noise
    held = np.flatnonzero(day % 4 == 0)
    training = np.setdiff1d(np.arange(n), held)
    fitted = fit_field(frame, residual, training, {"whole days": held}, seed=0, background=background)
    assert fitted.field.reported_noise_scale == pytest.approx(1.44, rel=0.15)
    # The held-out retrievals are covered 68 % by the true column's interval plus their own noise.
    assert fitted.field.true_column_scale is not None
    assert fitted.true_column_coverage["whole days"] == pytest.approx(0.6827, abs=0.06)


def test_the_true_columns_part_is_read_at_the_intervals_level():
    """Held-out errors = the true column's error (variance 0.1) + noise of each value's own variance:
    the part added to the noise so that 68.27 % are held is 0.1; with heavy-tailed noise (real
    retrievals) the mean square would put the tails into it, the 68 % reading does not."""
    rng = np.random.default_rng(17)
    n = 40_000
    noise = rng.uniform(0.3, 1.5, n)
    gaussian = rng.normal(0, np.sqrt(noise + 0.1))
    assert level_excess_variance(gaussian, noise, np.ones(n)) == pytest.approx(0.1, abs=0.03)
    # Student-t noise with 3 degrees of freedom, scaled so its 68 % reading is that of N(0, noise)
    t3 = rng.standard_t(3, n)
    scale = np.sqrt(noise) / np.quantile(np.abs(rng.standard_t(3, 200_000)), 0.6827)
    heavy = rng.normal(0, np.sqrt(0.1), n) + scale * t3
    assert np.mean(heavy ** 2 - noise) > 0.5  # the mean square's reading: the tails, not the true column
    assert level_excess_variance(heavy, noise, np.ones(n)) == pytest.approx(0.1, abs=0.06)
    # the noise alone holds more than 68 %: the part is negative, and calibrate_true_column's least
    # squares (a2, u >= 0) gives no band where every bin says so
    assert level_excess_variance(rng.normal(0, np.sqrt(noise * 0.5)), noise, np.ones(n)) < 0
