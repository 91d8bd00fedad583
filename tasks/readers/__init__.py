"""Readers of the real input formats (docs/formats.md): OCO-2/OCO-3 Lite, C3S GOSAT, ERA5.

Public facade:
- detect_format(path) -> 'oco2_lite' | 'oco3_lite' | 'gosat_c3s' | 'era5'
- read_soundings(path) -> DataFrame in the tasks.gridding.soundings schema (all soundings, good and bad)
- read_era5(paths) -> hourly Dataset (time, latitude increasing, longitude)
- era5_daily(hourly, days) -> daily Dataset (day, latitude, longitude) in the paper's units
- inspect_file(path) -> dict for `xco2 inspect`
- day_of_granule(path) -> date from the real file name
Every damaged, foreign or implausible file raises tasks.io.quarantine.InputFileError, and so does
one that declares sizes no product can hold (checked before reading: tasks.readers.limits).
An implausible sounding is kept in the table and dropped alone by tasks.gridding.soundings; implausible
meteorology refuses its whole file (tasks.gridding.plausibility).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.io.quarantine import InputFileError
from tasks.readers.detect import FORMATS, SOUNDING_FORMATS, detect_format
from tasks.readers.era5 import MissingEra5Steps, era5_daily, read_era5
from tasks.readers.gosat_c3s import read_gosat_c3s
from tasks.readers.inspection import inspect_file
from tasks.readers.names import day_of_granule
from tasks.readers.oco_lite import read_oco_lite


def read_soundings(path: Path | str) -> pd.DataFrame:
    """Every sounding of an OCO-2/OCO-3 Lite or C3S GOSAT granule, xco2 in ppm."""
    fmt = detect_format(path)
    if fmt not in SOUNDING_FORMATS:
        raise InputFileError(path, f"is an {fmt} file, not a soundings granule")
    source = SOUNDING_FORMATS[fmt]
    df, _ = read_gosat_c3s(path) if source == "gosat" else read_oco_lite(path, source)
    return df


__all__ = [
    "FORMATS", "InputFileError", "MissingEra5Steps", "day_of_granule", "detect_format",
    "era5_daily", "inspect_file", "read_era5", "read_soundings",
]
