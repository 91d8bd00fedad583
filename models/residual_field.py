"""The daily anomaly: what the observations around a day say that the model does not.

A map is background + network anomaly + this field. The residuals of the fused observations
(observed - model) are not noise: a day's tracks share a level (weather, transport, the retrieval's
own day-to-day bias), and a region keeps a pattern for weeks that no covariate explains. Both are
carried to every cell by simple kriging of the residuals of nearby days, with a covariance of two
space-time components plus a nugget:

    C = s_local rho(d / L_local) exp(-|dt| / T_local) + s_regional rho(d / L_regional) exp(-|dt| / T_regional)
    nugget of a super-observation = noise_correlated + noise_independent / (independent soundings in it)

rho is a Matern correlation in space (smoothness 1/2, the exponential; 3/2; or 5/2), the same
for both components, chosen with the other parameters by the likelihood: an exponential fitted to a
smooth field needs a length several times the field's own to match its short-range correlation and
then keeps far cells correlated with a day's swath, so the variance there grows too little.

The parameters are fitted by maximum likelihood at each retrain on the training residuals (never
tuned by hand), the interval scale is calibrated on held-out blocks and whole held-out days, and
everything travels with the model (ONNX metadata), so the nightly path needs numpy and scipy only.

Observations are first averaged into super-observations (one per day and `superob_deg` cell): at
0.01 degree one sounding fills several cells and neighbouring soundings of a track share their
error, so cells are not independent observations; the super-observation's weight is its number of
independent soundings (sample column `weight`).

A map's field is solved on a coarse lattice (`lattice_deg`, a few km: the field's length scales are
tens of km and more) and interpolated bilinearly to the grid; its variance likewise.
"""

from __future__ import annotations

import json
import logging
import math
from statistics import NormalDist
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.linalg import cho_factor, cho_solve, solve_triangular
from scipy.optimize import minimize

from models.background import Background, weighted_quantile

log = logging.getLogger(__name__)

KM_PER_DEGREE_LAT = 110.57
KM_PER_DEGREE_LON_EQUATOR = 111.32
PARAMETERS = ("local_variance", "local_length_km", "local_time_days", "regional_variance", "regional_length_km",
              "regional_time_days", "noise_correlated", "noise_independent")
# The spatial correlations the likelihood chooses from (Matern smoothness 1/2, 3/2, 5/2; smoother
# ones are numerically ill-conditioned on dense super-observations). Fields fitted before the
# choice existed are exponential (matern12), which is what from_dict gives them.
SPATIAL_SHAPES = ("matern12", "matern32", "matern52")
# z of the central 68.27% of a normal: the interval is mean +- Z68 * sigma.
Z68 = 1.0
# Measured on the real development set (docs/design.md): 2 robust sd cut the whole-day and block
# RMSE of a southern box by 0.1-0.2 ppm and changed the others by under 0.03.
CLIP_MADS = 2.0


class ResidualFieldError(ValueError):
    pass


@dataclass(frozen=True)
class ResidualField:
    """Covariance parameters (variances in ppm2, lengths in km, times in days) and how to use them."""

    local_variance: float
    local_length_km: float
    local_time_days: float
    regional_variance: float
    regional_length_km: float
    regional_time_days: float
    noise_correlated: float
    noise_independent: float
    interval_scale: float = 1.0  # calibrated: sigma = scale * sqrt(field variance + noise_scale * point noise)
    noise_scale: float = 1.0
    window_days: int = 15  # observations up to this many days away inform a day
    superob_deg: float = 0.1
    lattice_deg: float = 0.05
    max_superobs: int = 2500  # nearest in time kept when a window holds more
    # Residuals are clipped to +-clip_ppm before averaging: retrievals a few ppm off (cloud, aerosol)
    # are common in real data and would otherwise carry a whole day's field (set at fit: CLIP_MADS
    # robust standard deviations of the training residuals).
    clip_ppm: float = float("inf")
    n_fit: int = 0
    # The true column's interval (no retrieval noise): sigma^2 = true_column_scale^2 x (field variance
    # + the background's variance left after conditioning) + unmodelled_variance. Calibrated on
    # held-out retrievals with their retrieval noise taken out (calibrate_true_column); None for a
    # field calibrated before it existed: its maps carry no true-column interval rather than an
    # uncalibrated one.
    true_column_scale: float | None = None
    # ppm2: the part of the map's error the field's covariance has no variance for (day-level errors
    # of a day's observed level, structure finer than the super-observations), the same at every
    # cell; 0 for fields calibrated before it (issue 22).
    unmodelled_variance: float = 0.0
    # A retrieval's noise variance is reported_noise_scale x its reported uncertainty^2, the scale
    # set on same-day neighbouring training samples (reported_noise_scale()); 1 before it was kept.
    reported_noise_scale: float = 1.0
    # The spatial correlation's shape (SPATIAL_SHAPES), chosen at the fit by the likelihood.
    spatial_shape: str = "matern12"

    def __post_init__(self) -> None:
        if self.spatial_shape not in SPATIAL_SHAPES:
            raise ResidualFieldError(f"residual field spatial_shape must be one of {list(SPATIAL_SHAPES)}, "
                                     f"got {self.spatial_shape!r}")
        for name in PARAMETERS + ("interval_scale", "noise_scale", "superob_deg", "lattice_deg", "clip_ppm"):
            value = getattr(self, name)
            if not (value >= 0 and (math.isfinite(value) or name == "clip_ppm")):
                raise ResidualFieldError(f"residual field {name} must be finite and >= 0, got {value}")
        scale = self.true_column_scale
        if scale is not None and not (math.isfinite(scale) and scale >= 0):
            raise ResidualFieldError(f"residual field true_column_scale must be finite and >= 0, got {scale}")
        for name in ("unmodelled_variance", "reported_noise_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ResidualFieldError(f"residual field {name} must be finite and >= 0, got {value}")
        if scale is not None and scale == 0 and self.unmodelled_variance == 0:
            raise ResidualFieldError("residual field true-column interval of width 0: scale and unmodelled variance are 0")
        for name in ("local_length_km", "local_time_days", "regional_length_km", "regional_time_days"):
            if getattr(self, name) <= 0:
                raise ResidualFieldError(f"residual field {name} must be > 0, got {getattr(self, name)}")

    @property
    def prior_variance(self) -> float:
        return self.local_variance + self.regional_variance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResidualField":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [p for p in PARAMETERS if p not in known]
        if missing:
            raise ResidualFieldError(f"residual field description lacks {missing}")
        return cls(**known)

    # -- covariance -------------------------------------------------------------------------
    def _log_params(self) -> np.ndarray:
        # The covariance's six only: a noise of 0 (allowed) has no logarithm.
        return np.log([getattr(self, p) for p in PARAMETERS[:6]])

    def covariance(self, xy_a: np.ndarray, t_a: np.ndarray, xy_b: np.ndarray, t_b: np.ndarray) -> np.ndarray:
        # The maps' kriging calls this on ~50,000 lattice nodes x the window's super-observations:
        # values only, one exponential per component (the fit's derivatives are _covariance's).
        D, DT = _distance(xy_a, xy_b), np.abs(t_a[:, None] - t_b[None, :])
        out = _component(self.spatial_shape, D, DT, self.local_variance, self.local_length_km, self.local_time_days)
        out += _component(self.spatial_shape, D, DT, self.regional_variance, self.regional_length_km,
                          self.regional_time_days)
        return out

    def nugget(self, weight: np.ndarray) -> np.ndarray:
        return self.noise_correlated + self.noise_independent / np.maximum(np.asarray(weight, np.float64), 1e-6)

    def point_noise(self) -> float:
        """The noise of one observation of one sounding: what a held-out retrieval adds to the map's error."""
        return self.noise_correlated + self.noise_independent


@dataclass(frozen=True)
class Superobs:
    """Residuals averaged per day and coarse cell: lon/lat (degree), day number, residual, weight."""

    lon: np.ndarray
    lat: np.ndarray
    day: np.ndarray  # days since 1970-01-01 (float)
    residual: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.residual)

    def subset(self, keep: np.ndarray) -> "Superobs":
        return Superobs(self.lon[keep], self.lat[keep], self.day[keep], self.residual[keep], self.weight[keep])


