"""The monthly retrain: train the ResNet-LSTM on the sample store, log, register, promote, export.

Each step is a function of tasks/steps/retrain.py (training, as Prefect tasks from
tasks/prefect_tasks_retrain.py), tasks/steps/retrain_results.py (scores, logged parameters, report),
models/ or registry/, tested without Prefect.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from tasks.analysis.training_figures import plot_loss_curves, plot_scatter
from models.holdouts import NetworkShare
from models.onnx_export import check_onnx_parity, export_onnx
from registry.comparison_runs import log_model_comparison
from registry.promotion import promote, tag_gate
from registry.tracking import figure_links, log_training_run
from tasks import prefect_tasks, prefect_tasks_retrain as retrain_tasks
from tasks.gridding.geometry import Grid
from tasks.settings import Settings, load_settings
from tasks.steps import retrain as steps, retrain_results as results
from tasks.steps.artifacts import page, table

__all__ = ["monthly_retrain"]


def comparison_truth(settings: Settings) -> results.Truth | None:
    """The true field to score the model comparison against: the demo world's, on the demo only."""
    if settings.source.value != "demo":
        return None
    from demo_world import truth_at_cells

    return truth_at_cells(settings.data_dir / "demo")


@flow(name="xco2-monthly-retrain", log_prints=True)
def monthly_retrain(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    settings = load_settings(**(overrides or {}))
    grid = Grid.for_region(settings.region, settings.grid_step)
    # A damaged sample file is recomputed from its inputs here rather than failing the read below.
    prefect_tasks.check_state(settings, grid)
    gosat = prefect_tasks.refit_gosat(settings, grid)
    X, y, df = retrain_tasks.load_training_data(settings)
    weight = df["weight"].to_numpy(np.float64)
    logger.info("%d samples (%.0f independent soundings) over %d days", len(y), weight.sum(), df["day"].nunique())

    # Holdouts, background, network, daily-anomaly field and the network's own spread.
    split = steps.split_samples(settings, df)
    background = retrain_tasks.fit_the_background(X, y, weight, split)
    trained = retrain_tasks.train(settings, X, y, weight, split, background)
    trained, field_fit = retrain_tasks.fit_daily_field(settings, trained, X, y, df, split)
    trained = retrain_tasks.calibrate_uncertainty(settings, trained, X, y, split)
    # Choices made, the deployed background refitted on every sample but the gate's.
    trained, field_fit = retrain_tasks.background_for_maps(trained, field_fit, X, y, df, split)
    scores = results.score_holdouts(trained, field_fit, X, y, df, split)
    logger.info("%s", NetworkShare.of(trained).reading)

    # One ONNX graph, parity checked; the figures on the data the gate compares on.
    work = Path(tempfile.mkdtemp(prefix="xco2-retrain-"))
    onnx_path = export_onnx(trained, work / "model.onnx")
    parity = check_onnx_parity(trained, onnx_path, X[split.random][:2000])
    gate_idx, gate = results.gate_data(split)
    gate_predicted, _ = results.archive_view(trained, field_fit, X, df, gate_idx)
    truth = comparison_truth(settings)
    reliability = results.reliability_of_holdouts(trained, field_fit, X, y, df, split, truth,
                                                  block_km=settings.promotion_block_km)
    figures = [plot_loss_curves(trained.history, work / "loss_curves.png"),
               plot_scatter(y[gate_idx], gate_predicted, work / "heldout_scatter.png"),
               results.reliability_figure(reliability, work / results.RELIABILITY_PNG, truth is not None)]

    # Logged and registered; the gate: the champion and this version (graph outputs) on the same
    # held-out cells neither saw.
    experiment = f"xco2-{settings.region.name}"
    params = results.training_params(settings, df, split, trained, gosat["fit"]["fit_id"], gate)
    version = log_training_run(settings.tracking_uri, experiment, settings.registered_model_name, trained,
                               onnx_path, results.metrics_for_mlflow(scores), params, figures,
                               {"source_mode": settings.source.value}, onnx_parity_max_abs_ppm=parity)
    decision = promote(settings.tracking_uri, settings.registered_model_name, version.version,
                       X[gate_idx], y[gate_idx], margin_ppm=settings.promotion_margin_ppm)
    tag_gate(settings.tracking_uri, settings.registered_model_name, version.version,
             decision.previous_champion_version, gate, len(gate_idx), settings.promotion_margin_ppm)

    comparison = None
    if settings.comparison_protocols:
        comparison = retrain_tasks.compare_models(settings, X, y, df, truth)
        log_model_comparison(settings.tracking_uri, experiment, comparison.table, comparison.figure,
                             results.baseline_params(settings.comparison_models, comparison.budget),
                             comparison.budget.to_params(), settings.source.value, run_id=version.run_id)
        prefect_tasks.publish([table("retrain-model-comparison", comparison.rounded_rows(),
                                     "Models x validation protocols on identical features and splits")])
    links = figure_links(settings.tracking_uri, version.run_id, figures)
    prefect_tasks.publish([
        table("retrain-heldout-scores", results.heldout_table(scores), "The map on held-out data, headline first"),
        page("retrain-report", results.report_markdown(settings, version, decision, trained, split, scores, field_fit,
                                                     parity, gate, links, comparison.markdown if comparison else None,
                                                     reliability)),
    ])
    result = results.run_result(version, decision, scores, gate, parity, trained, gosat["fit"], comparison, links)
    # Each interval's coverage at the diagram's levels (the demo's summary prints the true column's vs truth).
    result["reliability"] = [curve.to_dict() for curve in reliability]
    return result
