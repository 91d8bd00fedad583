"""The true XCO2 of a demo world: XCO2(cell, day) in ppm.

  trend (fit to the anchors' yearly means: ~399.0 ppm mid-2015, ~2.68 ppm/yr)
+ seasonal cycle (the anchors' monthly anomalies, periodic spline by day; phase flipped south)
+ urban enhancement (saturating in population density, up to ~3 ppm; stronger on stagnant days)
+ vegetation drawdown (NDVI x a June-September factor, down to ~-1.5 ppm)
+ terrain (-0.3 ppm per km above 500 m)
+ daily field (~0.85 ppm, ~200 km, AR(1) lag-1 ~0.7), partly the ERA5 `met` latent.
The spatial terms are centred on their mean over the anchors' box (26-34.5N, 92-108.5E), so the
box mean follows the anchors table whatever region is generated, and a cell's truth does not
depend on the region or window it was generated with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
from scipy.interpolate import CubicSpline

from demo_world.covariates import StaticCovariates
from demo_world.layout import RasterGrid, WorldLayout
from demo_world.noise import Sampler
from demo_world.population import population_density, settlements, urban_density
from demo_world.terrain import elevation_m
from demo_world.vegetation import (
    composite_start,
    ndvi_composite,
    ndvi_peak,
    water_mask,
)
from demo_world.weather import Weather

# docs/anchors.md: Sichuan-box mean XCO2 (NIES GOSAT L3) and the mean seasonal anomaly.
ANCHOR_YEAR_MEANS = {2015: 399.0, 2016: 402.0, 2017: 405.0, 2018: 407.5, 2019: 410.8,
                     2020: 412.9, 2021: 415.3, 2022: 417.8}
ANCHOR_MONTHLY_ANOMALY = (0.3, 0.8, 1.2, 2.5, 2.5, 0.6, -1.6, -3.2, -3.2, -1.7, 0.2, 1.7)
ANCHOR_BOX = (92.0, 26.0, 108.5, 34.5)  # west, south, east, north
BOX_STEP_DEG = 0.05

URBAN_MAX_PPM = 3.0
URBAN_SATURATION_PER_KM2 = 6000.0
URBAN_STAGNATION_GAIN = 0.25  # +25% per unit of the `met` latent (stagnant highs)
VEGETATION_PPM_PER_NDVI = -1.8
TERRAIN_PPM_PER_KM = -0.3
TERRAIN_FROM_M = 500.0
DAILY_STD_PPM = 0.85
DAILY_MET_SHARE = 0.7  # correlation of the daily field with ERA5's `met` latent


def _fit_trend() -> tuple[float, float]:
    years = np.array(sorted(ANCHOR_YEAR_MEANS), dtype=np.float64) + 0.5
    values = np.array([ANCHOR_YEAR_MEANS[int(y)] for y in years - 0.5])
    slope, intercept = np.polyfit(years, values, 1)
    return float(slope), float(intercept)


TREND_PPM_PER_YEAR, _TREND_INTERCEPT = _fit_trend()


def decimal_year(day: date) -> float:
    start = date(day.year, 1, 1)
    length = (date(day.year + 1, 1, 1) - start).days
    return day.year + ((day - start).days + 0.5) / length


def trend_ppm(day: date) -> float:
    return _TREND_INTERCEPT + TREND_PPM_PER_YEAR * decimal_year(day)


def _seasonal_spline() -> CubicSpline:
    anomaly = np.array(ANCHOR_MONTHLY_ANOMALY) - np.mean(ANCHOR_MONTHLY_ANOMALY)
    mid_month = (np.arange(12) + 0.5) / 12.0
    x = np.concatenate([mid_month, [mid_month[0] + 1.0]])
    y = np.concatenate([anomaly, [anomaly[0]]])
    return CubicSpline(x, y, bc_type="periodic")


_SEASON = _seasonal_spline()


def _north_weight(lat: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(lat, np.float64) / 4.0, -40, 40)))


def seasonal_anomaly_ppm(day: date, lat: np.ndarray) -> np.ndarray:
    """The anchors' cycle in the north; half a year later and weaker (x0.3) in the south."""
    phase = decimal_year(day) % 1.0
    w = _north_weight(lat)
    return w * _SEASON(phase) + (1 - w) * 0.3 * _SEASON((phase + 0.5) % 1.0)


