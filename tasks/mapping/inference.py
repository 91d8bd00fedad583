"""Step 5: predict every cell of the region's grid for a day with the champion's ONNX model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date
from typing import Callable, Protocol

import numpy as np

from models.onnx_contract import OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME
from tasks.covariates.features import FEATURE_NAMES, DayLayers, time_features
from tasks.gridding.geometry import Grid

log = logging.getLogger(__name__)


# The columns the background reads (models/background.py INPUTS), filled by TimeLocationLayers.
TIME_LOCATION = ("latitude", "longitude", "years_since_2015", "doy_sin", "doy_cos")


class CellPredictor(Protocol):
    """What the mapping asks of a model: tasks.mapping.onnx_runtime.OnnxPredictor, or a stand-in with the
    same three members (a predictor kept to the full graph, a counting fake)."""

    @property
    def output_names(self) -> list[str]: ...

    def cells_per_batch(self, requested: int) -> int: ...

    def run(self, features: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]: ...


# (rows done, rows in all) after each block of rows predicted.
RowProgress = Callable[[int, int], None]


@dataclass
class TimeLocationLayers:
    """A day's feature rows with only the calendar and the cell centres filled, the other covariates
    0: all a network-free graph (tasks/mapping/onnx_runtime.py::OnnxPredictor.without_network) reads, with
    no static layer, NDVI or ERA5 read. The filled columns hold the very float32 values DayLayers
    gives them (same casts), so the background comes out bit for bit the same."""

    day: date
    lats: np.ndarray
    lons: np.ndarray

    def _filled(self, n: int, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
        out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)  # calloc: untouched pages cost nothing
        out[:, FEATURE_NAMES.index("latitude")] = lats
        out[:, FEATURE_NAMES.index("longitude")] = lons
        for name, value in time_features(self.day).items():
            out[:, FEATURE_NAMES.index(name)] = value
        return out

    def for_rows(self, row_start: int, row_stop: int) -> np.ndarray:
        nx = self.lons.shape[0]
        return self._filled((row_stop - row_start) * nx, np.repeat(self.lats[row_start:row_stop], nx),
                            np.tile(self.lons, row_stop - row_start))

    def for_cells(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self._filled(len(rows), self.lats[rows], self.lons[cols])


def reads_only_time_location(columns: tuple[int, ...] | None) -> bool:
    """Whether a graph reading `columns` (OnnxPredictor.columns; None: every column) needs no covariate layer."""
    return columns is not None and all(FEATURE_NAMES[i] in TIME_LOCATION for i in columns)


@dataclass
class DayPrediction:
    """One day's maps, [ny, nx] float32 ppm; `uncertainty` is None for models exported without it."""

    xco2: np.ndarray
    uncertainty: np.ndarray | None


def _rows_of(layers: DayLayers | TimeLocationLayers, start: int, stop: int) -> DayLayers | TimeLocationLayers:
    if isinstance(layers, TimeLocationLayers):
        return replace(layers, lats=layers.lats[start:stop])
    # Slicing the rows first keeps the gather in memory: on the static memory map, fancy
    # indexing over the whole grid would touch pages all over the file.
    return replace(layers, static=layers.static[:, start:stop], ndvi=layers.ndvi[:, start:stop],
                   meteo=layers.meteo[:, start:stop], lats=layers.lats[start:stop])


def _row_blocks(cells_per_row: np.ndarray, cells_per_batch: int) -> list[tuple[int, int]]:
    """[start, stop) row blocks of about `cells_per_batch` cells to predict each (whole rows, at
    least one row); rows with none are skipped."""
    blocks: list[tuple[int, int]] = []
    start, count = None, 0
    for row, n in enumerate(cells_per_row.tolist()):
        if n == 0:
            if start is not None:
                blocks.append((start, row))
                start, count = None, 0
            continue
        if start is None:
            start = row
        elif count + n > cells_per_batch:
            blocks.append((start, row))
            start, count = row, 0
        count += n
    if start is not None:
        blocks.append((start, len(cells_per_row)))
    return blocks


def predict_day(predictor: CellPredictor, layers: DayLayers | TimeLocationLayers, grid: Grid, batch_size: int,
                progress: RowProgress | None = None, inside: np.ndarray | None = None) -> DayPrediction:
    """XCO2 (and its uncertainty when the model has one) for every cell with a
    tasks.mapping.onnx_runtime.OnnxPredictor; memory bounded by the batch (on a GPU, sized from free
    memory, at least `batch_size` cells' worth of whole rows).

    `inside`: boolean [ny, nx], the region's cells (tasks.regions.boundary.region_mask); the
    others get no features and no model run, and are NaN (nodata) in both maps. None: every cell."""
    wanted = [OUTPUT_NAME] + [n for n in predictor.output_names if n == UNCERTAINTY_OUTPUT_NAME]
    if inside is not None and inside.shape != grid.shape:
        raise ValueError(f"inside mask of shape {inside.shape} does not match the grid {grid.shape} (ny, nx)")
    # The cells to map when they are not the whole box (None: every cell, rows sliced whole).
    part = None if inside is None or bool(inside.all()) else inside
    maps = {name: np.full(grid.shape, np.nan, dtype=np.float32) for name in wanted}
    cells_per_batch = predictor.cells_per_batch(batch_size)
    if part is None:
        # Contiguous rows are sliced, not gathered: the hot path when every cell is mapped.
        rows_per_batch = max(1, cells_per_batch // grid.nx)
        blocks = [(start, min(grid.ny, start + rows_per_batch)) for start in range(0, grid.ny, rows_per_batch)]
    else:
        blocks = _row_blocks(part.sum(axis=1), cells_per_batch)
    for start, stop in blocks:
        if part is None:
            outputs = predictor.run(layers.for_rows(start, stop))
            for name, out in maps.items():
                out[start:stop] = np.asarray(outputs[name], dtype=np.float32).reshape(stop - start, grid.nx)
        else:
            rows, cols = np.nonzero(part[start:stop])
            outputs = predictor.run(_rows_of(layers, start, stop).for_cells(rows, cols))
            for name, out in maps.items():
                out[start + rows, cols] = np.asarray(outputs[name], dtype=np.float32)
        if progress:
            progress(stop, grid.ny)
    if progress and blocks and blocks[-1][1] < grid.ny:
        progress(grid.ny, grid.ny)
    bad = ~np.isfinite(maps[OUTPUT_NAME])
    if part is not None:
        bad &= part
    if bad.any():
        log.warning("%s: %d cells predicted non-finite; written as nodata", layers.day, int(bad.sum()))
    return DayPrediction(maps[OUTPUT_NAME], maps.get(UNCERTAINTY_OUTPUT_NAME))


def predict_xco2(predictor: CellPredictor, features: np.ndarray, batch_size: int) -> np.ndarray:
    """XCO2 (ppm) at arbitrary feature rows [n, k], e.g. the observed cells of recent days."""
    return predictor.run(np.ascontiguousarray(features, dtype=np.float32), batch_size=batch_size)[OUTPUT_NAME]
