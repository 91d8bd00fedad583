"""Synthetic NDVI (MOD13Q1-like 16-day composites) and surface water.

NDVI follows elevation (basin crops and forests green, alpine meadow moderate with a strong
summer peak, bare high ground low), drops in cities and is negative on water. The seasonal
phase flips smoothly across the equator so any region has a sensible cycle.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from demo_world.noise import Sampler, stream_key

COMPOSITE_DAYS = 16
NDVI_SCALE = 1e-4  # MOD13Q1: int16 * 1e-4
NDVI_NODATA = -3000  # MOD13Q1 fill value

# Peak-season NDVI and seasonality (fraction lost in the off season) against elevation (m).
_Z = [0, 1000, 2000, 3000, 3600, 4300, 4800, 5600]
_PEAK = [0.74, 0.80, 0.84, 0.80, 0.66, 0.50, 0.22, 0.08]
_SEASONALITY = [0.42, 0.32, 0.30, 0.42, 0.70, 0.75, 0.60, 0.40]


def composite_start(day: date) -> tuple[int, int]:
    """(year, day-of-year) of the 16-day composite holding `day` (starts 001, 017, ..., 353)."""
    doy = day.timetuple().tm_yday
    return day.year, 1 + ((doy - 1) // COMPOSITE_DAYS) * COMPOSITE_DAYS


def composites_covering(first: date, last: date) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    day = first
    while day <= last:
        c = composite_start(day)
        if c not in out:
            out.append(c)
        day += timedelta(days=1)
    return out


def composite_mid_doy(year: int, doy: int) -> float:
    year_days = 366 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 365
    return min(doy + COMPOSITE_DAYS / 2.0, year_days)


def green_phase(doy: float, lat: np.ndarray) -> np.ndarray:
    """0 in the dormant season, 1 at the peak (about 1 August in the north)."""
    north = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 213.0) / 365.25)
    south = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 213.0 - 182.6) / 365.25)
    w = 1.0 / (1.0 + np.exp(-np.clip(lat / 4.0, -40, 40)))
    return (w * north + (1 - w) * south).astype(np.float32)


def water_mask(s: Sampler, seed: int, elevation: np.ndarray) -> np.ndarray:
    """Rivers along the zero line of a smooth field (meandering, connected) in valleys and
    lowlands, plus a few lakes."""
    river_field = s.fractal(1.6, 0.05, 0.5, stream_key(seed, "water.rivers"))
    width = np.where(elevation < 1200, 0.005, np.where(elevation < 3000, 0.003, 0.0015))
    rivers = np.abs(river_field) < width
    lakes = s.fractal(0.6, 0.05, 0.5, stream_key(seed, "water.lakes")) > 0.68
    return rivers | lakes


def ndvi_peak(s: Sampler, seed: int, elevation: np.ndarray, urban: np.ndarray) -> np.ndarray:
    peak = np.interp(elevation, _Z, _PEAK).astype(np.float32)
    peak += 0.07 * s.fractal(0.4, 0.01, 0.6, stream_key(seed, "ndvi.patches"))
    built = urban / (urban + 2500.0)
    return np.clip(peak * (1.0 - 0.72 * built), 0.02, 0.92).astype(np.float32)


def ndvi_composite(s: Sampler, seed: int, elevation: np.ndarray, peak: np.ndarray,
                   water: np.ndarray, year: int, doy: int) -> np.ndarray:
    """NDVI of the composite starting at (year, doy), as float32 (not yet scaled)."""
    mid = composite_mid_doy(year, doy)
    g = green_phase(mid, s.lat)
    tropics = np.clip(np.abs(s.lat) / 15.0, 0.3, 1.0)
    seasonality = np.interp(elevation, _Z, _SEASONALITY).astype(np.float32) * tropics
    value = peak * (1.0 - seasonality * (1.0 - g))
    value += 0.025 * s.noise(0.25, stream_key(seed, "ndvi.composite", year, doy))
    value = np.where(water, -0.08, value)
    return np.clip(value, -0.2, 0.95).astype(np.float32)


def to_mod13q1(ndvi: np.ndarray) -> np.ndarray:
    return np.round(ndvi / NDVI_SCALE).astype(np.int16)
