"""One day mapped and published: the champion's network through ONNX Runtime, the daily-anomaly
field (or the single offset of older champions), the COG with its provenance and the STAC item.

A plain function: the Prefect task (`tasks/prefect_tasks.py::map_day`) and the backfill's worker
processes (`tasks/mapping/backfill_pool.py`) both call it.
"""

from __future__ import annotations

import logging
from datetime import date
from functools import partial
from typing import Any, Callable

import numpy as np

from tasks.archive import day_cog_path, upsert_day_item, write_day_cog
from tasks.archive.provenance import InputDigests, Provenance, input_window
from tasks.archive.stac import item_properties_of
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION, DayLayers
from tasks.covariates.day import day_layers
from tasks.covariates.static import StaticCovariates
from tasks.gridding.geometry import Grid
from tasks.io.progress import progress_bar
from tasks.mapping import anchoring
from tasks.mapping.champion import Champion
from tasks.mapping.daily_anomaly import background_of, daily_anomaly, field_of
from tasks.mapping.inference import (CellPredictor, TimeLocationLayers, predict_day, predict_xco2,
                                     reads_only_time_location)
from tasks.regions.boundary import region_mask
from tasks.samples import ingest
from tasks.settings import Settings

log = logging.getLogger(__name__)


def mapping_window(settings: Settings, champion: Champion, day: date) -> tuple[date, date]:
    """The days whose observations map_day uses for `day` with `champion` (as its branches choose)."""
    field = field_of(champion.mapping)
    if field is not None and settings.daily_anomaly:
        return input_window(day, field.window_days, None)
    if (settings.anchoring and field is None
            and (champion.train_last_day is None or day > champion.train_last_day)):
        return input_window(day, None, settings.anchor_window_days)
    return input_window(day, None, None)


def current_provenance(settings: Settings, champion: Champion,
                       digests: InputDigests | None = None) -> Callable[[date], Provenance]:
    """day -> the Provenance mapping that day now would record (the stored fit, today's files)."""
    digests = digests or InputDigests(settings.region_dir, settings.raw("era5"))
    stored = ingest.stored_gosat_fit(settings.region_dir)
    fit_id = stored.fit_id if stored is not None else ""

    def of(day: date) -> Provenance:
        return digests.provenance(champion.name, str(champion.version), fit_id, mapping_window(settings, champion, day))
    return of


