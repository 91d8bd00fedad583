"""The background (models/background.py): robust, weighted, and the same number in numpy and in the graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.background import TERMS, Background, BackgroundError, design_matrix, fit_background
from models.deployable import BackgroundTerm

NAMES = ["elevation_m", "latitude", "longitude", "years_since_2015", "doy_sin", "doy_cos"]
# ppm: trend 2.4/yr, a 3 ppm annual and 1 ppm semi-annual cycle, 0.8 ppm per 10 degrees north, -0.5 east.
TRUE_SLOPES = (2.4, 1.5, -2.6, 0.6, -0.8, 0.8, -0.5)
REFERENCE = (2.0, 30.0, 104.0)


def observations(n: int, seed: int, noise_ppm: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    years = rng.uniform(0.5, 3.5, n)
    angle = 2 * np.pi * rng.uniform(0, 1, n)
    X = np.column_stack([rng.normal(500, 100, n), rng.uniform(26, 34, n), rng.uniform(98, 110, n), years,
                         np.sin(angle), np.cos(angle)])
    y = truth(X) + rng.normal(0, noise_ppm, n)
    return X, y


def truth(X: np.ndarray) -> np.ndarray:
    A = design_matrix(X[:, 3], X[:, 4], X[:, 5], X[:, 1], X[:, 2], *REFERENCE)
    return A @ np.array((405.0,) + TRUE_SLOPES)


def test_recovers_known_coefficients():
    X, y = observations(3000, seed=0)
    fit = fit_background(X, y, NAMES)
    assert np.allclose(fit.coefficients[1:], TRUE_SLOPES, atol=0.05)
    X_new, _ = observations(500, seed=1)
    assert np.abs(fit.evaluate_features(X_new, NAMES) - truth(X_new)).max() < 0.05
    assert fit.residual_sd_ppm == pytest.approx(0.3, rel=0.1) and fit.n_fit == 3000


def test_gross_outliers_do_not_tilt_it():
    """5% of retrievals 15 ppm high (cloud), all in the second half of the window: least squares
    would bend the trend up, Huber weights keep it."""
    X, y = observations(3000, seed=2)
    rng = np.random.default_rng(3)
    late = np.flatnonzero(X[:, 3] > 2.0)
    bad = rng.choice(late, 150, replace=False)
    y[bad] += 15.0
    robust = fit_background(X, y, NAMES)
    ordinary = np.linalg.lstsq(design_matrix(X[:, 3], X[:, 4], X[:, 5], X[:, 1], X[:, 2], *REFERENCE), y, rcond=None)[0]
    assert abs(ordinary[1] - TRUE_SLOPES[0]) > 0.5  # the outliers matter to an unweighted fit
    assert abs(robust.coefficients[1] - TRUE_SLOPES[0]) < 0.1
    X_new, _ = observations(500, seed=4)
    assert np.abs(robust.evaluate_features(X_new, NAMES) - truth(X_new)).max() < 0.2
    assert robust.residual_sd_ppm < 0.4  # the robust sd is the clean data's, not the outliers'


def test_weights_count_soundings():
    X, y = observations(400, seed=5)
    # Weight 0: rows that do not exist, whatever their targets.
    junk_X, _ = observations(300, seed=6)
    junk_y = np.random.default_rng(7).uniform(380, 440, 300)
    with_junk = fit_background(np.vstack([X, junk_X]), np.concatenate([y, junk_y]), NAMES,
                               np.concatenate([np.ones(400), np.zeros(300)]))
    alone = fit_background(X, y, NAMES)
    assert np.allclose(with_junk.coefficients, alone.coefficients, atol=1e-6)
    assert with_junk.reference_years == pytest.approx(alone.reference_years)
    # Weight 2: the same as the row twice.
    twice = fit_background(np.vstack([X, X[:100]]), np.concatenate([y, y[:100]]), NAMES)
    weighted = fit_background(X, y, NAMES, np.where(np.arange(400) < 100, 2.0, 1.0))
    assert np.allclose(weighted.coefficients, twice.coefficients, atol=1e-6)


def test_round_trip_and_clear_errors():
    X, y = observations(200, seed=8)
    fit = fit_background(X, y, NAMES)
    again = Background.from_dict(fit.to_dict())
    assert again == fit
    assert np.array_equal(again.evaluate_features(X, NAMES), fit.evaluate_features(X, NAMES))
    with pytest.raises(BackgroundError, match="terms"):
        Background.from_dict({**fit.to_dict(), "terms": list(TERMS[:-1])})
    with pytest.raises(BackgroundError, match="doy_cos"):
        fit.evaluate_features(X[:, :5], NAMES[:5])
    with pytest.raises(BackgroundError, match="too few"):
        fit_background(X[:10], y[:10], NAMES)
    with pytest.raises(BackgroundError, match="weights"):
        fit_background(X, y, NAMES, np.zeros(len(y)))
    with pytest.raises(BackgroundError, match="finite"):
        fit_background(X, np.where(np.arange(len(y)) == 3, np.nan, y), NAMES)


def test_the_graph_term_equals_numpy():
    X, y = observations(2000, seed=9)
    fit = fit_background(X, y, NAMES)
    term = BackgroundTerm(fit, NAMES)
    with torch.no_grad():
        graph = term(torch.from_numpy(X.astype(np.float32))).numpy()
    # The graph sees float32 features: compare with numpy on the same rounded inputs.
    numpy = fit.evaluate_features(X.astype(np.float32), NAMES)
    assert np.abs(graph.astype(np.float64) - numpy).max() < 1e-4
