"""Anchoring a day's map to the residuals of recent observations."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.mapping.anchoring import anchor_for_day, anchor_from_residuals, daily_residuals, sample_store_reader
from tasks.covariates.features import FEATURE_NAMES
from tasks.samples.store import write_day

DAY = date(2020, 8, 20)


def residual_table(offsets: dict[int, tuple[float, int]]) -> pd.DataFrame:
    """{days before DAY: (mean residual, cells)} -> the per-day residual table."""
    return pd.DataFrame([{"day": DAY - timedelta(days=k), "residual_ppm": r, "cells": n}
                         for k, (r, n) in offsets.items()])


def test_each_day_of_the_window_weighs_the_same():
    # A dense overpass (5000 cells at +2 ppm) and a sparse one (50 cells at 0 ppm): 1 ppm, not ~2.
    # Two days are too few for a line: the mean is used, and the anchor says so.
    anchor = anchor_from_residuals(DAY, residual_table({0: (2.0, 5000), 3: (0.0, 50)}), 16, 20)
    assert anchor.offset_ppm == pytest.approx(1.0) and anchor.method == "mean"
    assert (anchor.n_days, anchor.n_cells) == (2, 5050)
    assert anchor.window_start == DAY - timedelta(days=15) and anchor.window_end == DAY


def test_days_outside_the_window_after_the_day_or_too_sparse_do_not_count():
    table = residual_table({0: (1.0, 100), 16: (9.0, 100), -1: (9.0, 100), 2: (9.0, 5)})
    anchor = anchor_from_residuals(DAY, table, 16, 20)
    assert anchor.offset_ppm == pytest.approx(1.0) and anchor.n_days == 1
    tags = anchor.to_tags()
    assert tags["anchor_offset_ppm"] == "1.0000" and tags["anchor_window"] == "2020-08-05/2020-08-20"


def test_no_observations_means_no_offset_and_says_so():
    anchor = anchor_from_residuals(DAY, residual_table({30: (3.0, 500)}), 16, 20)
    assert anchor.offset_ppm == 0.0 and not anchor.anchored and anchor.method == "none"
    with pytest.raises(ValueError, match="window_days"):
        anchor_from_residuals(DAY, residual_table({0: (1.0, 100)}), 0, 20)
    with pytest.raises(ValueError, match="method"):
        anchor_from_residuals(DAY, residual_table({0: (1.0, 100)}), 16, 20, method="median")


def test_the_trend_follows_a_drifting_model_where_the_mean_lags():
    """A stale model whose error grows 0.05 ppm a day (the seasonal drawdown it never saw): the
    line through the window's daily residuals is right on the day, the mean is half a window late."""
    drift = {k: (1.0 - 0.05 * k, 300) for k in range(0, 24, 2)}  # residual 1.0 ppm today
    trend = anchor_from_residuals(DAY, residual_table(drift), 24, 20, method="trend")
    mean = anchor_from_residuals(DAY, residual_table(drift), 24, 20, method="mean")
    assert trend.method == "trend" and trend.offset_ppm == pytest.approx(1.0)
    assert trend.slope_ppm_per_day == pytest.approx(0.05)
    assert mean.offset_ppm == pytest.approx(1.0 - 0.05 * 11)
    # Days bunched at the start of the window cannot carry a line across it: the mean is used.
    bunched = anchor_from_residuals(DAY, residual_table({k: (1.0 - 0.05 * k, 300) for k in (20, 21, 22, 23)}),
                                    24, 20, method="trend")
    assert bunched.method == "mean"


def test_a_model_that_drifted_is_pulled_back_to_the_observations(tmp_path):
    """Observations 2 ppm above what a stale model predicts: the offset is +2 whatever the pattern."""
    rng = np.random.default_rng(0)
    for k in range(5):
        day = DAY - timedelta(days=k)
        n = 300
        frame = pd.DataFrame({name: rng.normal(size=n).astype(np.float32) for name in FEATURE_NAMES})
        frame["xco2"] = 410.0 + 2.0 + frame[FEATURE_NAMES[0]].astype(np.float64)
        frame["day"] = day
        frame["cell"] = np.arange(n, dtype=np.int64) + 1000 * k
        frame["row"] = np.zeros(n, dtype=np.int32)
        frame["col"] = np.arange(n, dtype=np.int32)
        frame["xco2_uncertainty"] = 0.5
        frame["source"] = "oco2"
        frame["n_soundings"] = np.ones(n, dtype=np.int32)
        frame["weight"], frame["fit_id"] = 1.0, ""
        write_day(tmp_path, day, frame)

    def stale_model(X):  # right pattern, level of two ppm ago
        return 410.0 + X[:, 0].astype(np.float64)

    reader = sample_store_reader(tmp_path, max_cells_per_day=100)
    anchor = anchor_for_day(DAY, reader, stale_model, FEATURE_NAMES, 16, 20)
    assert anchor.offset_ppm == pytest.approx(2.0, abs=1e-4)
    assert anchor.method == "mean"  # five days span under a third of the 16-day window
    assert anchor.n_days == 5 and anchor.n_cells == 500  # capped at 100 cells a day
    again = reader(DAY - timedelta(days=4), DAY)
    assert again.equals(reader(DAY - timedelta(days=4), DAY))  # the same cells every run


def test_daily_residuals_groups_by_day():
    obs = pd.DataFrame({"day": [DAY, DAY, DAY - timedelta(days=1)], "xco2": [411.0, 413.0, 410.0]})
    table = daily_residuals(obs, np.array([410.0, 410.0, 410.0]))
    got = dict(zip(table["day"], zip(table["residual_ppm"], table["cells"])))
    assert got == {DAY: (2.0, 2), DAY - timedelta(days=1): (0.0, 1)}
