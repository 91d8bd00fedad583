"""Step 5: predict every cell of the region's grid for a day with the champion's ONNX model."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import numpy as np

from tasks.covariates import StaticCovariates
from tasks.features import DayLayers
from tasks.grid import Grid
from tasks.meteorology import era5_available, meteo_for_day

log = logging.getLogger(__name__)


def inputs_available(era5_dir: Path, day: date) -> bool:
    """A day can be mapped once its meteorology is complete (static layers are built once)."""
    return era5_available(era5_dir, day)


def day_layers(covariates: StaticCovariates, era5_dir: Path, grid: Grid, day: date) -> DayLayers:
    return DayLayers(
        day=day,
        static=covariates.static,
        ndvi=covariates.ndvi_for_day(day),
        meteo=meteo_for_day(era5_dir, day, grid),
        lats=grid.lats,
        lons=grid.lons,
    )


def predict_day(session, layers: DayLayers, grid: Grid, batch_size: int, progress=None) -> np.ndarray:
    """XCO2 (ppm) for every cell, [ny, nx] float32; memory bounded by `batch_size` cells."""
    input_name = session.get_inputs()[0].name
    out = np.empty(grid.shape, dtype=np.float32)
    rows_per_batch = max(1, batch_size // grid.nx)
    for start in range(0, grid.ny, rows_per_batch):
        stop = min(grid.ny, start + rows_per_batch)
        features = layers.for_rows(start, stop)
        pred = session.run(None, {input_name: features})[0]
        out[start:stop] = np.asarray(pred, dtype=np.float32).reshape(stop - start, grid.nx)
        if progress:
            progress(stop, grid.ny)
    bad = ~np.isfinite(out)
    if bad.any():
        log.warning("%s: %d cells predicted non-finite; written as nodata", layers.day, int(bad.sum()))
    return out
