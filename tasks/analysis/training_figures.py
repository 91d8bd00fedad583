"""PNG figures of a training run: loss curves (paper Fig. 5), the validation scatter (Fig. 6) and the
models x protocols comparison (Fig. 7, from models/comparison.py's table).

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot, so no global
backend is switched and drawing is safe in worker threads and on headless machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd

from models.comparison import TRUTH_PREFIX
from models.evaluation import regression_metrics

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not when this module loads
    from matplotlib.figure import Figure


def _save_png(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a PNG.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def plot_loss_curves(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Train/validation loss (MAE, ppm) per epoch, learning rate on a log axis, best epoch shown."""
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty training history: nothing to plot")
    epochs = [h["epoch"] for h in history]
    val = [h["val_loss"] for h in history]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    ax.plot(epochs, [h["train_loss"] for h in history], label="train", color="tab:blue")
    ax.plot(epochs, val, label="validation", color="tab:orange")
    best = int(np.argmin(val))
    ax.axvline(epochs[best], color="grey", ls=":", lw=1)
    ax.scatter([epochs[best]], [val[best]], color="tab:orange", zorder=3,
               label=f"best epoch {epochs[best]} ({val[best]:.3f} ppm)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 loss = MAE (ppm)")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.step(epochs, [h["lr"] for h in history], where="post", color="tab:green", lw=1,
               alpha=0.6, label="learning rate")
    if all(h["lr"] > 0 for h in history):
        lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lines, labels = ax.get_legend_handles_labels()
    lr_lines, lr_labels = lr_ax.get_legend_handles_labels()
    ax.legend(lines + lr_lines, labels + lr_labels, loc="upper right", fontsize=8)
    ax.set_title("ResNet-LSTM training")
    return _save_png(fig, path)


def plot_scatter(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, path: Path, title: str = "Validation") -> Path:
    """Density scatter of predicted vs observed XCO2 with the 1:1 line and the OLS fit."""
    from matplotlib.figure import Figure

    obs = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    m = regression_metrics(obs, pred)
    lo = float(min(obs.min(), pred.min()))
    hi = float(max(obs.max(), pred.max()))
    pad = max(hi - lo, 1e-6) * 0.03
    lo, hi = lo - pad, hi + pad

    fig = Figure(figsize=(5.6, 5))
    ax = fig.add_subplot()
    # Hexagon counts on a log scale: millions of points stay readable, where dots would saturate.
    hb = ax.hexbin(obs, pred, gridsize=80, bins="log", mincnt=1, cmap="viridis",
                   extent=(lo, hi, lo, hi))
    fig.colorbar(hb, ax=ax, label="samples per cell")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="1:1")
    if np.isfinite(m["slope"]):
        ax.plot([lo, hi], [m["slope"] * lo + m["intercept"], m["slope"] * hi + m["intercept"]],
                color="tab:red", lw=1.2,
                label=(f"fit: y = {m['slope']:.3f}x {'-' if m['intercept'] < 0 else '+'} "
                       f"{abs(m['intercept']):.2f}"))
    ax.text(0.03, 0.97,
            f"N = {m['n']}\nRMSE = {m['rmse']:.3f} ppm\nR² = {m['r2']:.3f}\n"
            f"MAE = {m['mae']:.3f} ppm\nbias = {m['bias']:+.3f} ppm",
            transform=ax.transAxes, va="top", fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("observed XCO₂ (ppm)")
    ax.set_ylabel("predicted XCO₂ (ppm)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return _save_png(fig, path)


def _label(name: str, kind: str) -> str:
    if kind == "model":
        from models.baselines import MODELS

        return MODELS[name].label if name in MODELS else name
    return name.replace("_", " ")


def comparison_figure(table: pd.DataFrame, path: str | Path,
                      title: str = "Validation of the models") -> Path:
    """Grouped bars of RMSE, R² and slope: protocols on the x axis, one bar per model (Fig. 7).

    With truth columns, the RMSE against the truth is drawn as a black tick on each bar."""
    from matplotlib.figure import Figure

    missing = [c for c in ("model", "protocol", "rmse", "r2") if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"table lacks rows or columns {missing}: pass run_comparison(...).table")
    models = list(dict.fromkeys(table["model"]))
    protocols = list(dict.fromkeys(table["protocol"]))
    panels = [("rmse", "RMSE (ppm)"), ("r2", "R²")]
    if "slope" in table.columns:
        panels.append(("slope", "slope"))
    fig = Figure(figsize=(4.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(models)
    x = np.arange(len(protocols))
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown"]
    for ax, (column, ylabel) in zip(axes, panels):
        for i, model in enumerate(models):
            values = []
            for protocol in protocols:
                hit = table[(table["model"] == model) & (table["protocol"] == protocol)]
                values.append(float(hit[column].iloc[0]) if len(hit) else np.nan)
            offsets = x - 0.4 + width * (i + 0.5)
            bars = ax.bar(offsets, values, width * 0.92, label=_label(model, "model"),
                          color=colors[i % len(colors)])
            ax.bar_label(bars, labels=[("" if not np.isfinite(v) else f"{v:.2f}")
                                       for v in values], fontsize=7, padding=1)
            if column == "rmse" and f"{TRUTH_PREFIX}rmse" in table.columns:
                truth = [float(table[(table["model"] == model) & (table["protocol"] == p)]
                               [f"{TRUTH_PREFIX}rmse"].iloc[0]) for p in protocols]
                ax.scatter(offsets, truth, marker="_", s=200, color="black", zorder=3,
                           label="vs truth" if i == 0 else None)
        if column in ("r2", "slope"):
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.margins(y=0.12)
        ax.set_xticks(x, [_label(p, "protocol") for p in protocols], rotation=15)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels),
               fontsize=9, frameon=False)
    fig.suptitle(title)
    return _save_png(fig, Path(path))
