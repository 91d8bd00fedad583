"""The background: a trend, an annual and a semi-annual cycle and a plane in space.

Fitted at each retrain to every fused observation (each weighted by its independent soundings),
robustly (Huber weights beyond 6 robust sd, none beyond 12, so gross failures do not tilt it while
the bulk of real retrievals' heavy tails still counts), and evaluated from the feature
columns the network already receives (years_since_2015, doy_sin, doy_cos, latitude, longitude):
the exported model adds it to the network's anomaly inside the graph, so every consumer of the
model gets XCO2. The network then learns only what the covariates add to it; with uninformative
covariates the map falls back to this fit (plus the daily anomaly, models/residual_field.py) rather
than to a network extrapolating time.

Numpy only: the nightly path and the benchmark use it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TERMS = ("intercept", "trend", "annual_sin", "annual_cos", "semiannual_sin", "semiannual_cos",
         "latitude", "longitude")
INPUTS = ("years_since_2015", "doy_sin", "doy_cos", "latitude", "longitude")
# Per 10 degrees: coefficients of a plane over a region come out in ppm per 10 degrees.
SPACE_UNIT_DEG = 10.0
# Huber's threshold in robust standard deviations. Real retrievals have heavy tails that are part
# of what a map is scored against (a southern box: sd 3.0 ppm, robust sd 1.7): the classic 1.5 fitted
# the median and lost 0.3 ppm on whole held-out days there (3.86 vs 3.56 ppm); at 6 the fit is
# least squares for the bulk and still cuts gross failures (15 ppm at a 0.3 ppm spread). Measured on
# six boxes x windows of real OCO-2 (docs/design.md, "The background's robustness").
HUBER_K = 6.0
# A weak prior per term (mean, sd): a window shorter than a year cannot tell a trend from the
# seasonal cycle, and an unconstrained fit of six months returned a trend of 26 ppm/yr with a 7 ppm
# cycle (real OCO-2, Amazon 2016 H2): right inside the window, absurd one month past it. The prior
# is the known growth of CO2 (2.0-2.9 ppm/yr in 2015-2024, docs/anchors.md) and cycles and
# gradients of a few ppm; where data determine a term the prior has no say.
PRIOR = {"intercept": (0.0, float("inf")), "trend": (2.4, 0.5), "annual_sin": (0.0, 3.0), "annual_cos": (0.0, 3.0),
         "semiannual_sin": (0.0, 2.0), "semiannual_cos": (0.0, 2.0), "latitude": (0.0, 3.0), "longitude": (0.0, 3.0)}


class BackgroundError(ValueError):
    pass


@dataclass(frozen=True)
class Background:
    coefficients: tuple[float, ...]  # over TERMS
    reference_years: float  # the trend's origin (years since 2015), the observations' mean
    reference_latitude: float
    reference_longitude: float
    n_fit: int = 0
    residual_sd_ppm: float = float("nan")  # robust (MAD) sd of the fit's residuals
    # The coefficients' covariance (ppm2 in TERMS' units, row-major, len(TERMS)^2 values): the
    # posterior of the weighted fit with the prior, days as the independent pieces. None for a
    # background fitted before it was kept (its maps have no true-column interval).
    covariance: tuple[float, ...] | None = None

    def basis(self, years: np.ndarray, doy_sin: np.ndarray, doy_cos: np.ndarray, latitude: np.ndarray,
              longitude: np.ndarray) -> np.ndarray:
        return design_matrix(years, doy_sin, doy_cos, latitude, longitude, self.reference_years,
                             self.reference_latitude, self.reference_longitude)

    def evaluate(self, years: np.ndarray, doy_sin: np.ndarray, doy_cos: np.ndarray, latitude: np.ndarray,
                 longitude: np.ndarray) -> np.ndarray:
        return self.basis(years, doy_sin, doy_cos, latitude, longitude) @ np.asarray(self.coefficients)

    def evaluate_features(self, X: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        columns = input_columns(feature_names)
        X = np.asarray(X, dtype=np.float64)
        return self.evaluate(*(X[:, i] for i in columns))

    def covariance_matrix(self) -> np.ndarray | None:
        if self.covariance is None:
            return None
        return np.asarray(self.covariance, np.float64).reshape(len(TERMS), len(TERMS))

    def basis_at(self, day: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """The design rows at days (days since 1970-01-01) and places, the time terms computed as
        the feature set computes them (tasks/covariates/features.py::time_features)."""
        years, doy_sin, doy_cos = time_terms(day)
        return self.basis(years, doy_sin, doy_cos, latitude, longitude)

    def variance_at(self, day: np.ndarray, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """The background's variance (ppm2) at days and places from its coefficients' uncertainty:
        small inside the window it was fitted on, growing with the distance in time from it as the
        trend and the seasonal cycle are extrapolated. Zeros when no covariance was kept."""
        C = self.covariance_matrix()
        if C is None:
            return np.zeros(np.broadcast(np.asarray(day), np.asarray(latitude)).shape)
        B = self.basis_at(day, latitude, longitude)
        return np.maximum(np.einsum("ij,jk,ik->i", B, C, B), 0.0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"terms": list(TERMS), "coefficients": list(self.coefficients),
                               "reference_years": self.reference_years, "reference_latitude": self.reference_latitude,
                               "reference_longitude": self.reference_longitude, "n_fit": self.n_fit,
                               "residual_sd_ppm": self.residual_sd_ppm}
        if self.covariance is not None:
            out["covariance"] = list(self.covariance)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Background":
        if list(data.get("terms", [])) != list(TERMS):
            raise BackgroundError(f"background terms {data.get('terms')} differ from this code's {list(TERMS)}")
        covariance = data.get("covariance")
        if covariance is not None and len(covariance) != len(TERMS) ** 2:
            raise BackgroundError(f"background covariance has {len(covariance)} values, expected {len(TERMS) ** 2}")
        return cls(tuple(float(c) for c in data["coefficients"]), float(data["reference_years"]),
                   float(data["reference_latitude"]), float(data["reference_longitude"]), int(data.get("n_fit", 0)),
                   float(data.get("residual_sd_ppm", float("nan"))),
                   tuple(float(c) for c in covariance) if covariance is not None else None)


# 2015-01-01 in days since 1970-01-01: the origin of the feature years_since_2015.
_DAY_2015 = 16436


def time_terms(day: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """years_since_2015, doy_sin, doy_cos of days given as days since 1970-01-01 (as the feature set)."""
    d = np.floor(np.asarray(day, np.float64)).astype(np.int64)
    dates = d.astype("datetime64[D]")
    day_of_year = (dates - dates.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    angle = 2 * np.pi * day_of_year / 365.25
    return (d - _DAY_2015) / 365.25, np.sin(angle), np.cos(angle)


def input_columns(feature_names: Sequence[str]) -> list[int]:
    names = list(feature_names)
    missing = [n for n in INPUTS if n not in names]
    if missing:
        raise BackgroundError(f"the background needs features {missing}, absent from the feature set")
    return [names.index(n) for n in INPUTS]


def design_matrix(years: np.ndarray, doy_sin: np.ndarray, doy_cos: np.ndarray, latitude: np.ndarray,
                  longitude: np.ndarray, reference_years: float, reference_latitude: float,
                  reference_longitude: float) -> np.ndarray:
    s, c = np.asarray(doy_sin, np.float64), np.asarray(doy_cos, np.float64)
    return np.column_stack([
        np.ones_like(s), np.asarray(years, np.float64) - reference_years, s, c,
        2 * s * c, c * c - s * s,  # sin and cos of twice the angle
        (np.asarray(latitude, np.float64) - reference_latitude) / SPACE_UNIT_DEG,
        (np.asarray(longitude, np.float64) - reference_longitude) / SPACE_UNIT_DEG,
    ])


def fit_background(X: np.ndarray, y: np.ndarray, feature_names: Sequence[str], weight: np.ndarray | None = None,
                   iterations: int = 20) -> Background:
    """Weighted Huber regression of y (ppm) on TERMS, by iteratively reweighted least squares."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    if len(y) < 2 * len(TERMS):
        raise BackgroundError(f"{len(y)} observations are too few for a background of {len(TERMS)} terms")
    if not (np.isfinite(y).all() and np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise BackgroundError("background fit: targets and weights must be finite, weights >= 0 and not all 0")
    years, doy_sin, doy_cos, lat, lon = (X[:, i] for i in input_columns(feature_names))
    reference = (float(np.average(years, weights=w)), float(np.average(lat, weights=w)),
                 float(np.average(lon, weights=w)))
    A = design_matrix(years, doy_sin, doy_cos, lat, lon, *reference)
    # Observations of one day share their errors (the day's tracks, its weather): the data count as
    # many independent pieces as there are days, which is what the prior is weighed against.
    w = w * (len(np.unique(np.round(years[w > 0] * 365.25))) / w.sum())  # a row of weight 0 is no day's data
    prior_mean = np.array([PRIOR[t][0] for t in TERMS])
    precision = np.array([0.0 if not np.isfinite(PRIOR[t][1]) else 1.0 / PRIOR[t][1] ** 2 for t in TERMS])
    robust = np.ones(len(y))
    beta = np.zeros(A.shape[1])
    scale = max(float(np.std(y)), 1e-3)
    for _ in range(iterations):
        ww = w * robust
        penalty = np.diag(precision) * scale ** 2
        beta_new = np.linalg.solve(A.T @ (ww[:, None] * A) + penalty, A.T @ (ww * y) + penalty @ prior_mean)
        residual = y - A @ beta_new
        scale = max(1.4826 * _weighted_median(np.abs(residual - _weighted_median(residual, w)), w), 1e-3)
        u = np.abs(residual) / (HUBER_K * scale)
        # Huber's weights, and none beyond twice the threshold (12 robust sd): a retrieval that far
        # off is a failure, not a tail, and even Huber's bounded influence let 5 % of them move a
        # trend by 0.1 ppm/yr (tests/test_background.py).
        robust = np.where(u <= 1, 1.0, np.where(u <= 2, 1.0 / np.maximum(u, 1e-12), 0.0))
        if np.allclose(beta_new, beta, atol=1e-6):
            beta = beta_new
            break
        beta = beta_new
    residual = y - A @ beta
    sd = 1.4826 * _weighted_median(np.abs(residual - _weighted_median(residual, w)), w)
    covariance = coefficient_covariance(A, residual, w * robust, precision)
    return Background(tuple(float(b) for b in beta), *reference, n_fit=len(y), residual_sd_ppm=float(sd),
                      covariance=tuple(float(c) for c in covariance.ravel()))


def coefficient_covariance(A: np.ndarray, residual: np.ndarray, weight: np.ndarray, precision: np.ndarray
                           ) -> np.ndarray:
    """The coefficients' posterior covariance: (A' W A / s2 + prior precision)^-1.

    `weight` sums to the number of days (fit_background): a day's observations share their error,
    so the data count as one piece of variance s2 per day, s2 the weighted mean squared residual
    (not the robust sd: the tails are part of what a day's level carries). Counted per cell the
    thousands of cells of a day would make the trend look known to a few hundredths of a ppm."""
    total = float(weight.sum())
    s2 = max(float(np.sum(weight * residual ** 2)) / total, 1e-6) if total > 0 else 1.0
    information = A.T @ (weight[:, None] * A) / s2 + np.diag(precision)
    return np.linalg.pinv(information, hermitian=True)


def weighted_quantile(values: np.ndarray, weight: np.ndarray, q: float) -> float:
    """The smallest value with at least a share q of the weight at or below it."""
    values = np.asarray(values)
    order = np.argsort(values)
    cumulative = np.cumsum(np.asarray(weight, np.float64)[order])
    return float(values[order][min(int(np.searchsorted(cumulative, q * cumulative[-1])), len(values) - 1)])


def _weighted_median(values: np.ndarray, weight: np.ndarray) -> float:
    return weighted_quantile(values, weight, 0.5)
