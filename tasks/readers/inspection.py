"""`xco2 inspect FILE`: one JSON-able description of a whole file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, SupportsFloat

import numpy as np
import pandas as pd

from tasks.io.quarantine import InputFileError
from tasks.readers.detect import SOUNDING_FORMATS, detect_format
from tasks.readers.era5 import read_era5_file
from tasks.readers.gosat_c3s import read_gosat_c3s
from tasks.readers.names import day_of_granule
from tasks.readers.netcdf import container_kind
from tasks.readers.oco_lite import read_oco_lite
from tasks.gridding.soundings import good_soundings


def inspect_file(path: Path | str) -> dict:
    path = Path(path)
    fmt = detect_format(path)
    info: dict = {"file": path.name, "path": str(path), "size_bytes": path.stat().st_size,
                  "format": fmt, "container": container_kind(path)}
    try:
        info["day_from_name"] = day_of_granule(path).isoformat()
    except InputFileError:
        info["day_from_name"] = None
    if fmt == "era5":
        info.update(_describe_era5(path))
    else:
        info.update(_describe_soundings(path, fmt))
    return info


def _iso(ts: pd.Timestamp | None) -> str | None:
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _describe_soundings(path: Path, fmt: str) -> dict:
    source = SOUNDING_FORMATS[fmt]
    df, granule = read_gosat_c3s(path) if source == "gosat" else read_oco_lite(path, source)
    good = good_soundings(df)
    flags = df["quality_flag"].value_counts().sort_index()

    def stat(fn: Callable[[pd.Series], SupportsFloat]) -> float | None:
        return round(float(fn(good["xco2"])), 4) if len(good) else None

    return {
        "source": source,
        "soundings": int(len(df)),
        "good": int(len(good)),
        "quality_flags": {str(int(k)): int(v) for k, v in flags.items()},
        "time_start": _iso(df["time"].min()) if len(df) else None,
        "time_end": _iso(df["time"].max()) if len(df) else None,
        "xco2_mean": stat(np.mean),
        "xco2_min": stat(np.min),
        "xco2_max": stat(np.max),
        "xco2_units_attribute": granule.xco2_units_attribute,
        "xco2_units_detected": granule.xco2_units_detected,
        "time_units": granule.time_units,
        "latitude_range": _range(df["latitude"]),
        "longitude_range": _range(df["longitude"]),
        "variables": granule.variables,
        **granule.extra,
    }


def _range(values: pd.Series) -> list[float] | None:
    finite = values[np.isfinite(values)]
    return [round(float(finite.min()), 5), round(float(finite.max()), 5)] if len(finite) else None


def _describe_era5(path: Path) -> dict:
    hourly = read_era5_file(path)
    times = pd.DatetimeIndex(hourly.indexes["time"])
    lat = hourly["latitude"].values
    lon = hourly["longitude"].values

    def step(axis: np.ndarray) -> float | None:
        return round(float(np.median(np.diff(axis))), 6) if axis.size > 1 else None

    expver = (sorted(set(hourly["expver"].values.tolist())) if "expver" in hourly.coords else [])
    return {
        "source": "era5",
        "soundings": 0,
        "good": 0,
        "time_start": _iso(times.min().tz_localize("UTC")) if len(times) else None,
        "time_end": _iso(times.max().tz_localize("UTC")) if len(times) else None,
        "time_steps": int(len(times)),
        "xco2_mean": None,
        "xco2_min": None,
        "xco2_max": None,
        "variables": sorted(hourly.data_vars),
        "grid": {"south": float(lat.min()), "north": float(lat.max()),
                 "west": float(lon.min()), "east": float(lon.max()),
                 "latitude_step": step(lat), "longitude_step": step(lon),
                 "shape": [int(lat.size), int(lon.size)]},
        "expver": expver,
        "nan_fraction": {v: round(float(np.isnan(hourly[v].values).mean()), 4)
                         for v in hourly.data_vars},
    }
