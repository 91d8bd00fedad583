"""A day's covariates: whether its inputs are usable (ERA5 complete and plausible, NDVI composites
not quarantined) and its feature layers on the grid. Sampling a day (tasks/samples/ingest.py) and
mapping it (tasks/mapping/) both come through here, so both judge and build a day alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from tasks.covariates.features import DayLayers
from tasks.covariates.meteorology import Era5Readiness, era5_readiness, meteo_for_day
from tasks.covariates.static import StaticCovariates, ndvi_problem
from tasks.gridding.geometry import Grid


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
    not be quarantined (tasks.covariates.static.ndvi_problem). Static layers feed every day: a bad one
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
