"""The monthly retrain: train the ResNet-LSTM on the sample store, log, register, promote, export."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect import task

from models.evaluation import plot_loss_curves, plot_scatter, random_split, regression_metrics
from models.onnx_export import check_onnx_parity, export_onnx
from models.training import TrainingConfig, train_resnet_lstm
from registry.promotion import promote
from registry.tracking import log_training_run
from tasks import units
from tasks.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.grid import Grid
from tasks.samples import read_samples
from tasks.settings import Settings, load_settings


class NotEnoughSamples(RuntimeError):
    pass


@task(name="load-samples", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def load_training_data(settings: Settings):
    df = read_samples(settings.region_dir)
    if len(df) < 200:
        raise NotEnoughSamples(f"only {len(df)} samples in {settings.region_dir}: run the daily flow first")
    X = df[list(FEATURE_NAMES)].to_numpy(np.float32)
    y = df["xco2"].to_numpy(np.float64)
    return X, y, df


def cap_indices(idx: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    # Caps keep CPU-only runs (the demo) short; the paper's setting is no cap.
    return np.sort(rng.choice(idx, cap, replace=False)) if cap and len(idx) > cap else idx


@dataclass(frozen=True)
class Holdouts:
    """Index sets of one retrain. Neither holdout steers training: `random` gives the paper's
    validation metrics, `spatial` (whole >= 50 km blocks nobody trained on) the promotion gate."""

    fit: np.ndarray
    early_stopping: np.ndarray
    random: np.ndarray
    spatial: np.ndarray
    spatial_is_blocks: bool


def split_samples(settings: Settings, latitude: np.ndarray, longitude: np.ndarray) -> Holdouts:
    from models.validation import group_holdout, spatial_block_ids

    rng = np.random.default_rng(settings.seed)
    n = len(latitude)
    blocks = spatial_block_ids(latitude, longitude, block_km=settings.promotion_block_km)
    if len(np.unique(blocks)) >= 2:
        rest, spatial = group_holdout(blocks, settings.validation_fraction, settings.seed)
        spatial_is_blocks = True
    else:  # a region smaller than one block: nothing to hold out by area
        rest, spatial = np.arange(n), np.array([], dtype=np.int64)
        spatial_is_blocks = False
    inner_rest, inner_random = random_split(len(rest), settings.validation_fraction, settings.seed)
    random_idx, rest = rest[inner_random], rest[inner_rest]
    inner_fit, inner_stop = random_split(len(rest), settings.validation_fraction, settings.seed + 1)
    cap_val = settings.max_validation_samples
    spatial = cap_indices(spatial, cap_val, rng) if spatial_is_blocks else cap_indices(random_idx, cap_val, rng)
    return Holdouts(fit=cap_indices(rest[inner_fit], settings.max_training_samples, rng),
                    early_stopping=cap_indices(rest[inner_stop], cap_val, rng),
                    random=cap_indices(random_idx, cap_val, rng), spatial=spatial, spatial_is_blocks=spatial_is_blocks)


@task(name="calibrate-uncertainty", cache_policy=NO_CACHE)
def calibrate_uncertainty(settings: Settings, trained, X: np.ndarray, y: np.ndarray, split: Holdouts,
                          latitude: np.ndarray, longitude: np.ndarray, predicted_random: np.ndarray,
                          predicted_spatial: np.ndarray) -> dict:
    """Attach a calibrated spread model to `trained`; coverage of the 68% interval on data that
    neither fitted nor calibrated it. Calibrated on half of the promotion holdout's blocks (maps are
    almost all unobserved cells, which those blocks stand for), scored on the other half.
    predicted_random/_spatial: the model's XCO2 on split.random and split.spatial."""
    import dataclasses

    from models.uncertainty import calibrate, coverage, fit_spread
    from models.validation import group_holdout, spatial_block_ids

    stop = split.early_stopping
    spread = fit_spread(X[stop], y[stop] - trained.predict(X[stop]), trained.scalers, seed=settings.seed)
    held = split.spatial
    blocks = spatial_block_ids(latitude[held], longitude[held], block_km=settings.promotion_block_km)
    if split.spatial_is_blocks and len(np.unique(blocks)) >= 2:
        cal, score = group_holdout(blocks, 0.5, settings.seed)
    else:
        cal, score = random_split(len(held), 0.5, settings.seed)
    residual = y[held] - predicted_spatial
    spread = calibrate(spread, X[held][cal], residual[cal], trained.scalers)
    trained = dataclasses.replace(trained, spread=spread)
    random_residual = y[split.random] - predicted_random
    result = {
        "uncertainty_scale": spread.scale,
        "coverage68_heldout_blocks": coverage(residual[score], trained.predict_uncertainty(X[held][score])),
        "coverage68_random_holdout": coverage(random_residual, trained.predict_uncertainty(X[split.random])),
        "n_calibration": int(len(cal)), "n_coverage": int(len(score)),
    }
    return {"trained": trained, "metrics": result}


