"""Anchoring each day's map to recent observations, so the archive can run past the training window.

The model gives the spatial pattern and the covariates' day-to-day signal; the level comes from
the satellites. Past the last training day the model's level drifts (CO2 keeps rising, the seasonal
cycle moves on, and tree models cannot extrapolate at all), while fresh soundings keep arriving.
So each map gets one offset from the residuals (observed - predicted) of the fused observations of
the trailing `window_days` days, each day's mean residual weighted equally so one dense overpass
does not decide it. method "trend" fits a straight line through those daily means and takes its
value on the day itself: a trailing mean lags the drift by half the window, which on the demo world
left +0.2-0.4 ppm in the 60 days after training (the summer drawdown), against 0.00-0.07 ppm for the
line (measured before the daily-anomaly field replaced it: docs/validation.md). With fewer than
MIN_TREND_DAYS usable days, or days spanning less
than a third of the window, the line is not trusted and the plain mean is used. Inside the
training window the model fits those observations and the offset stays near zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = ("trend", "mean")
MIN_TREND_DAYS = 4


@dataclass(frozen=True)
class Anchor:
    """The offset added to one day's map and what it rests on."""

    day: date
    offset_ppm: float
    n_cells: int
    n_days: int
    window_start: date
    window_end: date
    method: str = "mean"  # what was actually used: "trend", "mean", or "none" (no observations)
    slope_ppm_per_day: float = 0.0

    @property
    def anchored(self) -> bool:
        return self.n_days > 0

    def to_tags(self) -> dict[str, str]:
        """COG tags / STAC properties (strings: the COG tag format)."""
        return {
            "anchor_offset_ppm": f"{self.offset_ppm:.4f}",
            "anchor_cells": str(self.n_cells),
            "anchor_days": str(self.n_days),
            "anchor_window": f"{self.window_start.isoformat()}/{self.window_end.isoformat()}",
            "anchor_method": self.method,
            "anchor_slope_ppm_per_day": f"{self.slope_ppm_per_day:.5f}",
        }

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(day=self.day.isoformat(), window_start=self.window_start.isoformat(),
                   window_end=self.window_end.isoformat())
        return out


def daily_residuals(observations: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """Per day: mean residual (observed - predicted, ppm) and the number of observed cells."""
    residual = observations["xco2"].to_numpy(np.float64) - np.asarray(predicted, dtype=np.float64)
    frame = pd.DataFrame({"day": pd.to_datetime(observations["day"]).dt.date, "residual": residual})
    frame = frame[np.isfinite(frame["residual"])]
    return frame.groupby("day")["residual"].agg(["mean", "size"]).rename(
        columns={"mean": "residual_ppm", "size": "cells"}).reset_index()


def anchor_from_residuals(day: date, residuals: pd.DataFrame, window_days: int, min_cells_per_day: int,
                          method: str = "trend") -> Anchor:
    """The offset for `day` from per-day residuals (columns day, residual_ppm, cells)."""
    if window_days < 1:
        raise ValueError(f"anchor window_days must be >= 1, got {window_days}")
    if method not in METHODS:
        raise ValueError(f"anchor method must be one of {METHODS}, got {method!r}")
    first = day - timedelta(days=window_days - 1)
    usable = residuals[(residuals["day"] >= first) & (residuals["day"] <= day)
                       & (residuals["cells"] >= min_cells_per_day)]
    if usable.empty:
        return Anchor(day, 0.0, 0, 0, first, day, method="none")
    n_cells, n_days = int(usable["cells"].sum()), len(usable)
    age = np.array([(d - day).days for d in usable["day"]], dtype=np.float64)  # <= 0
    values = usable["residual_ppm"].to_numpy(np.float64)
    if method == "trend" and n_days >= MIN_TREND_DAYS and np.ptp(age) >= window_days / 3:
        slope, at_day = np.polyfit(age, values, 1)
        return Anchor(day, float(at_day), n_cells, n_days, first, day, method="trend", slope_ppm_per_day=float(slope))
    return Anchor(day, float(values.mean()), n_cells, n_days, first, day, method="mean")


def anchor_for_day(
    day: date,
    read_observations: Callable[[date, date], pd.DataFrame],
    predict: Callable[[np.ndarray], np.ndarray],
    feature_names: list[str] | tuple[str, ...],
    window_days: int,
    min_cells_per_day: int,
    method: str = "trend",
) -> Anchor:
    """Read the fused observations of the window (sample store rows: features and xco2), predict
    them with the same model that maps the day, and average the residuals."""
    first = day - timedelta(days=window_days - 1)
    observations = read_observations(first, day)
    if observations.empty:
        return Anchor(day, 0.0, 0, 0, first, day, method="none")
    predicted = predict(observations[list(feature_names)].to_numpy(np.float32))
    return anchor_from_residuals(day, daily_residuals(observations, predicted), window_days, min_cells_per_day,
                                 method)


def sample_store_reader(region_dir: Path, max_cells_per_day: int) -> Callable[[date, date], pd.DataFrame]:
    """Reads the fused observations of [first, last] from the sample store, at most
    `max_cells_per_day` per day: a subsample seeded by the day, so a re-run reads the same cells."""
    from tasks.samples.store import read_samples

    def read(first: date, last: date) -> pd.DataFrame:
        frame = read_samples(region_dir, first, last)
        if frame.empty:
            return frame
        keep = []
        for day, rows in frame.groupby(pd.to_datetime(frame["day"]).dt.date).indices.items():
            if len(rows) > max_cells_per_day:
                rows = np.sort(np.random.default_rng(day.toordinal()).choice(rows, max_cells_per_day, replace=False))
            keep.append(rows)
        return frame.iloc[np.concatenate(keep)].reset_index(drop=True)

    return read
