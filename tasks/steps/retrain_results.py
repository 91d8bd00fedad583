"""What the monthly retrain scores, logs and reports (flows/retrain.py), as plain functions: the
map on held-out data, the promotion gate's data, the parameters and metrics logged to MLflow, the
model comparison and the report. The training itself is tasks/steps/retrain.py. Tested in
tests/test_retrain_steps.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from models.holdouts import FieldFit, Holdouts, NetworkShare, holdout_scores, map_predict, map_true_column
from models.residual_field import day_number
from models.validation import spatial_block_ids
from tasks.analysis import reliability as rel
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.settings import Settings

if TYPE_CHECKING:
    from models.baselines import Budget
    from models.training import TrainedModel


# --------------------------------------------------------------------------------------------
# Scoring the map on held-out data, the promotion gate's data, what is logged and reported

HOLDOUT_LABELS = {"spatial blocks": "spatial blocks (whole blocks nobody trained on)",
                  "whole days": "whole days (days nobody trained on)",
                  "random (optimistic)": "random holdout (optimistic: beside training cells of the same tracks)"}
_MLFLOW_PREFIX = {"spatial blocks": "blocks", "whole days": "days", "random (optimistic)": "random_optimistic"}
BACKGROUND_TERMS = ("intercept", "trend", "annual_sin", "annual_cos", "semiannual_sin", "semiannual_cos", "lat", "lon")


def archive_view(trained: TrainedModel, field_fit: FieldFit | None, X: np.ndarray, df: pd.DataFrame, idx: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """What a map shows at the samples `idx`: model + field and its band, or the model and its own
    spread when the retrain had too few observations for a field."""
    if field_fit is None:
        return trained.predict(X[idx]), (trained.predict_uncertainty(X[idx]) if trained.spread is not None else None)
    return map_predict(field_fit, df, trained.predict(X[idx]), idx)


def score_holdouts(trained: TrainedModel, field_fit: FieldFit | None, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                   split: Holdouts) -> dict[str, dict]:
    """The archive's view (model + daily anomaly, conditioned on every sample but the gate's) on the
    scoring halves; the random holdout last, labelled optimistic."""
    sources = df["source"].to_numpy()
    days = df["day"].to_numpy()
    weight = df["weight"].to_numpy(np.float64)
    out = {}
    for name, idx in (("spatial blocks", split.blocks_score), ("whole days", split.days_score),
                      ("random (optimistic)", split.random)):
        if len(idx) < 2:
            continue
        predicted, half_width = archive_view(trained, field_fit, X, df, idx)
        out[name] = holdout_scores(y[idx], predicted, half_width, days[idx], sources[idx], weight[idx])
    return out


# The true column's 68 % half-width at held-out samples (`idx`), None when the model has no
# calibrated true-column interval.
TrueColumnView = Callable[[np.ndarray], "np.ndarray | None"]
# The true XCO2 at (cell, day) pairs: the demo world's (flows/retrain.py::comparison_truth).
Truth = Callable[[np.ndarray, "np.ndarray | None"], Any]
RELIABILITY_PNG = "reliability.png"
# (name, uri) of each figure logged with the run (registry.tracking.figure_links).
FigureLinks = Sequence[tuple[str, str]]


class RegisteredVersion(Protocol):
    """The registered model version the retrain made (registry.tracking.ModelVersionInfo; tasks/
    does not import registry/)."""

    @property
    def version(self) -> int: ...

    @property
    def run_id(self) -> str: ...


class GateDecision(Protocol):
    """The promotion gate's decision (registry.promotion.PromotionDecision)."""

    @property
    def alias(self) -> str: ...

    @property
    def reason(self) -> str: ...


def reliability_of_holdouts(trained: TrainedModel, field_fit: FieldFit | None, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                            split: Holdouts, truth: Truth | None = None,
                            true_column: TrueColumnView | None = None, block_km: float = 50.0) -> list[rel.Reliability]:
    """Each interval's coverage at 50, 68, 90 and 95 % on the scoring halves of blocks and days.

    The retrieval interval against the held-out retrievals, each counted by its independent
    soundings as the 68 % coverage of `score_holdouts` is. The true column's interval against the
    truth where there is one (the demo world), each held-out cell-day once; on real data there is
    no truth to check it against here (`xco2 benchmark real` checks it through the retrieval noise
    of neighbouring retrievals). true_column: the true column's half-width at held-out samples
    (default: the archive's, models.holdouts.map_true_column, when the retrain fitted a field).
    Each 68 % coverage carries its chance range (rel.coverage_range) over the units that share an
    error: the held-out blocks (of `block_km`, the split's) and the held-out days."""
    weight = df["weight"].to_numpy(np.float64)
    if true_column is None and field_fit is not None:
        fitted = field_fit

        def true_column(idx: np.ndarray) -> np.ndarray | None:
            return map_true_column(fitted, df, trained.background, idx)

    curves = []
    for name, idx in (("spatial blocks", split.blocks_score), ("whole days", split.days_score)):
        if len(idx) < 2:
            continue
        if name == "spatial blocks":
            groups, unit = spatial_block_ids(df["latitude"].to_numpy()[idx], df["longitude"].to_numpy()[idx],
                                             block_km=block_km), "blocks"
        else:
            groups, unit = day_number(df["day"].to_numpy()[idx]).astype(np.int64), "days"
        predicted, half_width = archive_view(trained, field_fit, X, df, idx)
        if half_width is not None:
            curves.append(rel.reliability(f"retrieval interval vs retrievals, {name}", predicted - y[idx], half_width,
                                          weight[idx], groups=groups, unit=unit))
        true_half = true_column(idx) if true_column is not None else None
        if truth is not None and true_half is not None:
            true_values = np.asarray(truth(df["cell"].to_numpy()[idx], df["day"].to_numpy()[idx]), np.float64)
            curves.append(rel.reliability(f"true column vs truth, {name}", predicted - true_values, true_half,
                                          groups=groups, unit=unit))
    return curves


