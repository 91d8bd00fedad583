"""Assembling reader output into the tasks.gridding.soundings schema, with the checks every product needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.io.quarantine import InputFileError
from tasks.gridding.soundings import COLUMNS, VERTEX_LAT, VERTEX_LON


@dataclass
class GranuleInfo:
    """What a reader learnt about a file beyond its soundings (for `xco2 inspect`)."""

    xco2_units_attribute: str | None
    xco2_units_detected: str
    time_units: str | None
    variables: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def soundings_frame(path: Path, source: str, *, time: pd.DatetimeIndex, latitude: np.ndarray,
                    longitude: np.ndarray, xco2: np.ndarray, uncertainty: np.ndarray,
                    quality_flag: np.ndarray, footprint: np.ndarray,
                    vertex_latitude: np.ndarray | None, vertex_longitude: np.ndarray | None,
                    footprint_diameter_km: float) -> pd.DataFrame:
    n = len(latitude)
    for name, arr in (("time", time), ("longitude", longitude), ("xco2", xco2),
                      ("xco2_uncertainty", uncertainty), ("xco2_quality_flag", quality_flag)):
        if len(arr) != n:
            raise InputFileError(path, f"{name} has {len(arr)} values for {n} soundings")
    # Impossible positions are kept as read: tasks.gridding.soundings drops those soundings one by one
    # (and counts them), a few bad values never cost the granule's other soundings.
    with np.errstate(invalid="ignore"):
        longitude = np.where((longitude > 180) & (longitude <= 360), longitude - 360, longitude)
    columns: dict[str, object] = {
        "time": pd.Series(time, dtype="datetime64[ns, UTC]"),
        "latitude": latitude.astype(np.float64),
        "longitude": longitude.astype(np.float64),
        "xco2": xco2.astype(np.float64),
        "xco2_uncertainty": uncertainty.astype(np.float64),
        "quality_flag": quality_flag.astype(np.int8),
        "footprint": footprint.astype(np.int16),
        "source": pd.Series([source] * n, dtype=object),
    }
    for i in range(4):
        columns[VERTEX_LAT[i]] = (vertex_latitude[:, i].astype(np.float64)
                                  if vertex_latitude is not None else np.full(n, np.nan))
        columns[VERTEX_LON[i]] = (vertex_longitude[:, i].astype(np.float64)
                                  if vertex_longitude is not None else np.full(n, np.nan))
    columns["footprint_diameter_km"] = np.full(n, footprint_diameter_km, dtype=np.float64)
    df = pd.DataFrame({k: (v.reset_index(drop=True) if isinstance(v, pd.Series) else v)
                       for k, v in columns.items()})
    return df[COLUMNS]
