"""Tiny in-memory inputs (fixed seed) for tests: soundings tables and hourly ERA5 datasets.

Write them with demo_world.writers to get files in the real formats.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import xarray as xr

from tasks.readers.era5_layout import EXPVER_FINAL
from tasks.gridding.soundings import COLUMNS, VERTEX_LAT, VERTEX_LON

KM_PER_DEG_LAT = 110.57


def tiny_soundings(source: str, day: date, n: int = 40, *, center: tuple[float, float] = (30.6, 104.0),
                   seed: int = 7,
                   n_bad: int = 3, absurd: tuple[float, ...] = (0.0, 9999.0, np.nan)
                   ) -> pd.DataFrame:
    """`n` good soundings near `center` at ~13:30 local, plus `n_bad` flagged plausible ones and
    one flagged sounding per absurd value (NaN becomes the file's fill value)."""
    rng = np.random.default_rng(seed)
    total = n + n_bad + len(absurd)
    lat0, lon0 = center
    start = datetime(day.year, day.month, day.day) + timedelta(hours=13.5 - lon0 / 15.0)
    # 1/3 s frames of 8 footprints, as OCO takes them; GOSAT points are seconds apart.
    step = 1.0 / 3.0 if source != "gosat" else 4.0
    frame = np.arange(total) // (8 if source != "gosat" else 1)
    footprint = (np.arange(total) % 8 + 1) if source != "gosat" else np.zeros(total, int)
    times = pd.to_datetime(start, utc=True) + pd.to_timedelta(frame * step, unit="s")
    lat = lat0 + frame * 0.02 + rng.normal(0, 0.002, total)
    lon = lon0 + (footprint - 4.5) * 0.012 + rng.normal(0, 0.002, total)
    xco2 = 412.0 + rng.normal(0, 1.0, total)
    unc = rng.uniform(0.5, 1.2, total) if source != "gosat" else rng.uniform(1.5, 2.5, total)
    qf = np.zeros(total, np.int8)
    qf[n:] = 1
    xco2[n:n + n_bad] += 3.0
    xco2[n + n_bad:] = absurd
    df = pd.DataFrame({"time": times, "latitude": lat, "longitude": lon, "xco2": xco2,
                       "xco2_uncertainty": unc, "quality_flag": qf,
                       "footprint": footprint.astype(np.int16),
                       "source": pd.Series([source] * total, dtype=object)})
    if source == "gosat":
        for c in VERTEX_LAT + VERTEX_LON:
            df[c] = np.nan
        df["footprint_diameter_km"] = 10.5
    else:
        half_lat = 1.125 / KM_PER_DEG_LAT
        half_lon = 0.645 / (111.32 * np.cos(np.radians(lat)))
        for i, (sy, sx) in enumerate(((-1, -1), (-1, 1), (1, 1), (1, -1))):
            df[VERTEX_LAT[i]] = lat + sy * half_lat
            df[VERTEX_LON[i]] = lon + sx * half_lon
        df["footprint_diameter_km"] = np.nan
    return df[COLUMNS]


def tiny_era5_hourly(first_day: date, n_days: int = 2, *,
                     bbox: tuple[float, float, float, float] = (103.5, 30.0, 104.5, 31.0),
                     seed: int = 11, step: float = 0.25, extra_step: bool = True,
                     expver: str = EXPVER_FINAL) -> xr.Dataset:
    """Hourly fields 00..23 UTC of `n_days` days (plus the next day's 00 UTC step when
    `extra_step`) on a 0.25 degree grid, latitude increasing, plausible magnitudes."""
    rng = np.random.default_rng(seed)
    west, south, east, north = bbox
    lat = np.arange(south, north + step / 2, step)
    lon = np.arange(west, east + step / 2, step)
    hours = n_days * 24 + (1 if extra_step else 0)
    time = pd.date_range(pd.Timestamp(first_day), periods=hours, freq="h")
    shape = (hours, lat.size, lon.size)
    h = np.arange(hours)[:, None, None]
    daylight = np.clip(np.sin(2 * np.pi * ((h + 7) % 24 - 6) / 24), 0, None)

    def field(mean: float, spread: float) -> np.ndarray:
        return (mean + spread * rng.standard_normal(shape)).astype(np.float32)

    t2m = field(295.0, 2.0) + 5 * daylight
    data = {
        "e": (-2e-4 * daylight - 1e-5 + 1e-5 * rng.standard_normal(shape)).astype(np.float32),
        "tp": np.clip(field(0.0, 4e-4), 0, None).astype(np.float32),
        "sp": field(95000.0, 300.0),
        "t2m": t2m.astype(np.float32),
        "d2m": (t2m - np.abs(field(4.0, 2.0))).astype(np.float32),
        "u10": field(1.0, 2.0),
        "v10": field(-0.5, 2.0),
        "sund": (3600 * daylight * rng.uniform(0, 1, shape)).astype(np.float32),
    }
    ds = xr.Dataset({k: (("time", "latitude", "longitude"), v) for k, v in data.items()},
                    coords={"time": time.values, "latitude": lat, "longitude": lon})
    return ds.assign_coords(expver=("time", [expver] * hours))