def reliability_figure(curves: list[rel.Reliability], path: Path, truth: bool) -> Path:
    """The retrain's reliability diagram (an MLflow figure beside the loss curves and the scatter)."""
    note = None if truth else ("the true column's interval is not drawn: real data have no truth to check it "
                               "against (xco2 benchmark real checks it through neighbouring retrievals)")
    return rel.reliability_figure(curves, path, "Reliability of the intervals, scoring halves", note=note)


def headline(scores: dict[str, dict]) -> dict:
    """val_* in MLflow and the registry: the headline holdout, spatial blocks when the region has them."""
    return scores.get("spatial blocks") or scores.get("whole days") or scores["random (optimistic)"]


def metrics_for_mlflow(scores: dict[str, dict]) -> dict[str, float]:
    """The headline's metrics plus every holdout's, prefixed (blocks_rmse, days_r2, ...)."""
    top = headline(scores)
    return {**{k: top[k] for k in ("rmse", "r2", "slope", "mae", "bias", "n")},
            **{f"{_MLFLOW_PREFIX[h]}_{k}": float(v) for h, s in scores.items() for k, v in s.items()}}


def gate_data(split: Holdouts) -> tuple[np.ndarray, str]:
    """The samples the promotion gate compares champion and challenger on, and their name."""
    if len(split.gate):
        return split.gate, "scoring halves of held-out blocks and days"
    return split.random, "random holdout"


def training_params(settings: Settings, df: pd.DataFrame, split: Holdouts, trained: TrainedModel, gosat_fit_id: str,
                    gate: str) -> dict[str, Any]:
    """The run's parameters logged to MLflow beside the training configuration (the background's
    coefficients are the deployed one's)."""
    if trained.background is None:  # the retrain's network always learns the anomaly from one
        raise ValueError("the retrain's parameters name the background's coefficients; this model has none")
    field_params = ({f"field_{k}": v for k, v in trained.residual_field.to_dict().items()}
                    if trained.residual_field is not None else {"field": "none (too few observations)"})
    return {"n_random_holdout": len(split.random), "n_heldout_blocks": len(split.spatial),
            "n_heldout_days": len(split.whole_days), "region": settings.region.name,
            "validation": "held-out blocks and whole days (scoring halves); random holdout optimistic",
            "promotion_holdout": gate, "samples_days": int(df["day"].nunique()),
            "train_last_day": str(max(df["day"]))[:10], "gosat_fit_id": gosat_fit_id,
            "anomaly_scale": round(trained.anomaly_scale, 4), **field_params,
            **{f"background_{t}": round(c, 5) for t, c in zip(BACKGROUND_TERMS, trained.background.coefficients)}}


def heldout_table(scores: dict[str, dict]) -> list[dict]:
    return [{"holdout": HOLDOUT_LABELS[h], **{k: round(float(v), 4) for k, v in s.items()}} for h, s in scores.items()]


