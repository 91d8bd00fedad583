"""The monthly retrain: train the ResNet-LSTM on the sample store, log, register, promote, export."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect import task

from models.evaluation import plot_loss_curves, plot_scatter
from models.holdouts import Holdouts, holdout_scores, map_predict
from models.holdouts import cap as cap_holdout
from models.onnx_export import check_onnx_parity, export_onnx
from registry.promotion import promote
from registry.tracking import log_training_run
from tasks import retrain_steps, units
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
    return cap_holdout(idx, cap, rng)


def split_samples(settings: Settings, df) -> Holdouts:
    return retrain_steps.split_samples(settings, df)


@task(name="calibrate-uncertainty", cache_policy=NO_CACHE)
def calibrate_uncertainty(settings: Settings, trained, X: np.ndarray, y: np.ndarray, split: Holdouts) -> object:
    return retrain_steps.calibrate_uncertainty(settings, trained, X, y, split)


@task(name="fit-background", cache_policy=NO_CACHE)
def fit_the_background(X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts):
    return retrain_steps.background_on_training(X, y, weight, split)


@task(name="fit-daily-anomaly-field", cache_policy=NO_CACHE)
def fit_daily_field(settings: Settings, trained, X: np.ndarray, y: np.ndarray, df, split: Holdouts):
    return retrain_steps.fit_daily_field(settings, trained, X, y, df, split)


@task(name="train-resnet-lstm", cache_policy=NO_CACHE)
def train(settings: Settings, X: np.ndarray, y: np.ndarray, weight: np.ndarray, split: Holdouts, background):
    return retrain_steps.train_anomaly_network(settings, X, y, weight, split, background)


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


HOLDOUT_LABELS = {"spatial blocks": "spatial blocks (whole blocks nobody trained on)",
                  "whole days": "whole days (days nobody trained on)",
                  "random (optimistic)": "random holdout (optimistic: beside training cells of the same tracks)"}


def _archive_view(trained, field_fit, X: np.ndarray, df, idx: np.ndarray):
    """What a map shows at the samples `idx`: model + field and its band, or the model and its own
    spread when the retrain had too few observations for a field."""
    if field_fit is None:
        return trained.predict(X[idx]), (trained.predict_uncertainty(X[idx]) if trained.spread is not None else None)
    return map_predict(field_fit, df, trained.predict(X[idx]), idx)


def score_holdouts(trained, field_fit, X: np.ndarray, y: np.ndarray, df, split: Holdouts) -> dict[str, dict]:
    """The archive's view (model + daily anomaly, conditioned on training samples only) on the
    scoring halves; the random holdout last, labelled optimistic."""
    sources = df["source"].to_numpy()
    days = df["day"].to_numpy()
    out = {}
    for name, idx in (("spatial blocks", split.blocks_score), ("whole days", split.days_score),
                      ("random (optimistic)", split.random)):
        if len(idx) < 2:
            continue
        predicted, half_width = _archive_view(trained, field_fit, X, df, idx)
        out[name] = holdout_scores(y[idx], predicted, half_width, days[idx], sources[idx])
    return out


def _metrics_for_mlflow(scores: dict[str, dict]) -> dict[str, float]:
    prefix = {"spatial blocks": "blocks", "whole days": "days", "random (optimistic)": "random_optimistic"}
    return {f"{prefix[h]}_{k}": float(v) for h, s in scores.items() for k, v in s.items()}


def _report(settings: Settings, version, decision, trained, split: Holdouts, scores: dict, field_fit, parity: float,
            gate: str, figure_links, comparison) -> str:
    lines = [f"# Retrain {settings.registered_model_name} v{version.version}", "",
             f"- samples: {trained.n_train} fit / {trained.n_val} early stopping / {len(split.random)} random / "
             f"{len(split.spatial)} in held-out blocks / {len(split.whole_days)} on held-out days "
             "(blocks and days: half calibrate, half score)",
             f"- best epoch {trained.best_epoch} of {len(trained.history)}; network anomaly scale "
             f"{trained.anomaly_scale:.2f} (0: the covariates add nothing held-out data support)",
             "", "## Held-out scores of the map (model + daily anomaly), headline first", "",
             "| holdout | RMSE ppm | R2 | R2 detrended | bias ppm | 68% coverage | N |", "|---|---|---|---|---|---|---|"]
    for name, s in scores.items():
        lines.append(f"| {HOLDOUT_LABELS[name]} | {s['rmse']:.3f} | {s['r2']:.3f} | {s['r2_detrended']:.3f} | "
                     f"{s['bias']:+.3f} | {s.get('coverage68', float('nan')):.1%} | {s['n']} |")
    per_source = sorted({k for s in scores.values() for k in s if k.startswith("rmse_")})
    if per_source:
        lines += ["", "Per source (RMSE ppm): " + "; ".join(
            f"{name}: " + ", ".join(f"{k.removeprefix('rmse_')} {s[k]:.3f} (N {s['n_' + k.removeprefix('rmse_')]})"
                                    for k in per_source if k in s) for name, s in scores.items())]
    f = trained.residual_field
    if f is None:
        lines += ["", "- daily-anomaly field: none (too few observations to fit one); maps are the model alone"]
    else:
        lines += ["", f"- daily-anomaly field: local {f.local_variance:.2f} ppm2 / {f.local_length_km:.0f} km / "
                  f"{f.local_time_days:.1f} d, regional {f.regional_variance:.2f} ppm2 / {f.regional_length_km:.0f} km / "
                  f"{f.regional_time_days:.1f} d, noise {f.point_noise():.2f} ppm2, window +-{f.window_days} d; interval "
                  f"scale {f.interval_scale:.2f} (calibration coverage "
                  + ", ".join(f"{k} {v:.1%}" for k, v in field_fit.calibration_coverage.items()) + ")"]
    lines += [
              f"- ONNX parity: max |diff| {parity:.2e} ppm",
              f"- promotion gate ({gate}): alias **{decision.alias}** ({decision.reason})",
              "", "## Figures (MLflow artifacts)", ""] + [f"- [{name}]({uri})" for name, uri in figure_links]
    if comparison:
        lines += ["", "## Model comparison", "", comparison["markdown"]]
    return "\n".join(lines) + "\n"


@flow(name="xco2-monthly-retrain", log_prints=True)
def monthly_retrain(overrides: dict | None = None) -> dict:
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    grid = Grid.for_region(settings.region, settings.grid_step)
    # A damaged sample file is recomputed from its inputs here rather than failing the read below.
    units.check_state(settings, grid)
    gosat = units.refit_gosat(settings, grid)
    X, y, df = load_training_data(settings)
    weight = df["weight"].to_numpy(np.float64)
    logger.info("%d samples (%.0f independent soundings) over %d days", len(y), weight.sum(), df["day"].nunique())
    split = split_samples(settings, df)
    background = fit_the_background(X, y, weight, split)
    trained = train(settings, X, y, weight, split, background)
    trained, field_fit = fit_daily_field(settings, trained, X, y, df, split)
    trained = calibrate_uncertainty(settings, trained, X, y, split)
    scores = score_holdouts(trained, field_fit, X, y, df, split)
    # val_* in MLflow and the registry: the headline holdout, spatial blocks when the region has them.
    headline = scores.get("spatial blocks") or scores.get("whole days") or scores["random (optimistic)"]

    work = Path(tempfile.mkdtemp(prefix="xco2-retrain-"))
    onnx_path = export_onnx(trained, work / "model.onnx")
    parity = check_onnx_parity(trained, onnx_path, X[split.random][:2000])
    gate_idx = split.gate if len(split.gate) else split.random
    gate_predicted, _ = _archive_view(trained, field_fit, X, df, gate_idx)
    figures = [plot_loss_curves(trained.history, work / "loss_curves.png"),
               plot_scatter(y[gate_idx], gate_predicted, work / "heldout_scatter.png")]
    gate = "scoring halves of held-out blocks and days" if len(split.gate) else "random holdout"
    params = {"n_random_holdout": len(split.random), "n_heldout_blocks": len(split.spatial),
              "n_heldout_days": len(split.whole_days), "region": settings.region.name,
              "validation": "held-out blocks and whole days (scoring halves); random holdout optimistic",
              "promotion_holdout": gate, "samples_days": int(df["day"].nunique()),
              "train_last_day": str(max(df["day"]))[:10], "gosat_fit_id": gosat["fit"]["fit_id"],
              "anomaly_scale": round(trained.anomaly_scale, 4),
              **({f"field_{k}": v for k, v in trained.residual_field.to_dict().items()}
                 if trained.residual_field is not None else {"field": "none (too few observations)"}),
              **{f"background_{t}": round(c, 5) for t, c in zip(("intercept", "trend", "annual_sin", "annual_cos",
                                                                  "semiannual_sin", "semiannual_cos", "lat", "lon"),
                                                                 background.coefficients)}}
    version = log_training_run(
        settings.tracking_uri, f"xco2-{settings.region.name}", settings.registered_model_name, trained,
        onnx_path, {**{k: headline[k] for k in ("rmse", "r2", "slope", "mae", "bias", "n")},
                    **_metrics_for_mlflow(scores)}, params, figures,
        {"source_mode": settings.source.value}, onnx_parity_max_abs_ppm=parity,
    )
    # The gate: the champion and this version (graph outputs) on the same held-out cells neither saw.
    decision = promote(settings.tracking_uri, settings.registered_model_name, version.version,
                       X[gate_idx], y[gate_idx], margin_ppm=settings.promotion_margin_ppm)
    _tag_gate(settings, version.version, decision.previous_champion_version, gate, len(gate_idx))

    comparison = (compare_models(settings, X, y, df, version.run_id) if settings.comparison_protocols else None)
    figure_links = _figure_links(settings.tracking_uri, version.run_id, figures)
    create_table_artifact(key="retrain-heldout-scores", description="The map on held-out data, headline first",
                          table=[{"holdout": HOLDOUT_LABELS[h], **{k: round(float(v), 4) for k, v in s.items()}}
                                 for h, s in scores.items()])
    create_markdown_artifact(key="retrain-report", markdown=_report(
        settings, version, decision, trained, split, scores, field_fit, parity, gate, figure_links, comparison))
    random_scores = scores.get("random (optimistic)", {})
    return {"version": version.version, "run_id": version.run_id, "alias": decision.alias,
            "holdouts": scores, "metrics": random_scores, "spatial_metrics": headline, "promotion_holdout": gate,
            "onnx_parity_max_abs_ppm": parity, "decision": decision.reason,
            "uncertainty": {k: v.get("coverage68") for k, v in scores.items()},
            "residual_field": trained.residual_field.to_dict() if trained.residual_field is not None else None,
            "anomaly_scale": trained.anomaly_scale,
            "gosat_fit": gosat["fit"],
            "epochs": len(trained.history), "best_epoch": trained.best_epoch,
            "comparison": comparison["table"] if comparison else None, "figures": dict(figure_links)}