def map_day(settings: Settings, grid: Grid, day: date, predictor: CellPredictor,
            champion: Champion) -> dict[str, Any]:
    """Map one day with the champion's predictor (tasks.mapping.onnx_runtime.OnnxPredictor) and publish
    its COG and STAC item; the day's row for the run's artifacts."""
    inside = region_mask(settings.region, grid)
    field = field_of(champion.mapping)
    with_field = field is not None and settings.daily_anomaly
    # With a network share of 0 the map is background + field: the graph's background alone, with
    # no network pass and no covariate layer read (OnnxPredictor.for_mapping); the same bits.
    # The model's own uncertainty band is only kept where no field replaces it.
    mapper: CellPredictor = (predictor.for_mapping(keep_uncertainty=not with_field)
                             if hasattr(predictor, "for_mapping") else predictor)
    network_pass = getattr(mapper, "network_pass", True)
    layers: DayLayers | TimeLocationLayers
    if reads_only_time_location(getattr(mapper, "columns", None)):
        layers = TimeLocationLayers(day, grid.lats, grid.lons)
    else:
        layers = day_layers(StaticCovariates(settings.region_dir), settings.raw("era5"), grid, day)
    log.info("%s: %s, %s", day, getattr(mapper, "path", "full graph"), getattr(mapper, "precision", "fp32"))
    anchor = anomaly = None
    predict = partial(predict_xco2, mapper, batch_size=settings.inference_batch_size)
    if field is not None and with_field:
        anomaly = daily_anomaly(settings.region_dir, champion.version, grid, day, predict, FEATURE_NAMES, field,
                                settings.daily_anomaly_max_cells_per_day, inside, background_of(champion.mapping))
        if anomaly.n_superobs == 0:
            log.warning("%s: no observations within %d days; the map is the model alone", day, field.window_days)
    # Champions exported before the background carry no field: the single offset of before.
    # Inside their training window the model has fitted these very observations: their residuals
    # are fitting noise, not drift, and an offset would only add it to the map.
    elif settings.anchoring and field is None and (champion.train_last_day is None or day > champion.train_last_day):
        anchor = anchoring.anchor_for_day(
            day, anchoring.sample_store_reader(settings.region_dir, settings.anchor_max_cells_per_day),
            predict, FEATURE_NAMES, settings.anchor_window_days, settings.anchor_min_cells_per_day,
            settings.anchor_method)
        if not anchor.anchored:
            log.warning("%s: no observations in the %d days up to it; the map is not anchored", day,
                        settings.anchor_window_days)
    with progress_bar(f"mapping {day}", grid.ny) as advance:
        prediction = predict_day(mapper, layers, grid, settings.inference_batch_size,
                                 progress=lambda d, _t: advance(d), inside=inside)
    xco2 = prediction.xco2 + np.float32(anchor.offset_ppm if anchor else 0.0)
    uncertainty = prediction.uncertainty
    true_column = None
    if anomaly is not None:
        xco2 = xco2 + anomaly.mean
        uncertainty = anomaly.half_width
        true_column = anomaly.true_column_half_width
    synthetic = settings.source.value == "demo"
    # What the map was made from, read after mapping: the same files the field just read.
    provenance = current_provenance(settings, champion)(day)
    tags = {
        "units": "ppm",
        "date": day.isoformat(),
        "region": settings.region.name,
        "model_name": champion.name,
        "model_version": str(champion.version),
        "feature_set_version": FEATURE_SET_VERSION,
        "source_mode": settings.source.value,
        "synthetic": "true" if synthetic else "false",
        **(anomaly.to_tags() if anomaly else anchor.to_tags() if anchor else
           {"anchor_offset_ppm": "0", "anchor_method": "off" if not settings.anchoring else "in training window"}),
        **provenance.to_tags(),
        "network_pass": "yes" if network_pass else "no (network share 0: background + daily anomaly)",
        "network_precision": getattr(mapper, "precision", "fp32"),
    }
    if anomaly is not None:
        tags["uncertainty"] = ("band 2: half-width of the calibrated 68% interval for a retrieval at the cell (ppm): "
                               "background, network and daily-anomaly uncertainty and retrieval noise")
        # Band 3 or why there is none (docs/data.md).
        tags["true_column_uncertainty"] = (
            "band 3: half-width of the calibrated 68% interval of the true column at the cell (ppm): background-"
            "parameter and daily-anomaly uncertainty, no retrieval noise" if true_column is not None else
            "absent: the champion has no calibrated true-column scale (exported before it, or its held-out "
            "retrievals could not separate it from their noise); band 2 is for a retrieval, not the truth")
    elif uncertainty is not None:
        tags["uncertainty"] = "band 2: half-width of the calibrated 68% interval (ppm)"
    if synthetic:
        tags["note"] = "SYNTHETIC demo output: not real XCO2"
    path = day_cog_path(settings.archive_root, settings.region.name, day)
    write_day_cog(path, xco2, grid, tags, uncertainty=uncertainty, true_column_uncertainty=true_column)
    # From the COG's tags as written (the writer adds the format version), as the archive check
    # derives them when it restores a lost item.
    upsert_day_item(settings.archive_root, settings.region, grid, day, path, item_properties_of(path))
    finite = xco2[np.isfinite(xco2)]
    return {"day": day.isoformat(), "path": str(path), "cells": int(finite.size),
            "mean_ppm": round(float(finite.mean()), 3) if finite.size else None,
            "min_ppm": round(float(finite.min()), 3) if finite.size else None,
            "max_ppm": round(float(finite.max()), 3) if finite.size else None,
            "anchor_offset_ppm": round(anchor.offset_ppm, 3) if anchor else None,
            "own_day_rmse_ppm": round(anomaly.own_day_rmse_ppm, 3) if anomaly and anomaly.own_day_n else None,
            "own_day_superobs": anomaly.own_day_n if anomaly else None,
            "model_version": str(champion.version), "network_pass": network_pass}
