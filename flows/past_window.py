"""Past the training window: train on the days up to `train_end` of the demo world, map the
following days the way the nightly archive does (anchored to recent observations), and score the
maps against the world's truth. The paper's models cannot see the future CO2 level; this shows
whether the archive holds its level anyway, for the ResNet-LSTM and for the tree baselines.

    xco2 past-window --train-end 2020-07-10 --days 60
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from flows.retrain import cap_indices, training_config
from models.baselines import MODELS, Budget
from models.evaluation import random_split
from models.training import train_resnet_lstm
from tasks.anchoring import anchor_from_residuals, daily_residuals, sample_store_reader
from tasks.atomic import atomic_path, publish_text, write_json
from tasks.covariates import StaticCovariates
from tasks.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.grid import Grid
from tasks.inference import day_layers, inputs_available
from tasks.progress import progress_bar
from tasks.regions.boundary import region_mask
from tasks.samples import read_samples, stored_days
from tasks.settings import Settings
from tasks.sources.pull import raw_dir

log = logging.getLogger(__name__)

MODEL_LABELS = {"resnet_lstm": "ResNet-LSTM", "random_forest": "Random Forest", "xgboost": "XGBoost"}


@dataclass(frozen=True)
class PastWindowOptions:
    train_end: date
    days: int = 60
    cells_per_day: int = 4000
    models: tuple[str, ...] = ("resnet_lstm", "random_forest", "xgboost")


def _train(settings: Settings, name: str, X: np.ndarray, y: np.ndarray):
    """The model as the retrain fits it: same caps, Table 5 recipe, seeded."""
    fit, stop = random_split(len(y), settings.validation_fraction, settings.seed)
    rng = np.random.default_rng(settings.seed)
    fit, stop = cap_indices(fit, settings.max_training_samples, rng), cap_indices(stop, settings.max_validation_samples, rng)
    if name == "resnet_lstm":
        return train_resnet_lstm(X[fit], y[fit], X[stop], y[stop], FEATURE_NAMES, FEATURE_SET_VERSION,
                                 training_config(settings), show_progress=True)
    budget = Budget.cpu(feature_set_version=FEATURE_SET_VERSION)
    return MODELS[name].fit(X[fit], y[fit], X[stop], y[stop], list(FEATURE_NAMES), settings.seed, budget)


def past_window_check(settings: Settings, opts: PastWindowOptions, truth_for_day, out_dir: Path) -> dict:
    """Per model: mean bias (map - truth) over the days after `train_end`, unanchored and anchored
    as the archive does; writes past_window.csv/json and a PNG of the daily bias into out_dir."""
    grid = Grid.for_region(settings.region, settings.grid_step)
    stored = stored_days(settings.region_dir)
    after = [opts.train_end + timedelta(days=i) for i in range(1, opts.days + 1)]
    era5 = raw_dir(settings, "era5")
    # A day without an overpass is still mapped (and anchored on the days before it): the days
    # after the window need their meteorology, not observations.
    missing = [d for d in after if not inputs_available(era5, d)]
    if not any(d <= opts.train_end for d in stored) or missing:
        raise ValueError(
            f"past-window check needs samples up to {opts.train_end} in {settings.region_dir} and ERA5 for the "
            f"{opts.days} days after it; missing ERA5 for {len(missing)} days (first {missing[:3]}): run the daily "
            "flow over the whole window first")
    # The observations the archive's anchoring reads: the same per-day subsample as map_day.
    observations = sample_store_reader(settings.region_dir, settings.anchor_max_cells_per_day)(
        min(stored), after[-1])
    observations["day"] = pd.to_datetime(observations["day"]).dt.date
    full = read_samples(settings.region_dir, end=opts.train_end)
    X_train = full[list(FEATURE_NAMES)].to_numpy(np.float32)
    y_train = full["xco2"].to_numpy(np.float64)
    log.info("training on %d samples of %d days up to %s", len(y_train), full["day"].nunique(), opts.train_end)

    predictors = {name: _train(settings, name, X_train, y_train) for name in opts.models}
    X_obs = observations[list(FEATURE_NAMES)].to_numpy(np.float32)
    residuals = {name: daily_residuals(observations, model.predict(X_obs)) for name, model in predictors.items()}

    covariates = StaticCovariates(settings.region_dir)
    inside = np.flatnonzero(region_mask(settings.region, grid))  # the cells the archive maps
    rows = []
    with progress_bar("past-window days", len(after)) as advance:
        for i, day in enumerate(after, 1):
            cells = np.random.default_rng(day.toordinal()).choice(inside, min(opts.cells_per_day, inside.size),
                                                                  replace=False)
            r, c = np.divmod(cells, grid.nx)
            X = day_layers(covariates, era5, grid, day).for_cells(r, c)
            truth = np.asarray(truth_for_day(day), dtype=np.float64).ravel()[cells]
            for name, model in predictors.items():
                predicted = np.asarray(model.predict(X), dtype=np.float64)
                anchor = anchor_from_residuals(day, residuals[name], settings.anchor_window_days,
                                               settings.anchor_min_cells_per_day, settings.anchor_method)
                rows.append({"day": day.isoformat(), "model": name,
                             "bias_unanchored": float(np.mean(predicted - truth)),
                             "bias_anchored": float(np.mean(predicted + anchor.offset_ppm - truth)),
                             "rmse_unanchored": float(np.sqrt(np.mean((predicted - truth) ** 2))),
                             "rmse_anchored": float(np.sqrt(np.mean((predicted + anchor.offset_ppm - truth) ** 2))),
                             "anchor_offset_ppm": anchor.offset_ppm, "anchor_days": anchor.n_days})
            advance(i)
    daily = pd.DataFrame(rows)
    summary = (daily.groupby("model")[["bias_unanchored", "bias_anchored", "rmse_unanchored", "rmse_anchored"]]
               .mean().reindex(list(opts.models)))
    out_dir.mkdir(parents=True, exist_ok=True)
    publish_text(out_dir / "past_window_daily.csv", daily.to_csv(index=False))
    figure = _bias_figure(daily, opts, out_dir / "past_window_bias.png")
    result = {"train_end": opts.train_end.isoformat(), "days": opts.days, "cells_per_day": opts.cells_per_day,
              "anchor_window_days": settings.anchor_window_days, "anchor_method": settings.anchor_method,
              "models": {m: {k: round(float(v), 4) for k, v in summary.loc[m].items()} for m in summary.index},
              "figure": str(figure)}
    write_json(out_dir / "past_window.json", result)
    return result


def _bias_figure(daily: pd.DataFrame, opts: PastWindowOptions, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (name, rows) in enumerate(daily.groupby("model", sort=False)):
        days = pd.to_datetime(rows["day"])
        ax.plot(days, rows["bias_unanchored"], ls=":", color=f"C{i}", label=f"{MODEL_LABELS.get(name, name)}, model only")
        ax.plot(days, rows["bias_anchored"], ls="-", color=f"C{i}", label=f"{MODEL_LABELS.get(name, name)}, anchored")
    ax.axhline(0, color="k", lw=0.8)
    ax.axhspan(-0.3, 0.3, color="0.9", zorder=0, label="+/- 0.3 ppm")
    ax.set_ylabel("map - truth, regional mean (ppm)")
    ax.set_title(f"After the training window (trained up to {opts.train_end})")
    ax.legend(fontsize=7, ncol=2)
    fig.autofmt_xdate()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
