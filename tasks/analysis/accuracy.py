"""Accuracy of archived maps against a known truth (the demo world), split by whether a cell
was ever observed: the honest measure of gap filling is at cells no satellite saw."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import rasterio

from models.evaluation import regression_metrics
from tasks.analysis.reliability import coverage_range
from tasks.archive import day_cog_path
from tasks.archive.cog import TRUE_COLUMN_BAND, UNCERTAINTY_BAND, band_index
from tasks.gridding.geometry import Grid
from tasks.samples.store import read_samples


def observed_cells(region_dir: Path, grid: Grid) -> np.ndarray:
    """Boolean [ny, nx]: cells with a fused sample on any day of the store."""
    seen = np.zeros(grid.n_cells, dtype=bool)
    df = read_samples(region_dir)
    seen[df["cell"].to_numpy(np.int64)] = True
    return seen.reshape(grid.shape)


def accuracy_against_truth(archive_root: Path, region_name: str, region_dir: Path, grid: Grid,
                           truth_for_day: Callable[[date], np.ndarray], days: list[date]) -> dict:
    """Metrics of archived maps vs truth over `days`, at all cells and at never-observed cells, and
    the coverage of the truth there by each 68% interval the maps carry (bands found by name)."""
    seen = observed_cells(region_dir, grid)
    pred_all, true_all, pred_gap, true_gap = [], [], [], []
    # per never-observed cell: truth within the map's 68% interval for a retrieval (band 2) and
    # within the true column's (band 3, format 2)
    inside: dict[str, list[np.ndarray]] = {UNCERTAINTY_BAND: [], TRUE_COLUMN_BAND: []}
    day_of: dict[str, list[np.ndarray]] = {UNCERTAINTY_BAND: [], TRUE_COLUMN_BAND: []}
    for k, day in enumerate(days):
        with rasterio.open(day_cog_path(archive_root, region_name, day)) as src:
            pred = src.read(1, masked=True).filled(np.nan)
            half_widths = {}
            for name in inside:
                index = band_index(src, name)
                if index is not None:
                    half_widths[name] = src.read(index, masked=True).filled(np.nan)
        truth = truth_for_day(day)
        ok = np.isfinite(pred) & np.isfinite(truth)
        for name, half_width in half_widths.items():
            gap_ok = ok & ~seen & np.isfinite(half_width)
            inside[name].append(np.abs(pred[gap_ok] - truth[gap_ok]) <= half_width[gap_ok])
            day_of[name].append(np.full(int(gap_ok.sum()), k))
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
    # Band 2 is calibrated on observations, which carry retrieval noise the truth lacks, so against
    # the truth it should cover more than the nominal 68%; band 3 is the one meant to cover 68%.
    # The cells of a day share its level error: the chance range resamples the days (coverage_range).
    for key, name in (("never_observed_interval_coverage", UNCERTAINTY_BAND),
                      ("never_observed_true_column_coverage", TRUE_COLUMN_BAND)):
        hits = np.concatenate(inside[name]) if inside[name] else np.array([])
        out[key] = float(hits.mean()) if hits.size else None
        if name == TRUE_COLUMN_BAND:
            out["never_observed_true_column_range"] = (
                coverage_range(hits, np.concatenate(day_of[name]), unit="days").to_dict() if hits.size else None)
    return out
