"""Step 5: predict every cell of the region's grid for a day with the champion's ONNX model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from models.onnx_contract import OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME
from tasks.covariates import StaticCovariates, ndvi_problem
from tasks.features import DayLayers
from tasks.grid import Grid
from tasks.meteorology import Era5Readiness, era5_readiness, meteo_for_day

log = logging.getLogger(__name__)


@dataclass
class DayReadiness:
    """Whether a day's inputs can be sampled and mapped: its meteorology and its NDVI."""

    day: date
    era5: Era5Readiness
    ndvi_problem: str | None = None  # e.g. "waiting: NDVI composite ndvi_2020161.tif quarantined (...)"

    @property
    def ready(self) -> bool:
        return self.era5.ready and not self.ndvi_problem

    @property
    def why(self) -> str:
        return "; ".join(p for p in (self.era5.why, self.ndvi_problem) if p)


def day_readiness(era5_dir: Path, day: date, region_dir: Path | None = None, quarantine_dir: Path | None = None,
                  manifest_path: Path | None = None) -> DayReadiness:
    """Are a day's inputs usable? ERA5 as era5_readiness judges it (with `quarantine_dir`, a bad
    file is quarantined); with `region_dir`, an NDVI composite the day is interpolated from must
    not be quarantined (tasks.covariates.ndvi_problem). Static layers feed every day: a bad one
    fails the covariates build instead."""
    meteo = era5_readiness(era5_dir, day, quarantine_dir, manifest_path)
    return DayReadiness(day, meteo, ndvi_problem(region_dir, day) if region_dir is not None else None)


def inputs_available(era5_dir: Path, day: date, quarantine_dir: Path | None = None,
                     manifest_path: Path | None = None, region_dir: Path | None = None) -> bool:
    """A day can be mapped once its meteorology is complete and plausible and (with
    `region_dir`) its NDVI composites are not quarantined; see day_readiness."""
    return day_readiness(era5_dir, day, region_dir, quarantine_dir, manifest_path).ready


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


def predict_day(predictor, layers: DayLayers, grid: Grid, batch_size: int, progress=None) -> DayPrediction:
    """XCO2 (and its uncertainty when the model has one) for every cell with a
    models.onnx_runtime.OnnxPredictor; memory bounded by the batch (on a GPU, sized from free
    memory, at least `batch_size` cells' worth of whole rows)."""
    wanted = [OUTPUT_NAME] + [n for n in predictor.output_names if n == UNCERTAINTY_OUTPUT_NAME]
    maps = {name: np.empty(grid.shape, dtype=np.float32) for name in wanted}
    rows_per_batch = max(1, predictor.cells_per_batch(batch_size) // grid.nx)
    for start in range(0, grid.ny, rows_per_batch):
        stop = min(grid.ny, start + rows_per_batch)
        outputs = predictor.run(layers.for_rows(start, stop))
        for name, out in maps.items():
            out[start:stop] = np.asarray(outputs[name], dtype=np.float32).reshape(stop - start, grid.nx)
        if progress:
            progress(stop, grid.ny)
    bad = ~np.isfinite(maps[OUTPUT_NAME])
    if bad.any():
        log.warning("%s: %d cells predicted non-finite; written as nodata", layers.day, int(bad.sum()))
    return DayPrediction(maps[OUTPUT_NAME], maps.get(UNCERTAINTY_OUTPUT_NAME))


def predict_xco2(predictor, features: np.ndarray, batch_size: int) -> np.ndarray:
    """XCO2 (ppm) at arbitrary feature rows [n, k], e.g. the observed cells of recent days."""
    return predictor.run(np.ascontiguousarray(features, dtype=np.float32), batch_size=batch_size)[OUTPUT_NAME]
