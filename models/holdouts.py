"""A retrain's holdouts and the parts of the map fitted on them (pure functions, no Prefect).

Samples are split into whole spatial blocks nobody trained on, whole days nobody trained on, a
random holdout (the paper's protocol, optimistic: its cells sit beside training cells of the same
tracks), an early-stopping set and the fit set. The blocks and the days are each halved: one half
calibrates (the network anomaly's scale, the interval), the other half only scores, so the headline
numbers never come from data that tuned them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field as dataclass_field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from models.evaluation import random_split, regression_metrics
from models.background import Background
from models.residual_field import (CLIP_MADS, SPATIAL_SHAPES, ResidualField, Superobs, calibrate_interval,
                                   calibrate_true_column, day_number, fit_residual_field, held_out_noise, interval_half_width,
                                   predict_points_with_background, reported_noise_scale, robust_sd, superobs,
                                   true_column_half_width)
from models.validation import group_holdout, spatial_block_ids

if TYPE_CHECKING:  # models.training imports torch, which reading a holdout share must not load
    from models.training import TrainedModel


@dataclass(frozen=True)
class Holdouts:
    """Index sets of one retrain (into the sample table)."""

    fit: np.ndarray
    early_stopping: np.ndarray
    random: np.ndarray
    blocks_calibration: np.ndarray
    blocks_score: np.ndarray
    days_calibration: np.ndarray
    days_score: np.ndarray
    spatial_is_blocks: bool

    @property
    def spatial(self) -> np.ndarray:
        return np.sort(np.concatenate([self.blocks_calibration, self.blocks_score]))

    @property
    def whole_days(self) -> np.ndarray:
        return np.sort(np.concatenate([self.days_calibration, self.days_score]))

    @property
    def training(self) -> np.ndarray:
        """Every sample the model and the field may use (fit, early stopping and the random holdout)."""
        return np.sort(np.concatenate([self.fit, self.early_stopping, self.random]))

    @property
    def gate(self) -> np.ndarray:
        """What the promotion compares models on: the scoring halves of blocks and days."""
        return np.sort(np.concatenate([self.blocks_score, self.days_score]))

    @property
    def all_but_gate(self) -> np.ndarray:
        """What the deployed background is refitted on once the share and the interval are chosen:
        every sample but the scoring halves, so the gate and the headline scores stay unseen."""
        return np.sort(np.concatenate([self.training, self.blocks_calibration, self.days_calibration]))


def _halves(groups: np.ndarray, idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(idx) == 0:
        return idx, idx
    if len(np.unique(groups[idx])) >= 2:
        a, b = group_holdout(groups[idx], 0.5, seed)
    else:
        a, b = random_split(len(idx), 0.5, seed)
    return np.sort(idx[a]), np.sort(idx[b])


def cap(idx: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    # Caps keep CPU-only runs (the demo) short; the paper's setting is no cap.
    return np.sort(rng.choice(idx, limit, replace=False)) if limit and len(idx) > limit else idx


def split_samples(latitude: np.ndarray, longitude: np.ndarray, days: np.ndarray, fraction: float, block_km: float,
                  seed: int, max_training: int | None = None, max_validation: int | None = None) -> Holdouts:
    """Whole days (about `fraction` of the samples) first, then whole blocks of the rest, then the
    random holdout and early stopping from what remains."""
    n = len(latitude)
    rng = np.random.default_rng(seed)
    day_ids = day_number(days).astype(np.int64)
    everything = np.arange(n)
    if len(np.unique(day_ids)) >= 3:
        rest, held_days = group_holdout(day_ids, fraction, seed + 11)
    else:
        rest, held_days = everything, np.array([], dtype=np.int64)
    blocks = spatial_block_ids(latitude, longitude, block_km=block_km)
    spatial_is_blocks = len(np.unique(blocks[rest])) >= 2
    if spatial_is_blocks:
        keep, held_blocks = group_holdout(blocks[rest], fraction, seed)
        held_blocks, rest = rest[held_blocks], rest[keep]
    else:  # a region smaller than one block: nothing to hold out by area
        held_blocks = np.array([], dtype=np.int64)
    inner_rest, inner_random = random_split(len(rest), fraction, seed)
    random_idx, rest = rest[inner_random], rest[inner_rest]
    inner_fit, inner_stop = random_split(len(rest), fraction, seed + 1)
    blocks_cal, blocks_score = _halves(blocks, held_blocks, seed + 2)
    days_cal, days_score = _halves(day_ids, held_days, seed + 3)
    return Holdouts(
        fit=cap(rest[inner_fit], max_training, rng), early_stopping=cap(rest[inner_stop], max_validation, rng),
        random=cap(random_idx, max_validation, rng),
        blocks_calibration=cap(blocks_cal, max_validation, rng), blocks_score=cap(blocks_score, max_validation, rng),
        days_calibration=cap(days_cal, max_validation, rng), days_score=cap(days_score, max_validation, rng),
        spatial_is_blocks=spatial_is_blocks)


def anomaly_scale(residual_from_background: np.ndarray, network_anomaly: np.ndarray, weight: np.ndarray) -> float:
    """The share in [0, 1] of the network's anomaly that held-out data support (weighted least squares
    of the residual from the background on the anomaly): 0 when the covariates carry nothing the
    background has not, 1 when the network generalises."""
    a = np.asarray(network_anomaly, np.float64)
    r = np.asarray(residual_from_background, np.float64)
    w = np.asarray(weight, np.float64)
    denominator = float(np.sum(w * a * a))
    if denominator <= 0 or not np.isfinite(denominator):
        return 0.0
    return float(np.clip(np.sum(w * a * r) / denominator, 0.0, 1.0))


# Candidate shares of the network anomaly in the map (tasks/steps/retrain.py::fit_daily_field).
ANOMALY_SHARES = (0.0, 0.5, 1.0)


def simplest_share(candidates: list[tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]],
                   days: dict[str, np.ndarray]) -> float:
    """The smallest share whose held-out error is within one standard error of the best share's
    (the one-standard-error rule: the simpler map unless the data clearly prefer the richer one).

    candidates: (share, {holdout: (observed - background - share x anomaly, field mean)}) over the
    same held-out points for every share; days: {holdout: day of each point}. The error is the mean
    over holdouts of the mean squared error; its standard error comes from the paired differences
    to the best share, summed per day (a day's errors share its track level, so days, not points,
    are the independent pieces). With a few dozen held-out days, 1.0 often wins by noise alone
    (real OCO-2, amazon 2016 H2: 0.03 ppm worse on whole days than share 0, docs/design.md)."""
    if not candidates:
        raise ValueError("no candidate shares to choose from")
    names = sorted(set.intersection(*(set(parts) for _, parts in candidates)))

    def errors(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        return {n: (np.asarray(parts[n][0], np.float64) - np.asarray(parts[n][1], np.float64)) ** 2 for n in names}

    squared = [(share, errors(parts)) for share, parts in candidates]
    usable = [n for n in names if len(squared[0][1][n])]
    if not usable:
        return float(min(share for share, _ in candidates))
    mse = [float(np.mean([np.mean(e[n]) for n in usable])) for _, e in squared]
    best = int(np.argmin(mse))
    for i in sorted(range(len(squared)), key=lambda k: squared[k][0]):
        if squared[i][0] >= squared[best][0]:
            break
        # Per day: each holdout's paired differences, weighted so that holdouts count equally.
        per_day: dict[float, float] = {}
        for n in usable:
            d = (squared[i][1][n] - squared[best][1][n]) / (len(squared[i][1][n]) * len(usable))
            for day, value in zip(np.asarray(days[n]).tolist(), d.tolist()):
                per_day[day] = per_day.get(day, 0.0) + value
        totals = np.array(list(per_day.values()))
        k = len(totals)
        se = float(np.sqrt(k / (k - 1) * np.sum((totals - totals.mean()) ** 2))) if k > 1 else float("inf")
        if mse[i] - mse[best] <= se:
            return float(squared[i][0])
    return float(squared[best][0])


@dataclass(frozen=True)
class NetworkShare:
    """The network anomaly's share in a model's maps, in the words a modeler reads in the registry,
    the retrain's and the demo's summaries: on real data the share has been 0 on every box measured
    (docs/benchmark-real.md), so the maps do not use the network at all, which nobody should have
    to infer from a number called anomaly_scale.

    with_field: the retrain fitted a daily-anomaly field (the maps add it); with_background: the
    network learned the anomaly from a background (a model without one maps the network alone)."""

    share: float
    with_field: bool
    with_background: bool = True

    @property
    def network_used(self) -> bool:
        return self.share > 0 or not self.with_background

    @property
    def formula(self) -> str:
        """What the maps are: 'background + 0.50 x network anomaly + daily-anomaly field'."""
        if not self.with_background:
            terms = ["network"]
        else:
            terms = ["background"] + ([f"{self.share:.2f} x network anomaly"] if self.share > 0 else [])
        return " + ".join(terms + (["daily-anomaly field"] if self.with_field else []))

    @property
    def reading(self) -> str:
        """'network share 0.00: the maps are background + daily-anomaly field (the network is not used)'."""
        unused = "" if self.network_used else " (the network is not used)"
        return f"network share {self.share:.2f}: the maps are {self.formula}{unused}"

    @property
    def in_map(self) -> str:
        """The registry tag's value: 'no (share 0.00: maps are background + daily-anomaly field)'."""
        return f"{'yes' if self.network_used else 'no'} (share {self.share:.2f}: maps are {self.formula})"

    @property
    def sentence(self) -> str:
        """One sentence for a registered version's description."""
        unused = "; its network is not used" if not self.network_used else ""
        return f"Network share {self.share:.2f}: this version's maps are {self.formula}{unused}."

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "network_used": self.network_used, "in_map": self.in_map,
                "reading": self.reading}

    @classmethod
    def of(cls, trained: TrainedModel) -> NetworkShare:
        """A trained model's (imported for the type checker only, so that no torch loads)."""
        return cls(float(trained.anomaly_scale), trained.residual_field is not None, trained.background is not None)