def training_config(settings: Settings) -> TrainingConfig:
    """Table 5 as configured (the retrain and the past-window check train alike)."""
    return TrainingConfig(
        max_epochs=settings.max_epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, lr_patience=settings.lr_patience, lr_factor=settings.lr_factor,
        early_stopping_patience=settings.early_stopping_patience, seed=settings.seed,
    )


@task(name="train-resnet-lstm", cache_policy=NO_CACHE)
def train(settings: Settings, X: np.ndarray, y: np.ndarray, split: Holdouts):
    return train_resnet_lstm(X[split.fit], y[split.fit], X[split.early_stopping], y[split.early_stopping],
                             list(FEATURE_NAMES), FEATURE_SET_VERSION, training_config(settings), show_progress=True)


def _tag_gate(settings: Settings, version: int, previous: int | None, gate: str, n: int) -> None:
    """Say on both versions which evaluation data the promotion compared them on."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for v in {version, previous} - {None}:
        client.set_model_version_tag(settings.registered_model_name, str(v), f"promotion_v{version}_holdout",
                                     f"{gate}, N {n}, margin {settings.promotion_margin_ppm:g} ppm")


def _figure_links(tracking_uri: str, run_id: str, figures: list[Path]) -> list[tuple[str, str]]:
    """Where the run's figures live, for the flow's report (the MLflow UI shows them too)."""
    from mlflow.tracking import MlflowClient

    from registry.store import FIGURES_DIR

    root = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri
    return [(f.stem.replace("_", " "), f"{root}/{FIGURES_DIR}/{f.name}") for f in figures]


def _demo_truth(settings: Settings):
    """Truth at (cell, day) pairs of the demo world, one truth map read per day."""
    import pandas as pd

    from tasks.demo_world import truth_for_day

    root = settings.data_dir / "demo"

    def truth(cells: np.ndarray, days: np.ndarray) -> np.ndarray:
        cells = np.asarray(cells, dtype=np.int64)
        days = pd.to_datetime(pd.Series(days)).dt.date.to_numpy()
        out = np.empty(len(cells))
        for day in np.unique(days):
            here = days == day
            out[here] = truth_for_day(root, day).ravel()[cells[here]]
        return out

    return truth


@task(name="compare-models", cache_policy=NO_CACHE)
def compare_models(settings: Settings, X: np.ndarray, y: np.ndarray, df, run_id: str) -> dict:
    """Baselines and protocols on identical features and splits, logged to MLflow (issue 4)."""
    from models.baselines import Budget, MODELS
    from models.comparison import comparison_figure, metrics_by_protocol, run_comparison, table_markdown
    from registry.baselines import log_baseline_run, log_comparison

    budget = Budget.cpu(max_train_samples=settings.comparison_max_train_samples,
                        max_epochs=settings.comparison_max_epochs, feature_set_version=FEATURE_SET_VERSION)
    truth = _demo_truth(settings) if settings.source.value == "demo" else None
    result = run_comparison(settings.comparison_models, settings.comparison_protocols, X, y,
                            df["latitude"].to_numpy(), df["longitude"].to_numpy(), df["day"].to_numpy(),
                            seed=settings.seed, budget=budget, truth=truth, cells=df["cell"].to_numpy(),
                            feature_names=list(FEATURE_NAMES), n_folds=settings.comparison_folds)
    table = result.table
    work = Path(tempfile.mkdtemp(prefix="xco2-compare-"))
    figure = comparison_figure(table, work / "model_comparison.png")
    experiment = f"xco2-{settings.region.name}"
    for model in settings.comparison_models:
        if model != "resnet_lstm":
            log_baseline_run(settings.tracking_uri, experiment, model, {**MODELS[model].params(budget), **budget.to_params()},
                             metrics_by_protocol(table, model), [figure], {"source_mode": settings.source.value})
    log_comparison(settings.tracking_uri, experiment, table, figure, run_id=run_id)
    create_table_artifact(key="retrain-model-comparison", table=table.round(4).to_dict(orient="records"),
                          description="Models x validation protocols on identical features and splits")
    return {"markdown": table_markdown(table), "table": table.to_dict(orient="records")}


@flow(name="xco2-monthly-retrain", log_prints=True)
def monthly_retrain(overrides: dict | None = None) -> dict:
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    # A damaged sample file is recomputed from its inputs here rather than failing the read below.
    units.check_state(settings, Grid.for_region(settings.region, settings.grid_step))
    X, y, df = load_training_data(settings)
    logger.info("%d samples over %d days", len(y), df["day"].nunique())
    split = split_samples(settings, df["latitude"].to_numpy(), df["longitude"].to_numpy())
    trained = train(settings, X, y, split)

    X_val, y_val = X[split.random], y[split.random]
    predicted = trained.predict(X_val)
    predicted_spatial = trained.predict(X[split.spatial])
    metrics = regression_metrics(y_val, predicted)
    spatial = regression_metrics(y[split.spatial], predicted_spatial)
    calibrated = calibrate_uncertainty(settings, trained, X, y, split, df["latitude"].to_numpy(),
                                       df["longitude"].to_numpy(), predicted, predicted_spatial)
    trained, uncertainty = calibrated["trained"], calibrated["metrics"]
    work = Path(tempfile.mkdtemp(prefix="xco2-retrain-"))
    onnx_path = export_onnx(trained, work / "model.onnx")
    parity = check_onnx_parity(trained, onnx_path, X_val[:2000])
    figures = [plot_loss_curves(trained.history, work / "loss_curves.png"),
               plot_scatter(y_val, predicted, work / "validation_scatter.png")]
    gate = f"spatial blocks of {settings.promotion_block_km:g} km" if split.spatial_is_blocks else "random holdout"
    params = {"n_holdout": len(split.random), "n_spatial_holdout": len(split.spatial), "region": settings.region.name,
              "validation": "random holdout, not used for early stopping", "promotion_holdout": gate,
              "samples_days": int(df["day"].nunique()), "train_last_day": str(max(df["day"]))[:10]}
    version = log_training_run(
        settings.tracking_uri, f"xco2-{settings.region.name}", settings.registered_model_name, trained,
        onnx_path, {**{f"val_{k}": v for k, v in metrics.items()}, **{f"spatial_{k}": v for k, v in spatial.items()},
         **{k: v for k, v in uncertainty.items() if not k.startswith("n_")}},
        params, figures,
        {"source_mode": settings.source.value}, onnx_parity_max_abs_ppm=parity,
    )
    # The gate: the champion and this version scored on the same blocks this version never saw.
    decision = promote(settings.tracking_uri, settings.registered_model_name, version.version,
                       X[split.spatial], y[split.spatial], margin_ppm=settings.promotion_margin_ppm)
    _tag_gate(settings, version.version, decision.previous_champion_version, gate, len(split.spatial))

    comparison = (compare_models(settings, X, y, df, version.run_id) if settings.comparison_protocols else None)
    figure_links = _figure_links(settings.tracking_uri, version.run_id, figures)

    table = [{"metric": k, "value": round(float(v), 4) if isinstance(v, float) else v} for k, v in metrics.items()]
    create_table_artifact(key="retrain-validation-metrics", table=table, description="Random-holdout validation")
    create_markdown_artifact(key="retrain-report", markdown=(
        f"# Retrain {settings.registered_model_name} v{version.version}\n\n"
        f"- samples: {trained.n_train} train / {trained.n_val} early stopping / {len(split.random)} random holdout / "
        f"{len(split.spatial)} promotion holdout ({gate})\n"
        f"- best epoch {trained.best_epoch} of {len(trained.history)}\n"
        f"- validation RMSE {metrics['rmse']:.3f} ppm, R2 {metrics['r2']:.3f}, slope {metrics['slope']:.3f}, "
        f"MAE {metrics['mae']:.3f}, bias {metrics['bias']:+.3f}, N {metrics['n']}\n"
        f"- promotion holdout ({gate}): RMSE {spatial['rmse']:.3f} ppm, R2 {spatial['r2']:.3f}, "
        f"bias {spatial['bias']:+.3f}, N {spatial['n']}\n"
        f"- uncertainty (68% interval): calibrated on {uncertainty['n_calibration']} samples of held-out blocks, "
        f"covers {uncertainty['coverage68_heldout_blocks']:.1%} of {uncertainty['n_coverage']} samples in other "
        f"held-out blocks and {uncertainty['coverage68_random_holdout']:.1%} of the random holdout\n"
        f"- ONNX parity: max |diff| {parity:.2e} ppm\n"
        f"- decision: alias **{decision.alias}** ({decision.reason})\n"
        + "\n## Figures (MLflow artifacts)\n\n" + "\n".join(f"- [{name}]({uri})" for name, uri in figure_links) + "\n"
        + (f"\n## Model comparison\n\n{comparison['markdown']}\n" if comparison else "")))
    return {"version": version.version, "run_id": version.run_id, "alias": decision.alias,
            "metrics": metrics, "spatial_metrics": spatial, "promotion_holdout": gate,
            "onnx_parity_max_abs_ppm": parity, "decision": decision.reason, "uncertainty": uncertainty,
            "epochs": len(trained.history), "best_epoch": trained.best_epoch,
            "comparison": comparison["table"] if comparison else None, "figures": dict(figure_links)}