def summer_factor(day: date, lat: np.ndarray) -> np.ndarray:
    """0 outside June-September, rising to 1 in late July (December-March in the south)."""
    phase = decimal_year(day) % 1.0

    def bump(p: float) -> float:
        start, end = 151.0 / 365.0, 273.0 / 365.0
        return float(np.sin(np.pi * (p - start) / (end - start)) ** 2) if start <= p <= end else 0.0

    w = _north_weight(lat)
    return w * bump(phase) + (1 - w) * bump((phase + 0.5) % 1.0)


def background_ppm(day: date, lat: np.ndarray) -> np.ndarray:
    return trend_ppm(day) + seasonal_anomaly_ppm(day, lat)


def terrain_ppm(elevation: np.ndarray) -> np.ndarray:
    return (TERRAIN_PPM_PER_KM * np.maximum(elevation - TERRAIN_FROM_M, 0.0) / 1000.0).astype(
        np.float32)


def urban_ppm(population: np.ndarray) -> np.ndarray:
    return (URBAN_MAX_PPM * (1.0 - np.exp(-population / URBAN_SATURATION_PER_KM2))).astype(
        np.float32)


@dataclass
class AnchorBoxMeans:
    """Means of the spatial terms over the anchors' box, on a coarse lattice."""

    seed: int
    terrain: float = 0.0
    urban: float = 0.0
    _ndvi_means: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        box = RasterGrid.covering(*ANCHOR_BOX, BOX_STEP_DEG)
        self._sampler = Sampler.on_grid(box.lats, box.lons)
        self._lats = box.lats
        cities = settlements(self.seed, *ANCHOR_BOX)
        self._z = elevation_m(self._sampler, self.seed)
        urban = urban_density(box.lats, box.lons, cities)
        self._peak = ndvi_peak(self._sampler, self.seed, self._z, urban)
        self._water = water_mask(self._sampler, self.seed, self._z)
        self.terrain = float(terrain_ppm(self._z).mean())
        self.urban = float(urban_ppm(population_density(box.lats, box.lons, self.seed,
                                                        cities)).mean())

    def vegetation(self, day: date) -> float:
        key = composite_start(day)
        if key not in self._ndvi_means:
            self._ndvi_means[key] = np.clip(ndvi_composite(
                self._sampler, self.seed, self._z, self._peak, self._water, *key), 0.0, None)
        summer = summer_factor(day, self._lats)[:, None]
        return float((VEGETATION_PPM_PER_NDVI * summer * self._ndvi_means[key]).mean())


class TruthModel:
    def __init__(self, layout: WorldLayout, seed: int, statics: StaticCovariates,
                 weather: Weather) -> None:
        self.cells = layout.cells
        self.statics = statics
        self.weather = weather
        self.box = AnchorBoxMeans(seed)
        self.lats = self.cells.lats
        self.terrain = terrain_ppm(statics.elevation_m) - np.float32(self.box.terrain)
        self.urban = urban_ppm(statics.population_per_km2)

    def components(self, day: date) -> dict[str, np.ndarray]:
        """Each term on the world's cells (for diagnostics and tests)."""
        met = self.weather.to_cells(self.weather.daily("met", day), self.cells)
        hidden = self.weather.to_cells(self.weather.daily("hidden", day), self.cells)
        ndvi = np.clip(self.statics.ndvi[composite_start(day)], 0.0, None)
        summer = summer_factor(day, self.lats).astype(np.float32)[:, None]
        stagnation = 1.0 + URBAN_STAGNATION_GAIN * np.clip(met, -2.5, 2.5)
        hidden_share = np.sqrt(1.0 - DAILY_MET_SHARE ** 2)
        return {
            "background": background_ppm(day, self.lats).astype(np.float32)[:, None],
            "terrain": self.terrain,
            "urban": self.urban * stagnation - np.float32(self.box.urban),
            "vegetation": VEGETATION_PPM_PER_NDVI * summer * ndvi
                          - np.float32(self.box.vegetation(day)),
            "daily": DAILY_STD_PPM * (DAILY_MET_SHARE * met + hidden_share * hidden),
        }

    def for_day(self, day: date) -> np.ndarray:
        """XCO2 in ppm on the world's cells (region + margin), float32."""
        total = np.zeros(self.cells.shape, np.float32)
        for term in self.components(day).values():
            total += term
        return total
