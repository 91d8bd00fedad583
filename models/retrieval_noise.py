"""Retrieval noise: how much of a retrieval's error is noise, estimated two independent ways.

- from the data alone: same-day differences of neighbouring bins (`neighbour_pairs`,
  `noise_floor`, `neighbour_noise_variance`), no model involved;
- from the model's two intervals: the retrieval interval is the true-column interval widened by
  the noise, so their squared half-widths differ by the noise variance (`implied_noise_variance`).
`noise_consistency` sets one beside the other. Science used by the retrain (the true-column
interval's noise) and by the real-value benchmark's check (tasks/analysis/real_benchmark.py).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

from models.residual_field import Z68

# Neighbouring 0.25-degree bins on the same day: centres at most this far apart (degrees). The
# development set's bins are 0.2496 degrees apart, so this takes the 4 edge neighbours only.
NEIGHBOUR_MAX_DEG = 0.3


def neighbour_pairs(df: pd.DataFrame, max_deg: float = NEIGHBOUR_MAX_DEG) -> tuple[np.ndarray, np.ndarray]:
    """Differences a - b of every unordered pair of bins of the same day whose centres are at most
    `max_deg` apart, and the day number of each pair."""
    diffs, days = [], []
    for day, g in df.groupby(pd.to_datetime(df["day"]).dt.date):
        if len(g) < 2:
            continue
        lon, lat, x = (g[c].to_numpy(np.float64) for c in ("lon", "lat", "xco2_ppm"))
        dlon, dlat = lon[:, None] - lon[None, :], lat[:, None] - lat[None, :]
        near = np.triu((np.hypot(dlon, dlat) <= max_deg), k=1)
        i, j = np.nonzero(near)
        diffs.append(x[i] - x[j])
        days.append(np.full(len(i), np.datetime64(day, "D").astype(np.int64)))
    if not diffs:
        return np.array([]), np.array([], np.int64)
    return np.concatenate(diffs), np.concatenate(days)


def noise_floor(df: pd.DataFrame, max_deg: float = NEIGHBOUR_MAX_DEG) -> dict:
    """Retrieval noise from pairs of neighbouring bins on the same day: for two bins with the same
    true value and independent errors of sd s, Var(a - b) = 2 s^2, so s = sqrt(mean((a - b)^2) / 2).
    Real differences over one bin (~25 km) add to it, so this is an upper bound on the noise, and
    the lowest RMSE any map can reach at single cell-days. Each unordered pair counts once."""
    d, _ = neighbour_pairs(df, max_deg)
    sigma = float(np.sqrt(np.mean(d ** 2) / 2)) if d.size else float("nan")
    return {"rmse": sigma, "pairs": int(d.size)}


# The level at which the neighbour pairs' spread is read: the interval's own. Retrieval differences
# have heavy tails (real OCO-2: the median, 68 % and 90 % quantiles of |a - b| give Gaussian
# variances of 0.78, 0.98 and 1.76 ppm2 on one box), so a variance "from" them depends on the
# quantile read; the intervals are calibrated to hold 68.27 %, so the noise they imply is the
# Gaussian variance that holds 68.27 %, and the pairs are read at the same level.
NEIGHBOUR_LEVEL = 0.6827


def _gaussian_half_variance(abs_d: np.ndarray, level: float) -> float:
    """Var(a - b) / 2 of the Gaussian whose |a - b| has the same `level` quantile as `abs_d`."""
    if not abs_d.size:
        return float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return float((np.quantile(abs_d, level) / z) ** 2 / 2)


def neighbour_noise_variance(df: pd.DataFrame, max_deg: float = NEIGHBOUR_MAX_DEG, level: float = NEIGHBOUR_LEVEL,
                             seed: int = 0, draws: int = 1000) -> dict:
    """The retrieval noise variance (ppm2) from same-day differences of neighbouring bins, Var(a - b) / 2,
    independent of any model; robust: the Gaussian variance whose |a - b| has the observed `level`
    quantile (0.6827: q68(|a - b|)^2 / 2), so a few retrievals 5-10 ppm off do not set it.

    Which noise it sees: two bins ~25 km apart on one track share the part of the retrieval error
    that is correlated along the track over that distance (the day's and the scene's bias: aerosol,
    surface, the retrieval's own slowly varying error), and the difference cancels it; the real
    change of XCO2 over 25 km adds to it. So it measures the uncorrelated noise plus a little real
    signal, and misses the correlated noise.
    Also: `variance_median` (the same at the median: 1.4826 x MAD), `variance_mean_square`
    (mean((a - b)^2) / 2, the noise floor's square), and the estimate's 90 % range over days drawn
    with replacement (`low`, `high`): pairs of one day share that day's scenes, so days are the
    independent pieces."""
    d, days = neighbour_pairs(df, max_deg)
    abs_d = np.abs(d)
    out = {"variance": _gaussian_half_variance(abs_d, level), "level": level,
           "variance_median": _gaussian_half_variance(abs_d, 0.5),
           "variance_mean_square": float(np.mean(d ** 2) / 2) if d.size else float("nan"),
           "pairs": int(d.size), "days": int(len(np.unique(days))), "low": float("nan"), "high": float("nan"),
           "max_deg": max_deg}
    if d.size and out["days"] >= 2 and draws > 0:
        labels, which = np.unique(days, return_inverse=True)
        order = np.argsort(which, kind="stable")
        sorted_abs = abs_d[order]
        starts = np.searchsorted(which[order], np.arange(len(labels)))
        counts = np.bincount(which)
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(draws):
            pick = rng.integers(0, len(labels), len(labels))
            idx = np.concatenate([np.arange(starts[k], starts[k] + counts[k]) for k in pick])
            values.append(_gaussian_half_variance(sorted_abs[idx], level))
        out["low"], out["high"] = float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))
    return out


def implied_noise_variance(retrieval_half_width: np.ndarray, true_column_half_width: np.ndarray) -> dict:
    """The retrieval noise variance (ppm2) the two intervals imply: mean over held-out values of
    (retrieval half-width^2 - true-column half-width^2) / Z68^2, each value counting once as it does
    in the coverage (`score`); N the values with both half-widths."""
    r = np.asarray(retrieval_half_width, np.float64)
    t = np.asarray(true_column_half_width, np.float64)
    ok = np.isfinite(r) & np.isfinite(t)
    if not ok.any():
        return {"variance": float("nan"), "n": 0}
    return {"variance": float(np.mean(r[ok] ** 2 - t[ok] ** 2) / Z68 ** 2), "n": int(ok.sum())}


NOISE_TOLERANCE = 0.25  # issue 22: the two estimates agree within 25 %


def noise_consistency(archive: dict[str, tuple[np.ndarray, ...]], rows: pd.DataFrame,
                      tolerance: float = NOISE_TOLERANCE, seed: int = 0) -> dict:
    """The noise the intervals imply at the held-out values (archive[holdout] = (xco2, retrieval
    half-width, true-column half-width), pooled over holdouts and per holdout) beside the
    independent same-day neighbour estimate from `rows`; their ratio and whether it is within
    1 +- `tolerance`."""
    parts = {h: implied_noise_variance(a[1], a[2]) for h, a in archive.items() if len(a) >= 3}
    pooled = implied_noise_variance(np.concatenate([archive[h][1] for h in parts]) if parts else np.array([]),
                                    np.concatenate([archive[h][2] for h in parts]) if parts else np.array([]))
    independent = neighbour_noise_variance(rows, seed=seed)
    ratio = pooled["variance"] / independent["variance"] if independent["variance"] > 0 else float("nan")
    within = bool(np.isfinite(ratio) and abs(ratio - 1) <= tolerance)
    return {"implied": pooled, "implied_by_holdout": parts, "neighbours": independent, "ratio": float(ratio),
            "within": within, "tolerance": tolerance}