@dataclass(frozen=True)
class FieldFit:
    field: ResidualField
    observations: Superobs  # the training super-observations the held-out sets are predicted from
    calibration_coverage: dict[str, float]
    # name -> (residual, field mean, field variance) of the calibration halves
    calibration_predictions: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = dataclass_field(default_factory=dict)
    # name -> coverage of the held-out retrievals by the true-column interval plus their retrieval noise
    true_column_coverage: dict[str, float] = dataclass_field(default_factory=dict)


def fit_field(frame: pd.DataFrame, residual: np.ndarray, training: np.ndarray,
              calibration: dict[str, np.ndarray], seed: int, superob_deg: float = 0.1,
              lattice_deg: float = 0.05, cross_validate: bool = False, block_km: float = 50.0,
              residual_without: Callable[[np.ndarray], np.ndarray] | None = None,
              background: Background | None = None,
              background_without: Callable[[np.ndarray], Background] | None = None,
              shapes: tuple[str, ...] = SPATIAL_SHAPES) -> FieldFit:
    """The daily-anomaly field from the training samples' residuals (observed - model), its interval
    calibrated on the held-out sets in `calibration` (name -> indices), each predicted from the
    training samples only. frame: the samples (latitude, longitude, day, weight).

    cross_validate: the interval is also calibrated on folds of the training samples (whole blocks
    of `block_km`, whole days; each fold predicted from the others), which multiplies the data it
    rests on: a half of a few held-out days is too few to set a 68% interval.
    residual_without(rest): every sample's residual from a model refitted on the samples `rest`
    only; with it each fold's residuals come from a background that never saw the fold, as a
    held-out day's do (in-sample residuals understate whole-day errors: docs/design.md).
    background: the background the residuals are from; with its coefficients' covariance the
    true column's interval is calibrated too (calibrate_true_column), its variance the field's plus
    the background's left after conditioning plus the unmodelled variance, each held-out value's
    retrieval noise from its reported uncertainty (frame column xco2_uncertainty, scaled on same-day
    neighbouring training samples: reported_noise_scale; without the column, the field's noise of
    one sounding).
    background_without(rest): the background refitted on the samples `rest` only; with it (and
    residual_without, cross_validate) the true column's interval is also scored on a forward fold,
    the last third of the training days as the days past a window of the first two thirds
    (_forward_fold): the archive's nightly maps are all past their champion's window, which folds
    inside the window never see (true_column_coverage[FORWARD_FOLD]; not fitted to).
    shapes: the spatial correlations the likelihood chooses from (models/residual_field.py)."""
    lat0 = float(np.mean(frame["latitude"]))
    weight = frame["weight"].to_numpy(np.float64) if "weight" in frame else np.ones(len(frame))
    clip = CLIP_MADS * robust_sd(residual[training])
    obs = _superobs_of(frame, residual, weight, training, superob_deg, clip)
    fitted = fit_residual_field(obs, lat0, seed=seed, superob_deg=superob_deg, lattice_deg=lattice_deg, clip_ppm=clip,
                                shapes=shapes)
    fitted = _with_noise_scale(fitted, frame, training, seed)
    uncertainty = frame["xco2_uncertainty"].to_numpy(np.float64) if "xco2_uncertainty" in frame else None

    def noise_of(idx: np.ndarray) -> np.ndarray:
        return held_out_noise(fitted, None if uncertainty is None else uncertainty[idx], len(idx))

    predictions = {}
    days_of: dict[str, np.ndarray] = {}  # each held-out value's day: the unit the true column's scale is resampled by
    day = day_number(frame["day"].to_numpy())
    # Each held-out sample counts by its independent soundings: one GOSAT sounding fills ~80 cells,
    # and counted per cell its retrieval noise set the demo world's interval (scale 0.24, noise x 100).
    weights, extras, noises = {}, {}, {}
    for name, idx in calibration.items():
        if len(idx):
            mean, var, extra = predict_field_with_background(fitted, obs, frame, idx, background)
            predictions[name] = (residual[idx], mean, var)
            weights[name], extras[name], noises[name] = weight[idx], extra, noise_of(idx)
            days_of[name] = day[idx]
    holdouts = dict(predictions)
    if cross_validate:
        for name, (r, m, v, x, w, idx) in _cross_validated(fitted, frame, residual, weight, training, seed, block_km,
                                                           residual_without, background=background).items():
            if name in holdouts:
                r0, m0, v0 = holdouts[name]
                holdouts[name] = (np.concatenate([r0, r]), np.concatenate([m0, m]), np.concatenate([v0, v]))
                weights[name] = np.concatenate([weights[name], w])
                extras[name] = np.concatenate([extras[name], x])
                noises[name] = np.concatenate([noises[name], noise_of(idx)])
                days_of[name] = np.concatenate([days_of[name], day[idx]])
            else:
                holdouts[name], weights[name], extras[name], noises[name] = (r, m, v), w, x, noise_of(idx)
                days_of[name] = day[idx]
    fitted, coverage = calibrate_interval(fitted, holdouts, weights)
    true_coverage: dict[str, float] = {}
    if background is not None and background.covariance is not None:
        true_holdouts = {k: (r - m, v + extras[k], noises[k]) for k, (r, m, v) in holdouts.items()}
        diagnostic = {}
        if cross_validate and residual_without is not None and background_without is not None:
            # Scored, not fitted to: as a calibration set it lowered the scale where the truth needed it
            # higher (the demo world past its window, docs/design.md).
            forward = _forward_fold(fitted, frame, weight, training, seed, block_km, residual_without,
                                    background_without)
            if forward is not None:
                (e, v), w, idx = forward
                diagnostic[FORWARD_FOLD] = (e, v, noise_of(idx), w)
        fitted, true_coverage = calibrate_true_column(fitted, true_holdouts, weights, diagnostic, scale_from=WHOLE_DAYS,
                                                      days=days_of, seed=seed)
    return FieldFit(fitted, obs, coverage, predictions, true_coverage)


