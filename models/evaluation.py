"""Validation numbers as the paper reports them (RMSE, R², scatter slope) and the holdout split.

The figures drawn from these numbers live in tasks/analysis/training_figures.py, which imports this
module (never the other way round: matplotlib is imported only when a figure is drawn).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["random_split", "regression_metrics"]


def _finite_vector(name: str, values: npt.ArrayLike) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values; drop them before scoring")
    return values


def regression_metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> dict[str, float]:
    """Scores of predicted against observed XCO2 (ppm).

    rmse, mae; bias = mean(pred - obs); r2 = 1 - SS_res / SS_tot (coefficient of determination,
    so a biased model scores lower than its squared correlation); slope and intercept of the
    ordinary least-squares line of predicted (y axis) on observed (x axis), as the paper's scatter
    plots draw it; n. Undefined values (one sample, constant observations) are nan.
    """
    obs = _finite_vector("y_true", y_true)
    pred = _finite_vector("y_pred", y_pred)
    if obs.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {obs.shape[0]} vs {pred.shape[0]}")
    n = obs.shape[0]
    if n == 0:
        raise ValueError("no samples to score")
    error = pred - obs
    obs_centred = obs - obs.mean()
    ss_obs = float(np.dot(obs_centred, obs_centred))
    if n >= 2 and ss_obs > 0:
        slope = float(np.dot(obs_centred, pred - pred.mean()) / ss_obs)
        intercept = float(pred.mean() - slope * obs.mean())
        r2 = 1.0 - float(np.dot(error, error)) / ss_obs
    else:
        slope = intercept = r2 = float("nan")
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": r2,
        "slope": slope,
        "intercept": intercept,
        "mae": float(np.mean(np.abs(error))),
        "bias": float(np.mean(error)),
        "n": int(n),
    }


def random_split(
    n: int, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Holdout split of n samples: (train_idx, val_idx), disjoint, sorted, reproducible by seed.

    The validation share is rounded and kept between 1 and n - 1 so both sides are usable.
    """
    if n < 2:
        raise ValueError(f"need at least 2 samples to split, got {n}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    n_val = min(max(int(round(n * validation_fraction)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
