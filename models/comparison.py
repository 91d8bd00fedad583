"""Models x validation protocols on identical features and splits: one table (its Fig. 7-like PNG is
tasks/analysis/training_figures.py `comparison_figure`).

`run_comparison(models, protocols, X, y, latitude, longitude, days, seed, budget).table` holds one
row per (model, protocol). For every protocol the folds are drawn once (models.validation.make_split) and
every model sees the same rows of each fold:

- the held-out rows of the fold are scored (capped by `budget.max_test_samples`, the same rows for
  every model); the metrics of a cross-validation are computed on the pooled out-of-fold
  predictions (each sample predicted once, by the fold that held it out); random_holdout scores
  its one holdout;
- the training rows of the fold are split again, respecting the protocol's grouping (whole blocks
  or days under the block protocols), into fitting rows and a validation set that only the
  ResNet-LSTM uses (early stopping); all models are fitted on the same fitting rows (capped by
  `budget.max_train_samples`). The test rows never reach a model before it is scored.

Columns: model, protocol, rmse, r2, slope, intercept, mae, bias, n (pooled out-of-fold scores),
n_folds, n_train (mean fitting rows per fold), rmse_fold_std (spread of per-fold RMSEs; nan for a
holdout), fit_seconds and predict_seconds (summed over folds). With `truth(cells, days) -> ppm`
(and `cells`), also truth_rmse, truth_r2, truth_slope, truth_mae, truth_bias, truth_n: the same
predictions scored against the true field at the held-out cell-days, free of retrieval noise.

Cost: every model is fitted once per fold: 1 + 2 * n_folds fits for random_holdout +
spatial_blocks + temporal_blocks. Measured on 2 CPU cores with the 46 features: a ResNet-LSTM
epoch costs ~1 ms per training sample (prediction ~0.3 ms per sample); a 200-tree Random Forest
~3 min on 50,000 samples (all features at every split); XGBoost ~1 s on 50,000. So
`Budget.cpu()` (20,000 samples, <= 20 epochs) is <= ~7 min per ResNet-LSTM fold and ~1.5 min per
forest fold; with the Table 5 recipe on all samples, use a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.baselines import Budget, cap_rows, get_model
from models.evaluation import regression_metrics
from models.validation import PROTOCOLS, Column, Split, group_holdout, make_split, random_holdout

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_KEYS",
    "TABLE_COLUMNS",
    "ComparisonResult",
    "metrics_by_protocol",
    "run_comparison",
    "table_markdown",
]

METRIC_KEYS = ("rmse", "r2", "slope", "intercept", "mae", "bias", "n")
TABLE_COLUMNS = ("model", "protocol", *METRIC_KEYS, "n_folds", "n_train", "rmse_fold_std",
                 "fit_seconds", "predict_seconds")
TRUTH_PREFIX = "truth_"

TruthFunction = Callable[[np.ndarray, np.ndarray | None], npt.ArrayLike]
"""truth(cells, days) -> true XCO2 (ppm) at those cell-days (days None when the samples have none); nan where unknown."""


@dataclass
class ComparisonResult:
    """The table, per-fold scores, and the pooled held-out predictions of every (model, protocol):
    predictions[(model, protocol)] = (sample indices, predicted ppm), indices sorted."""

    table: pd.DataFrame
    folds: pd.DataFrame
    predictions: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    splits: dict[str, Split] = field(default_factory=dict)


def _inner_split(split: Split, train_idx: np.ndarray, fraction: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fitting and validation rows inside a training fold, by the protocol's groups."""
    groups = split.groups[train_idx]
    if np.unique(groups).size >= 2:
        fit, val = group_holdout(groups, fraction, seed)
    else:
        log.warning("%s: one group in a training fold; validation rows drawn at random",
                    split.protocol)
        fit, val = random_holdout(len(train_idx), fraction, seed)
    return train_idx[fit], train_idx[val]


