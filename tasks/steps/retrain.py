"""The retrain's steps as plain functions (no Prefect): holdouts, background, network, daily-anomaly
field, spread. tasks/prefect_tasks_retrain.py wraps them in Prefect tasks for flows/retrain.py;
tasks/steps/past_window.py trains with the same functions, so a check of the archive measures
the model the retrain would have made. What the retrain scores, logs and reports: retrain_results.py.

Trains with torch (models/training.py): never import this from the nightly mapping path.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from models.background import Background, BackgroundError, fit_background
from models.holdouts import (ANOMALY_SHARES, SPATIAL_BLOCKS, WHOLE_DAYS, FieldFit, Holdouts, anomaly_scale, fit_field,
                             observed_by, simplest_share)
from models.residual_field import ResidualFieldError, day_number
from models.holdouts import split_samples as split_holdouts
from models.training import TrainedModel, TrainingConfig, train_resnet_lstm
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.samples.store import read_samples
from tasks.settings import Settings

log = logging.getLogger(__name__)


def training_config(settings: Settings) -> TrainingConfig:
    """Table 5 as configured (the retrain and the past-window check train alike)."""
    return TrainingConfig(
        max_epochs=settings.max_epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, lr_patience=settings.lr_patience, lr_factor=settings.lr_factor,
        early_stopping_patience=settings.early_stopping_patience, seed=settings.seed,
    )


def split_samples(settings: Settings, df: pd.DataFrame) -> Holdouts:
    return split_holdouts(df["latitude"].to_numpy(), df["longitude"].to_numpy(), df["day"].to_numpy(),
                          settings.validation_fraction, settings.promotion_block_km, settings.seed,
                          settings.max_training_samples, settings.max_validation_samples)


def background_on_training(X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts) -> Background:
    return fit_background(X[split.training], y[split.training], FEATURE_NAMES, weight[split.training])


def train_anomaly_network(settings: Settings, X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts,
                          background: Background, show_progress: bool = True) -> TrainedModel:
    """The network learns the anomaly from the background, each sample weighted by its independent soundings."""
    return train_resnet_lstm(X[split.fit], y[split.fit], X[split.early_stopping], y[split.early_stopping],
                             list(FEATURE_NAMES), FEATURE_SET_VERSION, training_config(settings),
                             show_progress=show_progress, background=background, sample_weight=weight[split.fit])


def fit_daily_field(settings: Settings, trained: TrainedModel, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                    split: Holdouts) -> tuple[TrainedModel, FieldFit | None]:
    """The network anomaly's share and the field together: for each candidate share, the field is
    fitted to the training residuals and the whole map (background + share x anomaly + field) scored
    on the calibration halves of held-out blocks and days; the smallest share within one standard
    error of the best is kept (models/holdouts.py::simplest_share). A network that
    memorises its training days leaves residuals without day-to-day structure, so its share is
    judged with the field it leaves, not alone (models/holdouts.py)."""
    if trained.background is None:  # the retrain's network always learns the anomaly from one
        raise ValueError("the daily-anomaly field is fitted to a model trained on a background; this one has none")
    calibration = {SPATIAL_BLOCKS: split.blocks_calibration, WHOLE_DAYS: split.days_calibration}
    background = trained.background.evaluate_features(X, FEATURE_NAMES)
    network_anomaly = trained.predict(X) - background  # anomaly_scale is 1 here
    try:
        return _share_and_field(settings, trained, X, y, df, split, calibration, background, network_anomaly)
    except ResidualFieldError as exc:
        # Too few observations to fit a field (a tiny region or window): the model maps alone,
        # with the network's share judged without it and its own spread as the interval.
        log.warning("no daily-anomaly field: %s; maps are the model alone", exc)
        cal = np.concatenate([split.blocks_calibration, split.days_calibration])
        share = (anomaly_scale(y[cal] - background[cal], network_anomaly[cal], df["weight"].to_numpy()[cal])
                 if len(cal) else 1.0)
        return dataclasses.replace(trained, anomaly_scale=share, residual_field=None), None


def _share_and_field(settings: Settings, trained: TrainedModel, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                     split: Holdouts, calibration: dict, background: np.ndarray, network_anomaly: np.ndarray
                     ) -> tuple[TrainedModel, FieldFit]:
    shares = ANOMALY_SHARES if any(len(i) for i in calibration.values()) else (1.0,)
    candidates, shape_of = [], {}
    for share in shares:
        fitted = fit_field(df, y - background - share * network_anomaly, split.training, calibration, settings.seed)
        candidates.append((share, {name: (r, m) for name, (r, m, _v) in fitted.calibration_predictions.items()}))
        shape_of[share] = fitted.field.spatial_shape
    days = {name: day_number(df["day"].to_numpy()[idx]) for name, idx in calibration.items()}
    share = simplest_share(candidates, days)
    # The chosen share's field, its interval calibrated on the halves and on folds of the training
    # samples, each fold's residuals from a background refitted without it.
    weight = df["weight"].to_numpy(np.float64)

    def background_without(rest: np.ndarray) -> Background:
        return fit_background(X[rest], y[rest], FEATURE_NAMES, weight[rest])

    def residual_without(rest: np.ndarray) -> np.ndarray:
        refitted = background_without(rest)
        return y - refitted.evaluate_features(X, FEATURE_NAMES) - share * network_anomaly

    fitted = fit_field(df, y - background - share * network_anomaly, split.training, calibration, settings.seed,
                       cross_validate=True, block_km=settings.promotion_block_km, residual_without=residual_without,
                       background=trained.background, background_without=background_without,
                       shapes=(shape_of[share],))  # the same residuals as its candidate's: the same shape
    return dataclasses.replace(trained, anomaly_scale=float(share), residual_field=fitted.field), fitted


def background_for_maps(trained: TrainedModel, field_fit: FieldFit | None, X: np.ndarray, y: np.ndarray,
                        df: pd.DataFrame, split: Holdouts) -> tuple[TrainedModel, FieldFit | None]:
    """The deployed background, refitted on every sample but the gate's once the share and the
    interval are chosen, and the field conditioned on the same samples' residuals from it.

    The choices need samples the background never saw; the map does not: fitting the deployed
    background on ~60 % of the samples cost real whole held-out days up to 0.3 ppm (docs/design.md).
    The scoring halves stay out so that the headline scores and the promotion gate stay unseen."""
    keep = split.all_but_gate
    if trained.background is None:
        return trained, field_fit
    try:
        background = fit_background(X[keep], y[keep], FEATURE_NAMES, df["weight"].to_numpy(np.float64)[keep])
    except BackgroundError as exc:
        log.warning("background kept from the training samples: %s", exc)
        return trained, field_fit
    refitted = dataclasses.replace(trained, background=background)
    if field_fit is None:
        return refitted, None
    residual = y - background.evaluate_features(X, FEATURE_NAMES)
    if trained.anomaly_scale:  # the share x network anomaly, which the refit leaves alone (0: no network pass)
        residual[keep] -= trained.predict(X[keep]) - trained.background.evaluate_features(X[keep], FEATURE_NAMES)
    return refitted, observed_by(field_fit, df, residual, keep)


def calibrate_uncertainty(settings: Settings, trained: TrainedModel, X: np.ndarray, y: np.ndarray,
                          split: Holdouts) -> TrainedModel:
    """The network's own spread output (the ONNX graph's second output, used when the daily anomaly
    is off): fitted on the early-stopping set, scaled on the calibration halves of blocks and days."""
    from models.uncertainty import calibrate, fit_spread

    stop, cal = split.early_stopping, np.concatenate([split.blocks_calibration, split.days_calibration])
    if len(cal) < 20:  # a small region: the random holdout lends its samples
        cal = np.concatenate([cal, split.random])
    spread = fit_spread(X[stop], y[stop] - trained.predict(X[stop]), trained.scalers, seed=settings.seed)
    spread = calibrate(spread, X[cal], y[cal] - trained.predict(X[cal]), trained.scalers)
    return dataclasses.replace(trained, spread=spread)


def train_map_model(settings: Settings, df: pd.DataFrame, show_progress: bool = True
                    ) -> tuple[TrainedModel, FieldFit | None, Holdouts]:
    """The retrain's model from a sample table, without the spread (only maps without the daily
    anomaly use it): split, background, network, anomaly scale, the field (None when too few
    observations fit one) and the deployed background."""
    X = df[list(FEATURE_NAMES)].to_numpy(np.float32)
    y = df["xco2"].to_numpy(np.float64)
    weight = df["weight"].to_numpy(np.float64)
    split = split_samples(settings, df)
    background = background_on_training(X, y, weight, split)
    trained = train_anomaly_network(settings, X, y, weight, split, background, show_progress)
    trained, field_fit = fit_daily_field(settings, trained, X, y, df, split)
    trained, field_fit = background_for_maps(trained, field_fit, X, y, df, split)
    return trained, field_fit, split


MIN_SAMPLES = 200  # fewer in the store: the daily flow has not run long enough to train on


class NotEnoughSamples(RuntimeError):
    pass


def training_data(region_dir: Path, min_samples: int = MIN_SAMPLES) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(X float32 features, y XCO2 ppm, the sample table) of the whole sample store."""
    df = read_samples(region_dir)
    if len(df) < min_samples:
        raise NotEnoughSamples(f"only {len(df)} samples in {region_dir}: run the daily flow first")
    return df[list(FEATURE_NAMES)].to_numpy(np.float32), df["xco2"].to_numpy(np.float64), df
