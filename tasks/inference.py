"""Step 5: predict every cell of the region's grid for a day with the champion's ONNX model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from models.onnx_contract import OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME
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


@dataclass
class DayPrediction:
    """One day's maps, [ny, nx] float32 ppm; `uncertainty` is None for models exported without it."""

    xco2: np.ndarray
    uncertainty: np.ndarray | None


def predict_day(session, layers: DayLayers, grid: Grid, batch_size: int, progress=None) -> DayPrediction:
    """XCO2 (and its uncertainty when the model has one) for every cell; memory bounded by
    `batch_size` cells."""
    input_name = session.get_inputs()[0].name
    wanted = [OUTPUT_NAME] + [o.name for o in session.get_outputs() if o.name == UNCERTAINTY_OUTPUT_NAME]
    maps = [np.empty(grid.shape, dtype=np.float32) for _ in wanted]
    rows_per_batch = max(1, batch_size // grid.nx)
    for start in range(0, grid.ny, rows_per_batch):
        stop = min(grid.ny, start + rows_per_batch)
        features = layers.for_rows(start, stop)
        for out, pred in zip(maps, session.run(wanted, {input_name: features})):
            out[start:stop] = np.asarray(pred, dtype=np.float32).reshape(stop - start, grid.nx)
        if progress:
            progress(stop, grid.ny)
    bad = ~np.isfinite(maps[0])
    if bad.any():
        log.warning("%s: %d cells predicted non-finite; written as nodata", layers.day, int(bad.sum()))
    return DayPrediction(maps[0], maps[1] if len(maps) > 1 else None)


def predict_xco2(session, features: np.ndarray, batch_size: int) -> np.ndarray:
    """XCO2 (ppm) at arbitrary feature rows [n, k], e.g. the observed cells of recent days."""
    input_name = session.get_inputs()[0].name
    out = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), batch_size):
        chunk = np.ascontiguousarray(features[start : start + batch_size], dtype=np.float32)
        out[start : start + len(chunk)] = session.run([OUTPUT_NAME], {input_name: chunk})[0]
    return out