def _check_inputs(X: npt.ArrayLike, y: npt.ArrayLike, latitude: Column | None, longitude: Column | None,
                  days: Column | None, feature_names: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be [n, n_features] and y [n]; got {X.shape} and {y.shape}")
    n = X.shape[0]
    for name, values in (("latitude", latitude), ("longitude", longitude), ("days", days)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values for {n} samples")
    names = (list(feature_names) if feature_names is not None
             else [f"x{i}" for i in range(X.shape[1])])
    if len(names) != X.shape[1]:
        raise ValueError(f"{len(names)} feature names for {X.shape[1]} columns")
    return X, y, names


def run_comparison(
    models: Sequence[str],
    protocols: Sequence[str],
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    latitude: Column | None,
    longitude: Column | None,
    days: Column | None,
    seed: int = 0,
    budget: Budget | None = None,
    truth: TruthFunction | None = None,
    *,
    cells: Column | None = None,
    feature_names: Sequence[str] | None = None,
    n_folds: int = 5,
    block_km: float = 50.0,
    holdout_fraction: float = 0.2,
    block_days: int = 1,
) -> ComparisonResult:
    """Fit and score every model under every protocol; see the module doc."""
    budget = budget or Budget()
    specs = [get_model(m) for m in models]
    if len(set(models)) != len(models) or len(set(protocols)) != len(protocols):
        raise ValueError("models and protocols must not repeat")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols or not specs:
        raise ValueError(f"need models and protocols; unknown protocols {unknown}, known: "
                         f"{', '.join(PROTOCOLS)}")
    X, y, names = _check_inputs(X, y, latitude, longitude, days, feature_names)
    if truth is not None and cells is None:
        raise ValueError("truth needs the cell of every sample: pass cells=")
    cells_arr = None if cells is None else np.asarray(cells)
    days_arr = None if days is None else np.asarray(days)

    rows, fold_rows = [], []
    predictions: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    splits: dict[str, Split] = {}
    for protocol in protocols:
        split = make_split(protocol, n=len(y), latitude=latitude, longitude=longitude, days=days,
                           seed=seed, n_folds=n_folds, block_km=block_km,
                           holdout_fraction=holdout_fraction, block_days=block_days)
        splits[protocol] = split
        pooled: dict[str, dict[str, list[Any]]] = {
            s.name: {"idx": [], "pred": [], "fit": [], "predict": [], "n_train": [], "rmse": []}
            for s in specs
        }
        for k, (train_idx, test_idx) in enumerate(split.folds):
            fit_idx, val_idx = _inner_split(split, train_idx, budget.validation_fraction,
                                            seed + k)
            fit_idx = fit_idx[cap_rows(len(fit_idx), budget.max_train_samples, seed + k, 1)]
            val_idx = val_idx[cap_rows(len(val_idx), budget.max_val_samples, seed + k, 2)]
            test_idx = test_idx[cap_rows(len(test_idx), budget.max_test_samples, seed + k, 3)]
            for spec in specs:
                started = time.perf_counter()
                predictor = spec.fit(X[fit_idx], y[fit_idx], X[val_idx], y[val_idx], names,
                                     seed, budget)
                fit_seconds = time.perf_counter() - started
                started = time.perf_counter()
                pred = np.asarray(predictor.predict(X[test_idx]), dtype=np.float64)
                predict_seconds = time.perf_counter() - started
                fold_metrics = regression_metrics(y[test_idx], pred)
                log.info("%s / %s fold %d/%d: RMSE %.3f ppm on %d, fit %.1f s",
                         spec.name, protocol, k + 1, len(split.folds), fold_metrics["rmse"],
                         len(test_idx), fit_seconds)
                acc = pooled[spec.name]
                acc["idx"].append(test_idx)
                acc["pred"].append(pred)
                acc["fit"].append(fit_seconds)
                acc["predict"].append(predict_seconds)
                acc["n_train"].append(len(fit_idx))
                acc["rmse"].append(fold_metrics["rmse"])
                fold_rows.append({"model": spec.name, "protocol": protocol, "fold": k,
                                  **fold_metrics, "n_train": len(fit_idx),
                                  "n_val": len(val_idx), "fit_seconds": fit_seconds,
                                  "predict_seconds": predict_seconds})
        for spec in specs:
            acc = pooled[spec.name]
            idx = np.concatenate(acc["idx"])
            pred = np.concatenate(acc["pred"])
            order = np.argsort(idx, kind="stable")
            idx, pred = idx[order], pred[order]
            predictions[(spec.name, protocol)] = (idx, pred)
            row = {"model": spec.name, "protocol": protocol,
                   **regression_metrics(y[idx], pred),
                   "n_folds": len(split.folds),
                   "n_train": float(np.mean(acc["n_train"])),
                   "rmse_fold_std": (float(np.std(acc["rmse"], ddof=1))
                                     if len(acc["rmse"]) > 1 else float("nan")),
                   "fit_seconds": float(np.sum(acc["fit"])),
                   "predict_seconds": float(np.sum(acc["predict"]))}
            if truth is not None and cells_arr is not None:  # truth comes with cells (checked above)
                row.update(_truth_scores(truth, cells_arr[idx],
                                         None if days_arr is None else days_arr[idx], pred))
            rows.append(row)
    table = pd.DataFrame(rows)
    return ComparisonResult(table=table, folds=pd.DataFrame(fold_rows),
                            predictions=predictions, splits=splits)


def _truth_scores(truth: TruthFunction, cells: np.ndarray, days: np.ndarray | None,
                  pred: np.ndarray) -> dict[str, float]:
    true = np.asarray(truth(cells, days), dtype=np.float64).reshape(-1)
    if true.shape != pred.shape:
        raise ValueError(f"truth returned {true.shape[0]} values for {pred.shape[0]} cell-days")
    ok = np.isfinite(true)
    keys = ("rmse", "r2", "slope", "mae", "bias", "n")
    if ok.sum() < 2:
        return {f"{TRUTH_PREFIX}{k}": (0 if k == "n" else float("nan")) for k in keys}
    m = regression_metrics(true[ok], pred[ok])
    return {f"{TRUTH_PREFIX}{k}": m[k] for k in keys}


# --------------------------------------------------------------------------------------------
# Reporting


def metrics_by_protocol(table: pd.DataFrame, model: str) -> dict[str, dict[str, float]]:
    """{protocol: {rmse, r2, ...}} of one model, as registry.comparison_runs.log_baseline_run wants."""
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"no rows for model {model!r} in the table")
    skip = {"model", "protocol"}
    out = {}
    for _, row in rows.iterrows():
        out[str(row["protocol"])] = {
            k: float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float, np.integer, np.floating))
            and np.isfinite(v)
        }
    return out


def table_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """The table as GitHub Markdown (no tabulate dependency)."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not np.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