def report_markdown(settings: Settings, version: RegisteredVersion, decision: GateDecision, trained: TrainedModel,
                    split: Holdouts, scores: dict[str, dict], field_fit: FieldFit | None, parity: float, gate: str,
                    figure_links: FigureLinks, comparison_markdown: str | None,
                    reliability: list[rel.Reliability] | None = None) -> str:
    """The retrain's report: samples, held-out scores (headline first), the field, parity, the gate,
    and each interval's reliability when given."""
    lines = [f"# Retrain {settings.registered_model_name} v{version.version}", "",
             f"- samples: {trained.n_train} fit / {trained.n_val} early stopping / {len(split.random)} random / "
             f"{len(split.spatial)} in held-out blocks / {len(split.whole_days)} on held-out days "
             "(blocks and days: half calibrate, half score)",
             f"- best epoch {trained.best_epoch} of {len(trained.history)}",
             f"- **{NetworkShare.of(trained).reading}** (the share of the network's anomaly that held-out "
             "data support; 0: the covariates add nothing the background has not)",
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
    if f is None or field_fit is None:  # the two come together (tasks/steps/retrain.py::fit_daily_field)
        lines += ["", "- daily-anomaly field: none (too few observations to fit one); maps are the model alone"]
    else:
        lines += ["", f"- daily-anomaly field: local {f.local_variance:.2f} ppm2 / {f.local_length_km:.0f} km / "
                  f"{f.local_time_days:.1f} d, regional {f.regional_variance:.2f} ppm2 / {f.regional_length_km:.0f} km / "
                  f"{f.regional_time_days:.1f} d ({f.spatial_shape} in space), noise {f.point_noise():.2f} ppm2, "
                  f"window +-{f.window_days} d; interval "
                  f"scale {f.interval_scale:.2f} (calibration coverage "
                  + ", ".join(f"{k} {v:.1%}" for k, v in field_fit.calibration_coverage.items()) + ")"]
        if f.true_column_scale is not None:
            lines += [f"- true column's interval (band 3): scale {f.true_column_scale:.2f} on the field's and the "
                      f"background's variance, unmodelled floor {f.unmodelled_variance:.3f} ppm2 (a scale of 1.00 is "
                      "the field's own: the held-out days did not tell another apart from it)"]
    if reliability:
        lines += ["", "## Reliability of the intervals (scoring halves)", "",
                  "Observed coverage at each nominal level, the archived 68 % half-width scaled as a Gaussian's "
                  "sigma; a calibrated interval sits on the nominal value at every level.", "",
                  rel.markdown_table(reliability)]
    lines += [f"- ONNX parity: max |diff| {parity:.2e} ppm",
              f"- promotion gate ({gate}): alias **{decision.alias}** ({decision.reason})",
              "", "## Figures (MLflow artifacts)", ""] + [f"- [{name}]({uri})" for name, uri in figure_links]
    if comparison_markdown:
        lines += ["", "## Model comparison", "", comparison_markdown]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The model comparison (issue 4): baselines and protocols on identical features and splits

@dataclass(frozen=True)
class ModelComparison:
    table: pd.DataFrame
    figure: Path
    budget: Budget

    @property
    def markdown(self) -> str:
        from models.comparison import table_markdown

        return table_markdown(self.table)

    def rows(self) -> list[dict]:
        return self.table.to_dict(orient="records")

    def rounded_rows(self) -> list[dict]:
        return self.table.round(4).to_dict(orient="records")


def compare_models(settings: Settings, X: np.ndarray, y: np.ndarray, df: pd.DataFrame,
                   truth: Callable[[np.ndarray, np.ndarray | None], Any] | None = None) -> ModelComparison:
    """Every configured model under every configured protocol; with `truth` (the demo world's),
    each also scored against the true field."""
    from models.baselines import Budget
    from models.comparison import run_comparison
    from tasks.analysis.training_figures import comparison_figure

    budget = Budget.cpu(max_train_samples=settings.comparison_max_train_samples,
                        max_epochs=settings.comparison_max_epochs, feature_set_version=FEATURE_SET_VERSION)
    result = run_comparison(settings.comparison_models, settings.comparison_protocols, X, y,
                            df["latitude"].to_numpy(), df["longitude"].to_numpy(), df["day"].to_numpy(),
                            seed=settings.seed, budget=budget, truth=truth, cells=df["cell"].to_numpy(),
                            feature_names=list(FEATURE_NAMES), n_folds=settings.comparison_folds)
    work = Path(tempfile.mkdtemp(prefix="xco2-compare-"))
    return ModelComparison(result.table, comparison_figure(result.table, work / "model_comparison.png"), budget)


def run_result(version: RegisteredVersion, decision: GateDecision, scores: dict[str, dict], gate: str, parity: float,
               trained: TrainedModel, gosat_fit: dict, comparison: ModelComparison | None,
               figure_links: FigureLinks) -> dict:
    """What monthly_retrain returns."""
    return {"version": version.version, "run_id": version.run_id, "alias": decision.alias,
            "holdouts": scores, "metrics": scores.get("random (optimistic)", {}), "spatial_metrics": headline(scores),
            "promotion_holdout": gate, "onnx_parity_max_abs_ppm": parity, "decision": decision.reason,
            "uncertainty": {k: v.get("coverage68") for k, v in scores.items()},
            "residual_field": trained.residual_field.to_dict() if trained.residual_field is not None else None,
            "anomaly_scale": trained.anomaly_scale, "network_share": NetworkShare.of(trained).to_dict(),
            "gosat_fit": gosat_fit,
            "epochs": len(trained.history), "best_epoch": trained.best_epoch,
            "comparison": comparison.rows() if comparison else None, "figures": dict(figure_links)}


def baseline_params(models: list[str] | tuple[str, ...], budget: Budget) -> dict[str, dict]:
    """Each compared baseline's parameters under `budget`, by name (logged with its baseline run;
    the ResNet-LSTM's run is the retrain's own)."""
    from models.baselines import MODELS

    return {m: MODELS[m].params(budget) for m in models if m != "resnet_lstm"}