def _with_noise_scale(field: ResidualField, frame: pd.DataFrame, training: np.ndarray, seed: int) -> ResidualField:
    """The field with its reported uncertainties' scale from the training samples' same-day
    neighbours (left at 1 without values and uncertainties in the frame, or too few pairs)."""
    if not {"xco2", "xco2_uncertainty", "longitude", "latitude", "day"} <= set(frame.columns):
        return field
    k = reported_noise_scale(frame["longitude"].to_numpy()[training], frame["latitude"].to_numpy()[training],
                             frame["day"].to_numpy()[training], frame["xco2"].to_numpy(np.float64)[training],
                             frame["xco2_uncertainty"].to_numpy(np.float64)[training],
                             frame["n_soundings"].to_numpy()[training] if "n_soundings" in frame else None, seed=seed)
    return field if k is None else replace(field, reported_noise_scale=k)


def observed_by(field_fit: FieldFit, frame: pd.DataFrame, residual: np.ndarray, idx: np.ndarray) -> FieldFit:
    """The same field conditioned on other observations: the residuals of the samples `idx` (after
    the background is refitted on them, tasks/steps/retrain.py::background_for_maps)."""
    weight = frame["weight"].to_numpy(np.float64) if "weight" in frame else np.ones(len(frame))
    field = field_fit.field
    return replace(field_fit, observations=_superobs_of(frame, residual, weight, idx, field.superob_deg,
                                                        field.clip_ppm))


