"""Accuracy of archived maps against a known truth (the demo world), split by whether a cell
was ever observed: the honest measure of gap filling is at cells no satellite saw."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import rasterio

from models.evaluation import regression_metrics
from tasks.archive import day_cog_path
from tasks.gridding.geometry import Grid
from tasks.samples.store import read_samples


def observed_cells(region_dir: Path, grid: Grid) -> np.ndarray:
    """Boolean [ny, nx]: cells with a fused sample on any day of the store."""
    seen = np.zeros(grid.n_cells, dtype=bool)
    df = read_samples(region_dir)
    seen[df["cell"].to_numpy(np.int64)] = True
    return seen.reshape(grid.shape)


def accuracy_against_truth(archive_root: Path, region_name: str, region_dir: Path, grid: Grid,
                           truth_for_day, days: list[date]) -> dict:
    """Metrics of archived maps vs truth over `days`, at all cells and at never-observed cells."""
    seen = observed_cells(region_dir, grid)
    pred_all, true_all, pred_gap, true_gap = [], [], [], []
    inside = []  # per never-observed cell: truth within the map's 68% interval (band 2)
    for day in days:
        with rasterio.open(day_cog_path(archive_root, region_name, day)) as src:
            pred = src.read(1, masked=True).filled(np.nan)
            half_width = src.read(2, masked=True).filled(np.nan) if src.count >= 2 else None
        truth = truth_for_day(day)
        ok = np.isfinite(pred) & np.isfinite(truth)
        if half_width is not None:
            gap_ok = ok & ~seen & np.isfinite(half_width)
            inside.append(np.abs(pred[gap_ok] - truth[gap_ok]) <= half_width[gap_ok])
        pred_all.append(pred[ok])
        true_all.append(truth[ok])
        gap = ok & ~seen
        pred_gap.append(pred[gap])
        true_gap.append(truth[gap])
    out = {"days": [d.isoformat() for d in days],
           "observed_cell_fraction": float(seen.mean())}
    out["all_cells"] = regression_metrics(np.concatenate(true_all), np.concatenate(pred_all))
    gap_true = np.concatenate(true_gap)
    out["never_observed_cells"] = (regression_metrics(gap_true, np.concatenate(pred_gap))
                                   if gap_true.size > 2 else None)
    # The interval is calibrated on observations, which carry retrieval noise the truth lacks,
    # so against the truth it should cover at least the nominal 68%.
    hits = np.concatenate(inside) if inside else np.array([])
    out["never_observed_interval_coverage"] = float(hits.mean()) if hits.size else None
    return out
