"""Record baseline models and model comparisons in MLflow.

- `log_baseline_run`: one run per baseline model (Random Forest, XGBoost, or a ResNet-LSTM scored
  under several protocols): params, metrics named `<protocol>_<metric>` (e.g.
  `spatial_blocks_rmse`), figures under figures/, tags. Baselines are not registered as models:
  the registry holds only deployable ResNet-LSTM versions (registry.tracking), so promotion never
  sees a baseline.
- `log_comparison`: the comparison table as comparison/comparison.csv and comparison.md, its
  figure under figures/, and metrics `<model>.<protocol>_<metric>`, into a given run (e.g. the
  retrain's training run) or a new run.

Written through MlflowClient only (no fluent API, so no process-global state); the experiment is
created as registry.tracking creates it (artifacts next to a sqlite DB). Params and tags are
redacted like the training runs'.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from registry.redaction import redact_mapping, redact_uri
from registry.store import FIGURES_DIR, client_for
from registry.tracking import _MAX_METRICS_PER_BATCH, _MAX_PARAMS_PER_BATCH, ensure_experiment

log = logging.getLogger(__name__)

COMPARISON_DIR = "comparison"
RUN_KIND_TAG = "xco2.run_kind"
_METRIC_KEYS = ("rmse", "r2", "slope", "intercept", "mae", "bias", "n")
# MLflow's allowed characters in metric and param names.
_NAME_OK = re.compile(r"^[\w\-. /]+$")


def _check_name(kind: str, name: str) -> str:
    if not _NAME_OK.match(name):
        raise ValueError(f"{kind} name {name!r}: use letters, digits, _ - . / and spaces only")
    return name


def _protocol_metrics(metrics_by_protocol: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for protocol, metrics in metrics_by_protocol.items():
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                out[_check_name("metric", f"{protocol}_{key}")] = number
    if not any(name.endswith("_rmse") for name in out):
        raise ValueError(
            "metrics_by_protocol must map protocols to regression_metrics scores "
            f"(at least rmse), got {dict(metrics_by_protocol)!r:.200}"
        )
    return out


def _figures(figures: Sequence[str | Path]) -> list[Path]:
    paths = [Path(f) for f in figures]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"figures not found: {', '.join(missing)}")
    return paths


def _log_batches(client: MlflowClient, run_id: str, params: Mapping[str, str],
                 metrics: Mapping[str, float]) -> None:
    items = list(params.items())
    for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=[
            Param(_check_name("param", k), v) for k, v in items[i:i + _MAX_PARAMS_PER_BATCH]])
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for i in range(0, len(entries), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=entries[i:i + _MAX_METRICS_PER_BATCH])


def _start_run(client: MlflowClient, tracking_uri: str, experiment_name: str, run_name: str | None,
               tags: Mapping[str, str]) -> str:
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    run = client.create_run(experiment_id, tags=dict(tags), run_name=run_name)
    return run.info.run_id


def log_baseline_run(
    tracking_uri: str,
    experiment_name: str,
    model_name: str,
    params: Mapping[str, Any] | None,
    metrics_by_protocol: Mapping[str, Mapping[str, Any]],
    figures: Sequence[str | Path] = (),
    tags: Mapping[str, Any] | None = None,
    *,
    run_name: str | None = None,
) -> str:
    """Log one baseline as its own finished run; returns the run id.

    `metrics_by_protocol`: {protocol: regression_metrics-like scores} (e.g.
    models.comparison.metrics_by_protocol(table, model)), logged as `<protocol>_<key>`; non-finite
    and non-numeric values are skipped. `params` (hyperparameters, budget, data sizes) and `tags`
    are redacted; the run is tagged with the model name and run kind 'baseline'."""
    metrics = _protocol_metrics(metrics_by_protocol)
    paths = _figures(figures)
    run_params = {**redact_mapping(params), "model": str(model_name)}
    run_tags = {**redact_mapping(tags), "model": str(model_name), RUN_KIND_TAG: "baseline"}
    client = client_for(tracking_uri)
    run_id = _start_run(client, tracking_uri, experiment_name,
                        run_name or f"baseline-{model_name}", run_tags)
    try:
        _log_batches(client, run_id, run_params, metrics)
        for path in paths:
            client.log_artifact(run_id, str(path), FIGURES_DIR)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    log.info("logged baseline %s run %s (experiment %r) at %s: %s", model_name, run_id,
             experiment_name, redact_uri(tracking_uri),
             ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.endswith("_rmse")))
    return run_id


def log_comparison(
    tracking_uri: str,
    experiment_name: str,
    table: pd.DataFrame,
    figure_path: str | Path | None,
    run_id: str | None = None,
    *,
    run_name: str = "model-comparison",
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Log a models x protocols table (models.comparison.run_comparison(...).table) and its figure; returns the
    run id. Into `run_id` when given (the run is left as it was: open or finished), else into a
    new finished run tagged run kind 'comparison'.

    Artifacts: comparison/comparison.csv, comparison/comparison.md, figures/<figure name>.
    Metrics: `<model>.<protocol>_<metric>` for rmse, r2, slope, intercept, mae, bias, n."""
    from models.comparison import table_markdown

    for column in ("model", "protocol", "rmse"):
        if column not in table.columns:
            raise ValueError(f"table lacks column {column!r}: pass models.comparison.run_comparison(...).table")
    figures = _figures([figure_path] if figure_path is not None else [])
    metrics = {}
    for _, row in table.iterrows():
        for key in _METRIC_KEYS:
            value = row.get(key)
            if value is not None and math.isfinite(float(value)):
                metrics[_check_name("metric", f"{row['model']}.{row['protocol']}_{key}")] = (
                    float(value))
    client = client_for(tracking_uri)
    created = run_id is None
    if run_id is None:
        run_id = _start_run(client, tracking_uri, experiment_name, run_name,
                            {**redact_mapping(tags), RUN_KIND_TAG: "comparison"})
    elif tags:
        for key, value in redact_mapping(tags).items():
            client.set_tag(run_id, key, value)
    try:
        with tempfile.TemporaryDirectory(prefix="xco2-comparison-") as tmp:
            csv = Path(tmp) / "comparison.csv"
            table.to_csv(csv, index=False)
            md = Path(tmp) / "comparison.md"
            md.write_text(table_markdown(table))
            client.log_artifact(run_id, str(csv), COMPARISON_DIR)
            client.log_artifact(run_id, str(md), COMPARISON_DIR)
        for path in figures:
            client.log_artifact(run_id, str(path), FIGURES_DIR)
        _log_batches(client, run_id, {}, metrics)
        if created:
            client.log_batch(run_id, params=[
                Param("models", ",".join(dict.fromkeys(map(str, table["model"])))),
                Param("protocols", ",".join(dict.fromkeys(map(str, table["protocol"])))),
            ], tags=[RunTag("n_rows", str(len(table)))])
    except BaseException:
        if created:
            client.set_terminated(run_id, status="FAILED")
        raise
    if created:
        client.set_terminated(run_id, status="FINISHED")
    log.info("logged model comparison (%d rows) to run %s at %s", len(table), run_id,
             redact_uri(tracking_uri))
    return run_id


def log_model_comparison(tracking_uri: str, experiment_name: str, table: pd.DataFrame, figure: str | Path,
                         model_params: Mapping[str, Mapping[str, Any]], budget_params: Mapping[str, Any],
                         source_mode: str, run_id: str | None = None) -> None:
    """A comparison's baselines (one run each, `model_params` by model name, the ResNet-LSTM
    excepted: its run is the retrain's) and its table and figure on the retrain's run `run_id`."""
    from models.comparison import metrics_by_protocol

    for model, params in model_params.items():
        if model != "resnet_lstm":
            log_baseline_run(tracking_uri, experiment_name, model, {**params, **budget_params},
                             metrics_by_protocol(table, model), [figure], {"source_mode": source_mode})
    log_comparison(tracking_uri, experiment_name, table, figure, run_id=run_id)