def _superobs_of(frame: pd.DataFrame, residual: np.ndarray, weight: np.ndarray, idx: np.ndarray, superob_deg: float,
                 clip: float) -> Superobs:
    return superobs(frame["longitude"].to_numpy()[idx], frame["latitude"].to_numpy()[idx], frame["day"].to_numpy()[idx],
                    residual[idx], weight[idx], superob_deg, clip)


def _cross_validated(fitted: ResidualField, frame: pd.DataFrame, residual: np.ndarray, weight: np.ndarray,
                     training: np.ndarray, seed: int, block_km: float,
                     residual_without: Callable[[np.ndarray], np.ndarray] | None = None, n_folds: int = 3,
                     max_targets: int = 1500, background: Background | None = None
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    from models.validation import group_folds

    lat = frame["latitude"].to_numpy()[training]
    lon = frame["longitude"].to_numpy()[training]
    groups = {SPATIAL_BLOCKS: spatial_block_ids(lat, lon, block_km=block_km),
              WHOLE_DAYS: day_number(frame["day"].to_numpy()[training]).astype(np.int64)}
    rng = np.random.default_rng(seed + 5)
    out = {}
    for name, g in groups.items():
        if len(np.unique(g)) < n_folds:
            continue
        parts = []
        for rest, test in group_folds(g, n_folds, seed):
            test = training[test]
            if len(test) > max_targets:
                test = np.sort(rng.choice(test, max_targets, replace=False))
            fold_residual = residual if residual_without is None else residual_without(training[rest])
            obs = _superobs_of(frame, fold_residual, weight, training[rest], fitted.superob_deg, fitted.clip_ppm)
            # The background's covariance is the full fit's: the fold's own refit (two thirds of
            # the days) is a little less certain, which the true column's scale absorbs.
            mean, var, extra = predict_field_with_background(fitted, obs, frame, test, background)
            parts.append((fold_residual[test], mean, var, extra, weight[test], test))
        r, m, v, x, w, idx = (np.concatenate([p[i] for p in parts]) for i in range(6))
        out[name] = (r, m, v, x, w, idx)
    return out


FORWARD_FOLD = "days past the window"
# The held-out sets of the retrain (split_samples' halves and the folds of fit_field)
SPATIAL_BLOCKS = "spatial blocks"
WHOLE_DAYS = "whole days"


def _forward_fold(fitted: ResidualField, frame: pd.DataFrame, weight: np.ndarray, training: np.ndarray, seed: int,
                  block_km: float, residual_without: Callable[[np.ndarray], np.ndarray],
                  background_without: Callable[[np.ndarray], Background], max_targets: int = 1500
                  ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray] | None:
    """Held-out retrievals past a window, from the training samples alone: the background refitted
    on the first two thirds of the days (extrapolated over the last third, as a champion's over the
    days after its window), the field conditioned on every sample but the targets, the targets half
    the spatial blocks of the last third. Returns ((error, true-column variance), weight, the
    targets' indices) or None when the days or blocks are too few."""
    from models.validation import group_holdout

    days = day_number(frame["day"].to_numpy()[training])
    unique = np.unique(days)
    if len(unique) < 6:
        return None
    cut = unique[(2 * len(unique)) // 3]
    earlier, later = training[days < cut], training[days >= cut]
    blocks = spatial_block_ids(frame["latitude"].to_numpy()[later], frame["longitude"].to_numpy()[later],
                               block_km=block_km)
    if len(np.unique(blocks)) >= 2:
        keep, test = group_holdout(blocks, 0.5, seed + 7)
    else:  # a region within one block: half the later days, whole
        keep, test = group_holdout(days[days >= cut], 0.5, seed + 7)
    targets = later[test]
    if len(targets) > max_targets:
        targets = np.sort(np.random.default_rng(seed + 9).choice(targets, max_targets, replace=False))
    try:
        past = background_without(earlier)
    except ValueError:  # too few samples for a background
        return None
    residual = residual_without(earlier)
    obs = _superobs_of(frame, residual, weight, np.sort(np.concatenate([earlier, later[keep]])),
                       fitted.superob_deg, fitted.clip_ppm)
    mean, var, extra = predict_field_with_background(fitted, obs, frame, targets, past)
    return (residual[targets] - mean, var + extra), weight[targets], targets


def predict_field(field: ResidualField, obs: Superobs, frame: pd.DataFrame, idx: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    mean, var, _ = predict_field_with_background(field, obs, frame, idx, None)
    return mean, var


def predict_field_with_background(field: ResidualField, obs: Superobs, frame: pd.DataFrame, idx: np.ndarray,
                                  background: Background | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lat0 = float(np.mean(frame["latitude"]))
    return predict_points_with_background(field, obs, lat0, frame["longitude"].to_numpy()[idx],
                                          frame["latitude"].to_numpy()[idx], day_number(frame["day"].to_numpy()[idx]),
                                          background)


def detrended_r2(observed: np.ndarray, predicted: np.ndarray, days: np.ndarray) -> float:
    """R2 after removing the observations' linear trend in time from both: what the map explains
    beyond the growth of CO2, which alone gives any model a high R2 over a few years."""
    t = day_number(days)
    y = np.asarray(observed, np.float64)
    if len(y) < 3 or np.ptp(t) == 0:
        return float("nan")
    slope, intercept = np.polyfit(t, y, 1)
    trend = slope * t + intercept
    return regression_metrics(y - trend, np.asarray(predicted, np.float64) - trend)["r2"]


def holdout_scores(observed: np.ndarray, predicted: np.ndarray, half_width: np.ndarray | None,
                   days: np.ndarray, sources: np.ndarray | None = None,
                   weight: np.ndarray | None = None) -> dict[str, float]:
    """RMSE, R2, detrended R2, bias, N, 68% coverage, and RMSE per source when several. The
    coverage counts each held-out sample by `weight` (its independent soundings), as the interval is
    calibrated: the share of held-out soundings inside the band."""
    scores = regression_metrics(observed, predicted)
    scores["r2_detrended"] = detrended_r2(observed, predicted, days)
    if half_width is not None:
        inside = np.abs(np.asarray(observed) - predicted) <= half_width
        scores["coverage68"] = float(np.average(inside, weights=weight) if weight is not None and np.sum(weight) > 0
                                     else np.mean(inside))
    if sources is not None:
        for source in np.unique(sources):
            here = sources == source
            error = np.asarray(predicted)[here] - np.asarray(observed)[here]
            scores[f"rmse_{source.replace('+', '_')}"] = float(np.sqrt(np.mean(error ** 2)))
            scores[f"n_{source.replace('+', '_')}"] = int(here.sum())
    return scores


def map_predict(field_fit: FieldFit, frame: pd.DataFrame, model_prediction: np.ndarray, idx: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """What the archive would show at held-out samples: model + field, and the 68% half-width."""
    mean, var = predict_field(field_fit.field, field_fit.observations, frame, idx)
    return model_prediction + mean, interval_half_width(field_fit.field, var)


def map_true_column(field_fit: FieldFit, frame: pd.DataFrame, background: Background | None, idx: np.ndarray
                    ) -> np.ndarray | None:
    """The true column's 68% half-width the archive would show at held-out samples `idx` (band 3),
    None when the field has no calibrated true-column scale. background: the model's (the deployed
    one, whose residuals field_fit.observations are)."""
    _, var, extra = predict_field_with_background(field_fit.field, field_fit.observations, frame, idx, background)
    return true_column_half_width(field_fit.field, var, extra)


Predict = Callable[[np.ndarray], np.ndarray]