def day_number(days: npt.ArrayLike) -> np.ndarray:
    """Dates (anything pandas reads) -> days since 1970-01-01 as float."""
    values = pd.to_datetime(pd.Series(np.asarray(days))).to_numpy("datetime64[D]")
    return values.astype(np.int64).astype(np.float64)


def robust_sd(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if len(values) else float("nan")


def superobs(lon: np.ndarray, lat: np.ndarray, days: npt.ArrayLike, residual: np.ndarray, weight: np.ndarray | None,
             superob_deg: float, clip_ppm: float = float("inf")) -> Superobs:
    """Average residuals per (day, superob_deg cell), weighted by independent soundings, each clipped
    to +-clip_ppm about its day's weighted median residual.

    About the day's median, not about 0: a bad retrieval is one far from its day's others, while a
    whole day off the model is what the field is there to follow. Clipped about 0, a background
    drifting 2-3 ppm past its training window (the demo world, 60 days on) could be followed only
    up to the clip."""
    residual = np.asarray(residual, np.float64)
    weight = np.ones_like(residual) if weight is None else np.asarray(weight, np.float64)
    ok = np.isfinite(residual) & (weight > 0)
    day = day_number(days)
    if math.isfinite(clip_ppm) and ok.any():
        residual = residual.copy()
        centre = _day_medians(day[ok], residual[ok], weight[ok])
        residual[ok] = centre + np.clip(residual[ok] - centre, -clip_ppm, clip_ppm)
    frame = pd.DataFrame({"day": day[ok], "i": np.floor(np.asarray(lat)[ok] / superob_deg),
                          "j": np.floor(np.asarray(lon)[ok] / superob_deg), "w": weight[ok],
                          "wr": weight[ok] * residual[ok], "wlon": weight[ok] * np.asarray(lon)[ok],
                          "wlat": weight[ok] * np.asarray(lat)[ok]})
    if frame.empty:
        empty = np.empty(0)
        return Superobs(empty, empty, empty, empty, empty)
    g = frame.groupby(["day", "i", "j"], sort=True)[["w", "wr", "wlon", "wlat"]].sum()
    w = g["w"].to_numpy()
    return Superobs(g["wlon"].to_numpy() / w, g["wlat"].to_numpy() / w, g.index.get_level_values("day").to_numpy(
        np.float64), g["wr"].to_numpy() / w, w)


def _day_medians(day: np.ndarray, values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each value's day's weighted median."""
    days, which = np.unique(day, return_inverse=True)
    medians = np.array([weighted_quantile(values[which == k], weight[which == k], 0.5) for k in range(len(days))])
    return medians[which]


def _xy_km(lon: np.ndarray, lat: np.ndarray, lat0: float) -> np.ndarray:
    # An equirectangular projection about the region's latitude: within a region of a few hundred
    # km its distortion (under 2% over 10 degrees of latitude) is far below the length scales' uncertainty.
    return np.column_stack([np.asarray(lon, np.float64) * KM_PER_DEGREE_LON_EQUATOR * math.cos(math.radians(lat0)),
                            np.asarray(lat, np.float64) * KM_PER_DEGREE_LAT])


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a[:, None, 0] - b[None, :, 0]) ** 2 + (a[:, None, 1] - b[None, :, 1]) ** 2
    return np.sqrt(d2)


def _component(shape: str, D: np.ndarray, DT: np.ndarray, variance: float, length: float, time: float) -> np.ndarray:
    """variance x rho(D / length) x exp(-DT / time), rho the Matern shape's correlation (values only)."""
    root = {"matern12": 1.0, "matern32": math.sqrt(3.0), "matern52": math.sqrt(5.0)}.get(shape)
    if root is None:
        raise ResidualFieldError(f"unknown spatial shape {shape!r}; known: {list(SPATIAL_SHAPES)}")
    a = (root / length) * D
    out = np.exp(-a - DT / time)
    if shape == "matern32":
        out *= 1 + a
    elif shape == "matern52":
        out *= 1 + a * (1 + a / 3)
    out *= variance
    return out


def _spatial(shape: str, D: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray]:
    """The spatial correlation of a Matern shape at distances D, and its derivative by log(length)."""
    if shape == "matern12":  # the exponential
        a = D / length
        e = np.exp(-a)
        return e, a * e
    if shape == "matern32":
        a = math.sqrt(3.0) * D / length
        e = np.exp(-a)
        return (1 + a) * e, a * a * e
    if shape == "matern52":
        a = math.sqrt(5.0) * D / length
        e = np.exp(-a)
        return (1 + a + a * a / 3) * e, a * a * (1 + a) / 3 * e
    raise ResidualFieldError(f"unknown spatial shape {shape!r}; known: {list(SPATIAL_SHAPES)}")


def _covariance(logp: np.ndarray, D: np.ndarray, DT: np.ndarray, shape: str = "matern12"
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The two components' sum and its derivatives by the six log parameters."""
    s1, l1, t1, s2, l2, t2 = np.exp(logp[:6])
    rho1, drho1 = _spatial(shape, D, l1)
    rho2, drho2 = _spatial(shape, D, l2)
    e1, e2 = np.exp(-DT / t1), np.exp(-DT / t2)
    c1, c2 = s1 * rho1 * e1, s2 * rho2 * e2
    return c1 + c2, [c1, s1 * drho1 * e1, c1 * DT / t1, c2, s2 * drho2 * e2, c2 * DT / t2]


def _negative_log_likelihood(logp: np.ndarray, D: np.ndarray, DT: np.ndarray, r: np.ndarray,
                             inv_w: np.ndarray, shape: str = "matern12") -> tuple[float, np.ndarray]:
    K, derivatives = _covariance(logp, D, DT, shape)
    nc, ni = np.exp(logp[6]), np.exp(logp[7])
    K[np.diag_indices_from(K)] += nc + ni * inv_w
    try:
        factor = cho_factor(K, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return 1e12, np.zeros_like(logp)
    alpha = cho_solve(factor, r, check_finite=False)
    value = 0.5 * r @ alpha + np.log(np.diag(factor[0])).sum()
    # d nll / d theta = 0.5 tr((K^-1 - alpha alpha^T) dK/dtheta), with theta the log parameters.
    M = cho_solve(factor, np.eye(len(r)), check_finite=False) - np.outer(alpha, alpha)
    grad = [0.5 * np.sum(M * dK) for dK in derivatives]
    grad.append(0.5 * nc * np.trace(M))
    grad.append(0.5 * ni * np.sum(np.diag(M) * inv_w))
    return float(value), np.asarray(grad)


def fit_residual_field(obs: Superobs, lat0: float, seed: int = 0, max_points: int = 800,
                       max_window_days: int = 60, superob_deg: float = 0.1, lattice_deg: float = 0.05,
                       clip_ppm: float = float("inf"), shapes: tuple[str, ...] = SPATIAL_SHAPES) -> ResidualField:
    """Maximum-likelihood covariance parameters and spatial shape (one of `shapes`) from training
    residuals (super-observations made with `clip_ppm`, which the field keeps for the maps).

    At most `max_points` super-observations enter the likelihood (a seeded subsample): the
    parameters are few, and an n^3 factorisation per step bounds the retrain's time."""
    if len(obs) < 20:
        raise ResidualFieldError(f"{len(obs)} super-observations are too few to fit the residual field (need 20)")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(obs), min(max_points, len(obs)), replace=False))
    o = obs.subset(keep)
    xy = _xy_km(o.lon, o.lat, lat0)
    D, DT = _distance(xy, xy), np.abs(o.day[:, None] - o.day[None, :])
    r = o.residual - np.average(o.residual, weights=o.weight)
    inv_w = 1.0 / o.weight
    v = max(float(np.var(r)), 1e-4)
    extent = max(float(D.max()), 50.0)
    span = max(float(DT.max()), 2.0)
    bounds = [(np.log(1e-4 * v), np.log(4 * v)), (np.log(5.0), np.log(4 * extent)), (np.log(0.25), np.log(4 * span)),
              (np.log(1e-4 * v), np.log(4 * v)), (np.log(5.0), np.log(20 * extent)), (np.log(0.25), np.log(20 * span)),
              (np.log(1e-4 * v), np.log(4 * v)), (np.log(1e-4 * v), np.log(4 * v))]
    low, high = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    # The likelihood has a local optimum with no memory from day to day (both time scales at their
    # 0.25-day bound): from the first start alone a Sichuan demo's field landed there while a
    # start with a week-long part found a likelihood e^3.3 times higher on the same points, and a
    # field without memory leaves a day with no observations nothing but the background
    # (docs/design.md, "A third Sichuan run"). Both starts for every spatial shape, the best
    # optimum kept: the shapes have the same number of parameters, so the likelihood alone decides.
    starts = (np.log([0.25 * v, extent / 8, 2.0, 0.25 * v, extent, span / 2, 0.25 * v, 0.25 * v]),
              np.log([0.3 * v, extent / 3, min(7.0, span), 0.3 * v, extent / 2, 0.25, 0.05 * v, 0.25 * v]))
    fits = [(minimize(_negative_log_likelihood, np.clip(start, low, high), args=(D, DT, r, inv_w, shape), jac=True,
                      method="L-BFGS-B", bounds=bounds, options={"maxiter": 200}), shape)
            for shape in shapes for start in starts]
    result, shape = min(fits, key=lambda fit: float(fit[0].fun) if np.isfinite(fit[0].fun) else np.inf)
    p = np.exp(result.x)
    # The two components are interchangeable: name the shorter one local.
    if p[1] > p[4]:
        p = p[[3, 4, 5, 0, 1, 2, 6, 7]]
    # Observations further away in time than three of the longer time scale add almost nothing.
    window_days = int(np.clip(math.ceil(3 * max(p[2], p[5])), 3, max_window_days))
    local_v, local_km, local_days, regional_v, regional_km, regional_days, correlated, independent = map(float, p)
    return ResidualField(local_v, local_km, local_days, regional_v, regional_km, regional_days, correlated, independent,
                         window_days=window_days, superob_deg=superob_deg,
                         lattice_deg=lattice_deg, n_fit=len(o), clip_ppm=clip_ppm, spatial_shape=shape)


@dataclass
class Kriging:
    """The field conditioned on one set of super-observations (one Cholesky factor)."""

    field: ResidualField
    lat0: float
    obs: Superobs
    factor: tuple[np.ndarray, bool]  # scipy's cho_factor: (factor, lower)
    alpha: np.ndarray
    xy: np.ndarray

    def predict(self, lon: np.ndarray, lat: np.ndarray, day: float | np.ndarray,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (ppm, ppm2) of the field at points; variance excludes observation noise."""
        mean, var, _ = self.predict_with_background(lon, lat, day, None, chunk)
        return mean, var

    def predict_with_background(self, lon: np.ndarray, lat: np.ndarray, day: float | np.ndarray,
                                background: Background | None, chunk: int = 4096
                                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, variance and the background's variance left after conditioning (ppm, ppm2).

        The observations are residuals from a background whose coefficients are uncertain
        (covariance S): at a point with basis row b the map's error gains g' S g, g = b - B' lambda,
        lambda the kriging weights and B the basis at the observations. The map's own mean is
        unchanged: this is the error variance of the predictor the archive uses. Near a day's
        observations the weights carry the background's error with them (g ~ 0); a day far from
        every observation gets the whole b' S b, which grows as the trend and the seasonal cycle
        are extrapolated past the training window. Zeros without a background covariance."""
        lon = np.asarray(lon, np.float64).ravel()
        lat = np.asarray(lat, np.float64).ravel()
        days = np.broadcast_to(np.asarray(day, np.float64), lon.shape)
        mean = np.zeros(lon.size)
        var = np.full(lon.size, self.field.prior_variance)
        extra = np.zeros(lon.size)
        S = background.covariance_matrix() if background is not None else None
        if S is not None and background is not None:
            extra = background.variance_at(days, lat, lon)
        if len(self.obs) == 0:
            return mean, var, extra
        xy = _xy_km(lon, lat, self.lat0)
        L = np.tril(self.factor[0])
        U = None
        if S is not None and background is not None:
            U = solve_triangular(L, background.basis_at(self.obs.day, self.obs.lat, self.obs.lon), lower=True,
                                 check_finite=False)
        for start in range(0, lon.size, chunk):
            s = slice(start, start + chunk)
            k = self.field.covariance(xy[s], days[s], self.xy, self.obs.day)
            mean[s] = k @ self.alpha
            v = solve_triangular(L, k.T, lower=True, check_finite=False)
            var[s] = np.maximum(self.field.prior_variance - np.einsum("ij,ij->j", v, v), 0.0)
            if U is not None and S is not None and background is not None:
                g = background.basis_at(days[s], lat[s], lon[s]) - v.T @ U
                extra[s] = np.maximum(np.einsum("ij,jk,ik->i", g, S, g), 0.0)
        return mean, var, extra


def condition(field: ResidualField, obs: Superobs, lat0: float, around_day: float | None = None) -> Kriging:
    """Condition the field on observations (the `max_superobs` nearest in time to `around_day` if more)."""
    if around_day is not None and len(obs) > field.max_superobs:
        order = np.argsort(np.abs(obs.day - around_day), kind="stable")[: field.max_superobs]
        obs = obs.subset(np.sort(order))
    xy = _xy_km(obs.lon, obs.lat, lat0)
    if len(obs) == 0:
        return Kriging(field, lat0, obs, (np.zeros((0, 0)), True), np.zeros(0), xy)
    K = field.covariance(xy, obs.day, xy, obs.day)
    K[np.diag_indices_from(K)] += field.nugget(obs.weight)
    factor = cho_factor(K, lower=True, check_finite=False)
    return Kriging(field, lat0, obs, factor, cho_solve(factor, obs.residual, check_finite=False), xy)


def window(obs: Superobs, day: float, window_days: int, exclude_day: bool = False) -> Superobs:
    """The super-observations within `window_days` of `day` (without the day itself if asked)."""
    near = np.abs(obs.day - day) <= window_days
    if exclude_day:
        near &= obs.day != day
    return obs.subset(np.flatnonzero(near))


def predict_points(field: ResidualField, obs: Superobs, lat0: float, lon: np.ndarray, lat: np.ndarray,
                   days: np.ndarray, exclude_own_day: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Field mean and variance at scattered points, each day conditioned on its own window (the
    benchmark's and the calibration's path; maps use `predict_map`)."""
    mean, var, _ = predict_points_with_background(field, obs, lat0, lon, lat, days, None, exclude_own_day)
    return mean, var


def predict_points_with_background(field: ResidualField, obs: Superobs, lat0: float, lon: np.ndarray,
                                   lat: np.ndarray, days: np.ndarray, background: Background | None,
                                   exclude_own_day: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """predict_points and the background's variance left after conditioning (Kriging.predict_with_background)."""
    days = np.asarray(days, np.float64)
    mean, var, extra = np.zeros(len(days)), np.full(len(days), field.prior_variance), np.zeros(len(days))
    for day in np.unique(days):
        here = np.flatnonzero(days == day)
        kriging = condition(field, window(obs, day, field.window_days, exclude_own_day), lat0, around_day=day)
        mean[here], var[here], extra[here] = kriging.predict_with_background(
            np.asarray(lon)[here], np.asarray(lat)[here], day, background)
    return mean, var, extra


def calibrate_interval(field: ResidualField, holdouts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                       weights: dict[str, np.ndarray] | None = None) -> tuple[ResidualField, dict[str, float]]:
    """Scale the interval so that it holds 68.27% of held-out residuals in every holdout at once.

    holdouts: name -> (residual, field mean, field variance) of held-out observations predicted
    from the others (spatial blocks, whole days). Two numbers are calibrated: the overall scale and
    the share of the point noise; with one holdout only the scale. weights: name -> each held-out
    value's weight (its independent soundings; 1 when not given). Returns the field and each
    holdout's (weighted) coverage after calibration."""
    weights = weights or {}
    parts = {k: (np.asarray(r) - np.asarray(m), np.asarray(v),
                 np.asarray(weights[k], np.float64) if k in weights else np.ones(len(r)))
             for k, (r, m, v) in holdouts.items() if len(r) >= 10}
    parts = {k: p for k, p in parts.items() if p[2].sum() > 0}
    if not parts:
        return field, {}
    noise = field.point_noise()
    # Each holdout weighs the same in the pooled quantile, whatever its number of values.
    pooled_w = np.concatenate([w / w.sum() for _, _, w in parts.values()])

    def scaled(q: float) -> tuple[float, dict[str, float]]:
        z = {k: np.abs(e) / np.sqrt(v + q * noise) for k, (e, v, _) in parts.items()}
        scale = weighted_quantile(np.concatenate(list(z.values())), pooled_w, 0.6827)
        return scale, {k: float(np.average(zk <= scale, weights=parts[k][2])) for k, zk in z.items()}

    candidates = np.logspace(-2, 2, 41) if len(parts) > 1 else np.array([1.0])
    best = min(candidates, key=lambda q: max(abs(c - 0.6827) for c in scaled(q)[1].values()))
    scale, coverages = scaled(float(best))
    return replace(field, interval_scale=scale, noise_scale=float(best)), coverages


def interval_half_width(field: ResidualField, variance: np.ndarray) -> np.ndarray:
    """Half-width (ppm) of the 68% interval for a retrieval at a cell, given the field's variance there."""
    return field.interval_scale * Z68 * np.sqrt(np.asarray(variance) + field.noise_scale * field.point_noise())


def true_column_half_width(field: ResidualField, variance: np.ndarray,
                           extra_variance: np.ndarray | None = None) -> np.ndarray | None:
    """Half-width (ppm) of the 68% interval of the TRUE column at a cell (no retrieval noise), given
    the field's variance there and `extra_variance`, the background's variance left after
    conditioning (Kriging.predict_with_background; ppm2): Z68 x sqrt(a2 x (variance + extra) + u),
    a the true-column scale and u the unmodelled variance. None for a field without a calibrated
    true-column scale (champions exported before it): no interval rather than an uncalibrated one."""
    if field.true_column_scale is None:
        return None
    total = np.asarray(variance, np.float64)
    if extra_variance is not None:
        total = total + np.asarray(extra_variance, np.float64)
    a2 = field.true_column_scale ** 2
    return Z68 * np.sqrt(a2 * np.maximum(total, 0.0) + field.unmodelled_variance)


def held_out_noise(field: ResidualField, uncertainty: np.ndarray | None, n: int | None = None) -> np.ndarray:
    """The retrieval noise variance (ppm2) of held-out samples: reported_noise_scale x their reported
    uncertainty^2 (a sample's uncertainty is that of the inverse-variance mean of its soundings,
    tasks/gridding/cells.py). Without reported uncertainties (or where one is missing) the field's
    noise of one sounding (point_noise).

    Not the nugget at the sample's weight: the weight counts a GOSAT sounding spread over 80 cells
    as 1/80 in each, while each of those cells carries the sounding's whole noise; the nugget per
    weight made a held-out GOSAT cell's noise 80 times too large and hid the true column's part
    (the demo world: 0.73-2.1 ppm2 per held-out value where the retrievals carry 0.67-0.72)."""
    if uncertainty is None:
        return np.full(int(n or 0), field.point_noise())
    u = np.asarray(uncertainty, np.float64)
    noise = field.reported_noise_scale * u * u
    return np.where(np.isfinite(noise) & (u > 0), noise, field.point_noise())


# Neighbouring samples for the reported uncertainties' scale: same day, centres at most this far
# apart (degree; ~5 km): far enough that two 0.01-degree cells rarely share an OCO sounding, near
# enough that the true XCO2 hardly differs (the demo world: 0.95 at 0.03, 0.97-1.0 at 0.06).
NOISE_PAIR_DEG = 0.05
NOISE_PAIRS_PER_DAY = 4000  # samples of a day used at most (seeded): the scale needs few pairs
# Where no two samples of a day are that close (data binned coarser than the grid, e.g. the real
# benchmark's 0.25-degree bins), pairs reach the data's own spacing (this many times the median
# same-day nearest-neighbour distance: the 4 edge neighbours of a lattice, not its diagonals),
# at most NOISE_PAIR_MAX_DEG: the nearest samples are then the best there is, and the real change of
# XCO2 between them (an upper-bound reading) is the same as the benchmark's neighbour check reads.
NOISE_PAIR_SPACINGS = 1.2
NOISE_PAIR_MAX_DEG = 0.5


def pair_distance(lon: np.ndarray, lat: np.ndarray, days: npt.ArrayLike, seed: int = 0) -> float:
    """The distance (degree) within which same-day samples are paired for the noise scale:
    NOISE_PAIR_DEG where the data are that dense, else NOISE_PAIR_SPACINGS x their median same-day
    nearest-neighbour distance, at most NOISE_PAIR_MAX_DEG."""
    from scipy.spatial import cKDTree

    lon, lat, day = np.asarray(lon, np.float64), np.asarray(lat, np.float64), day_number(days)
    rng = np.random.default_rng(seed)
    nearest = []
    for d in np.unique(day):
        idx = np.flatnonzero(day == d)
        if len(idx) > NOISE_PAIRS_PER_DAY:
            idx = rng.choice(idx, NOISE_PAIRS_PER_DAY, replace=False)
        if len(idx) < 2:
            continue
        points = np.column_stack([lon[idx], lat[idx]])
        dist, _ = cKDTree(points).query(points, k=2)
        nearest.append(dist[:, 1])
    if not nearest:
        return NOISE_PAIR_DEG
    spacing = float(np.median(np.concatenate(nearest)))
    return float(min(max(NOISE_PAIR_DEG, NOISE_PAIR_SPACINGS * spacing), NOISE_PAIR_MAX_DEG))


def reported_noise_scale(lon: np.ndarray, lat: np.ndarray, days: npt.ArrayLike, value: np.ndarray,
                         uncertainty: np.ndarray, n_soundings: np.ndarray | None = None,
                         max_deg: float | None = None, seed: int = 0, min_pairs: int = 100) -> float | None:
    """k such that k x reported uncertainty^2 is a sample's retrieval noise variance, from same-day
    pairs of neighbouring samples, independent of any model: for two samples of the same true value
    with independent noise, (a - b) / sqrt(ua2 + ub2) is normal with variance k. Read at the 68.27 %
    quantile of its absolute value (as the intervals are), so a few failed retrievals do not set
    it. Two samples must not share a sounding (a GOSAT footprint fills ~80 cells): with
    `n_soundings` only samples of one sounding each count, and pairs of equal values (the same
    sounding) are left out; samples of several soundings may share one of them and read k low
    (the demo world: 0.94 with them, 0.97 without; the retrievals' own, against the truth, 0.92-1.08). The real change
    of XCO2 over a few km adds a little. Pairs within `max_deg`; by default `pair_distance`, which
    reaches the data's own spacing where they are binned coarser. None with fewer than `min_pairs`
    pairs."""
    from scipy.spatial import cKDTree

    if max_deg is None:
        max_deg = pair_distance(lon, lat, days, seed)
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    value, u = np.asarray(value, np.float64), np.asarray(uncertainty, np.float64)
    day = day_number(days)
    ok = np.isfinite(value) & np.isfinite(u) & (u > 0)
    if n_soundings is not None:
        ok &= np.asarray(n_soundings) == 1
    rng = np.random.default_rng(seed)
    ratios = []
    for d in np.unique(day[ok]):
        idx = np.flatnonzero(ok & (day == d))
        if len(idx) > NOISE_PAIRS_PER_DAY:
            idx = np.sort(rng.choice(idx, NOISE_PAIRS_PER_DAY, replace=False))
        if len(idx) < 2:
            continue
        pairs = cKDTree(np.column_stack([lon[idx], lat[idx]])).query_pairs(max_deg, output_type="ndarray")
        if not len(pairs):
            continue
        i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
        diff = value[i] - value[j]
        distinct = diff != 0
        ratios.append(np.abs(diff[distinct]) / np.sqrt(u[i][distinct] ** 2 + u[j][distinct] ** 2))
    r = np.concatenate(ratios) if ratios else np.array([])
    if r.size < min_pairs:
        return None
    return float((np.quantile(r, 0.6827) / Z68) ** 2)


# Held-out values are grouped by the true-column variance they are predicted with (this many
# quantile bins per holdout): the mean squared error less the noise, against the mean variance,
# gives the scale (slope) and the unmodelled variance (intercept). Chosen on the first demo world
# (docs/design.md): 1 bin (means only) and 5 bins both gave 67-71 % past its window.
TRUE_COLUMN_BINS = 5
# Held-out errors beyond this many sd of (noise + the field's prior variance) are failed retrievals,
# not the map's error: left out of the moments (squares let a few of them set the mean).
TRUE_COLUMN_OUTLIER_SD = 5.0

TrueColumnSet = tuple[np.ndarray, np.ndarray, np.ndarray]  # (error, true-column variance, noise variance)


def level_excess_variance(error: np.ndarray, noise: np.ndarray, weight: np.ndarray, level: float = 0.6827) -> float:
    """The variance s2 that, added to each value's noise variance, makes Z x sqrt(noise + s2) hold
    `level` of the errors (weighted; Z the normal quantile of that level): the true column's part of
    held-out errors, read at the intervals' own level. Negative where the noise alone holds more.

    Why not the mean of error^2 - noise: retrieval errors have heavy tails (real OCO-2 bins: the mean
    square of same-day neighbour differences is 2.4-2.8x their 68 % reading), the intervals are 68 %
    intervals calibrated at that level (band 2 by its quantile, the noise check by its pairs' 68 %
    reading), and a mean square puts the tails into the true column's part: on real values the true
    column's interval came out wider than the retrieval's (south: implied noise -1.2 ppm2 against
    1.2 from the pairs). Why not a quantile of |error| alone: the noises differ from value to value,
    and a mixture's 68 % reading is below its mean variance."""
    e, n, w = (np.asarray(x, np.float64) for x in (error, noise, weight))
    z = NormalDist().inv_cdf(0.5 + level / 2)

    def held(s2: float) -> float:
        return float(np.average(np.abs(e) <= z * np.sqrt(np.maximum(n + s2, 0.0)), weights=w))

    low, high = -float(np.min(n)), float(np.max(e ** 2)) / z ** 2 + 1.0
    if held(low) >= level:
        return low
    for _ in range(60):  # bisection: the share held grows with s2
        mid = 0.5 * (low + high)
        low, high = (low, mid) if held(mid) >= level else (mid, high)
    return 0.5 * (low + high)


# The true column's scale is read where its error shows through the retrievals' noise (held-out
# whole days: the field's variance there is comparable to the noise) and is kept only where the
# held-out days determine it: resampled by day this many times, the field's own variance (scale 1)
# stays unless it falls outside the middle TRUE_COLUMN_SCALE_LEVEL of the resampled scales. The
# demo worlds (docs/design.md, "Band 3's scale and floor"): the scale read from 30 days spanned
# 0.4-1.1 (Sichuan), 0.1-0.8 and 0.8-6 (two small worlds) in 90 % of resamplings.
TRUE_COLUMN_SCALE_RESAMPLES = 200
TRUE_COLUMN_SCALE_LEVEL = 0.9

# (mean V, the true-column part read at the intervals' level, the bin's share of its holdout's weight)
_LevelRow = tuple[float, float, float]


def _level_rows(field: ResidualField, e: np.ndarray, v: np.ndarray, n: np.ndarray, w: np.ndarray,
                bins: int) -> list[_LevelRow]:
    """One holdout's values binned by V (quantile bins), each bin's true-column part at the level."""
    keep = np.abs(e) <= TRUE_COLUMN_OUTLIER_SD * np.sqrt(n + field.prior_variance)
    e, v, n, w = e[keep], v[keep], n[keep], w[keep]
    if w.sum() <= 0:
        return []
    edges = np.quantile(v, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        here = which == b
        if here.sum() < 10 or w[here].sum() <= 0:
            continue
        rows.append((float(np.average(v[here], weights=w[here])), level_excess_variance(e[here], n[here], w[here]),
                     float(w[here].sum() / w.sum())))
    return rows


def _joint_fit(rows: list[_LevelRow]) -> tuple[float, float]:
    """(a2, u) >= 0 by weighted least squares of the rows' parts against their mean V."""
    from scipy.optimize import nnls

    R = np.asarray(rows, np.float64)
    root = np.sqrt(R[:, 2])
    (a2, u), _ = nnls(np.column_stack([R[:, 0], np.ones(len(R))]) * root[:, None], R[:, 1] * root)
    return float(a2), float(u)


def _floor(rows: list[_LevelRow], a2: float) -> float:
    """The unmodelled variance u >= 0 the rows show beyond a2 x V (their weighted mean excess)."""
    R = np.asarray(rows, np.float64)
    return max(0.0, float(np.average(R[:, 1] - a2 * R[:, 0], weights=R[:, 2])))


def _scale_and_floor(scale_rows: list[_LevelRow], floor_rows: list[_LevelRow]) -> tuple[float, float]:
    """a2 from the rows where the true column's error shows (its part less the floor, over their mean
    V), u from the rows near the observations (their excess over a2 V), alternated to agreement."""
    S = np.asarray(scale_rows, np.float64)
    a2, u = 1.0, 0.0
    for _ in range(100):
        a2_new = max(0.0, float(np.average(S[:, 1] - u, weights=S[:, 2]) / np.average(S[:, 0], weights=S[:, 2])))
        u_new = _floor(floor_rows, a2_new)
        done = abs(a2_new - a2) < 1e-9 and abs(u_new - u) < 1e-12
        a2, u = a2_new, u_new
        if done:
            break
    return a2, u


def calibrate_true_column(field: ResidualField, holdouts: dict[str, TrueColumnSet],
                          weights: dict[str, np.ndarray] | None = None,
                          diagnostic: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None,
                          bins: int = TRUE_COLUMN_BINS, scale_from: str | None = None,
                          days: dict[str, np.ndarray] | None = None, seed: int = 0
                          ) -> tuple[ResidualField, dict[str, float]]:
    """The true column's scale a and unmodelled variance u, from held-out retrievals without their truth.

    holdouts: name -> (error = held-out residual - field mean, V = the true-column error's variance
    before scaling: field variance + the background's left after conditioning, N = the value's
    retrieval noise variance: held_out_noise, from its reported uncertainty, not from the field's
    fit); weights: each held-out value's independent soundings. A held-out error is the true
    column's error plus the retrieval's noise, independent of each other, so
    error ~ sqrt(a2 V + u + N) x a standard error. The values of each holdout are binned by V
    (`bins` quantile bins); each bin's true-column part is read at the intervals' level
    (`level_excess_variance`: the s2 with Z68 sqrt(N + s2) holding 68.27 % of its errors).

    With `scale_from` (the holdout whose errors show the true column's: whole days, where V is
    comparable to the noise) and another holdout, a2 is read on the first and u on the others (near
    the observations, where the map's floor lives and V is small), alternated to agreement
    (_scale_and_floor); with `days` (name -> each value's day) the scale holds only where the held-out
    days determine it: resampled by day TRUE_COLUMN_SCALE_RESAMPLES times (seeded), a2 = 1 (the
    field's own variance, from the likelihood) unless 1 falls outside the middle
    TRUE_COLUMN_SCALE_LEVEL of the resampled a2, and u then read again at that a2. Why: one line
    through all bins set u by extrapolating the days' bins to V = 0, and a2 from ~30 held-out days
    swung by a factor 2-3 between resamplings of them, neither transferring to the maps (the demo
    worlds, docs/design.md). Without them, (a2, u) >= 0 by weighted least squares of all bins' parts
    against their mean V, each holdout weighing the same.

    At the level, not by the bins' mean error^2 - N: real retrievals' heavy tails then made the true
    column's interval wider than the retrieval's (level_excess_variance). Returns the field and each
    holdout's coverage of the retrievals by sqrt(a2 V + u + N) (the check of the fit, not of the
    truth), and that of each `diagnostic` set (name -> (error, V, N, weight)), scored but not fitted
    to. No scale (None) when the held-out values see no true-column error."""
    weights = weights or {}
    parts = {k: (np.asarray(e, np.float64), np.asarray(v, np.float64), np.asarray(n, np.float64),
                 np.asarray(weights[k], np.float64) if k in weights else np.ones(len(e)))
             for k, (e, v, n) in holdouts.items() if len(e) >= 10}
    parts = {k: p for k, p in parts.items() if p[3].sum() > 0}
    if not parts:
        return field, {}
    rows = {k: _level_rows(field, *p, bins) for k, p in parts.items()}
    rows = {k: r for k, r in rows.items() if r}
    if not rows:
        return replace(field, true_column_scale=None), {}
    near = [r for k, rs in rows.items() if k != scale_from for r in rs]
    if scale_from in rows and near:
        a2, u = _scale_and_floor(rows[scale_from], near)
        if days is not None and scale_from in days:
            low, high = _scale_range(field, parts[scale_from], np.asarray(days[scale_from]), near, bins, seed)
            kept = not low <= 1.0 <= high
            log.info("true column's scale: a2 %.3f read on %s (%.3f-%.3f in %.0f %% of resamplings of its days): %s",
                     a2, scale_from, low, high, 100 * TRUE_COLUMN_SCALE_LEVEL,
                     "kept" if kept else "not told apart from 1, the field's own variance kept")
            if not kept:
                a2, u = 1.0, _floor(near, 1.0)
    else:
        a2, u = _joint_fit([r for rs in rows.values() for r in rs])
    # Nothing left once the noise is taken out: the true column's error is not visible in these
    # held-out values, and no interval is better than a made-up one.
    if not (np.isfinite(a2) and np.isfinite(u)) or a2 + u <= 1e-8:
        return replace(field, true_column_scale=None), {}
    fitted = replace(field, true_column_scale=float(math.sqrt(a2)), unmodelled_variance=float(u))

    def covered(e: np.ndarray, v: np.ndarray, n: np.ndarray, w: np.ndarray) -> float:
        return float(np.average(np.abs(e) <= Z68 * np.sqrt(a2 * v + u + n), weights=w))

    coverage = {k: covered(*p) for k, p in parts.items()}
    for k, (e, v, n, w) in (diagnostic or {}).items():  # scored at the chosen scale, not fitted to
        if len(e) and np.sum(w) > 0:
            coverage[k] = covered(np.asarray(e), np.asarray(v), np.asarray(n), np.asarray(w))
    return fitted, coverage


def _scale_range(field: ResidualField, part: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                 days: np.ndarray, near: list[_LevelRow], bins: int, seed: int) -> tuple[float, float]:
    """The middle TRUE_COLUMN_SCALE_LEVEL of a2 over resamplings of the scale holdout's days (whole
    days drawn with replacement: a day's values share its field and level, so the day is the unit)."""
    e, v, n, w = part
    unique, inverse = np.unique(days, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(unique))]
    if len(members) < 3:  # too few days to tell: the field's own variance
        return -math.inf, math.inf
    rng = np.random.default_rng(seed + 11)
    scales = []
    for _ in range(TRUE_COLUMN_SCALE_RESAMPLES):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        resampled = _level_rows(field, e[idx], v[idx], n[idx], w[idx], bins)
        if resampled:
            scales.append(_scale_and_floor(resampled, near)[0])
    if not scales:
        return -math.inf, math.inf
    tail = (1 - TRUE_COLUMN_SCALE_LEVEL) / 2
    low, high = np.quantile(scales, [tail, 1 - tail])
    return float(low), float(high)


def predict_map(field: ResidualField, obs: Superobs, lat0: float, lons: np.ndarray, lats: np.ndarray,
                day: float, inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Field mean and variance on a grid [len(lats), len(lons)] (cell centres), solved on a coarse
    lattice and interpolated bilinearly; NaN outside `inside` when given."""
    mean, var, _ = predict_map_with_background(field, obs, lat0, lons, lats, day, None, inside)
    return mean, var


def predict_map_with_background(field: ResidualField, obs: Superobs, lat0: float, lons: np.ndarray,
                                lats: np.ndarray, day: float, background: Background | None,
                                inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """predict_map and the background's variance left after conditioning, on the same grid."""
    from scipy.interpolate import RegularGridInterpolator

    kriging = condition(field, window(obs, day, field.window_days), lat0, around_day=day)
    step = max(field.lattice_deg, float(abs(lons[1] - lons[0])) if len(lons) > 1 else field.lattice_deg)
    lat_nodes = _nodes(lats, step)
    lon_nodes = _nodes(lons, step)
    LON, LAT = np.meshgrid(lon_nodes, lat_nodes)
    if inside is None:
        rows, cols = (a.ravel() for a in np.meshgrid(np.arange(len(lats)), np.arange(len(lons)), indexing="ij"))
    else:
        rows, cols = np.nonzero(inside)
    # Kriging is the map's cost (a province's box: ~50,000 lattice nodes x the window's
    # super-observations): only the nodes that interpolate a cell inside the boundary are solved
    # (a province fills about a third of its box), and only those cells interpolated (issue 23).
    needed = _nodes_needed(lat_nodes, lon_nodes, lats[rows], lons[cols])
    out_nodes = [np.zeros(LAT.size) for _ in range(3)]
    for target, values in zip(out_nodes, kriging.predict_with_background(
            LON.ravel()[needed], LAT.ravel()[needed], day, background)):
        target[needed] = values
    points = np.column_stack([np.asarray(lats, np.float64)[rows], np.asarray(lons, np.float64)[cols]])
    out = []
    for values in out_nodes:
        interp = RegularGridInterpolator((lat_nodes, lon_nodes), values.reshape(LAT.shape), method="linear",
                                         bounds_error=False, fill_value=None)
        grid = np.full((len(lats), len(lons)), np.nan, dtype=np.float32)
        grid[rows, cols] = interp(points).astype(np.float32)
        out.append(grid)
    return out[0], np.maximum(out[1], 0), np.maximum(out[2], 0)


def _nodes_needed(lat_nodes: np.ndarray, lon_nodes: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Flat indices (row-major over [lat_nodes, lon_nodes]) of the lattice nodes that bilinear
    interpolation at the points reads: each point's cell corners, and one node more either side so
    that a point on a node's line never misses the node the interpolator picks."""
    i = np.clip(np.searchsorted(lat_nodes, lat) - 1, 0, len(lat_nodes) - 2)
    j = np.clip(np.searchsorted(lon_nodes, lon) - 1, 0, len(lon_nodes) - 2)
    cells = np.unique(i * len(lon_nodes) + j)
    i, j = np.divmod(cells, len(lon_nodes))
    mask = np.zeros((len(lat_nodes), len(lon_nodes)), dtype=bool)
    for di in (-1, 0, 1, 2):
        for dj in (-1, 0, 1, 2):
            mask[np.clip(i + di, 0, len(lat_nodes) - 1), np.clip(j + dj, 0, len(lon_nodes) - 1)] = True
    return np.flatnonzero(mask)


def _nodes(centres: np.ndarray, step: float) -> np.ndarray:
    lo, hi = float(np.min(centres)), float(np.max(centres))
    n = max(2, int(math.ceil((hi - lo) / step)) + 1)
    return np.linspace(lo, hi, n)
