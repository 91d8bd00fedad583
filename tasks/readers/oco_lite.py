"""OCO-2 and OCO-3 Lite FP granules (NetCDF-4, one UTC day, global) to soundings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.io.quarantine import InputFileError
from tasks.readers.soundings_table import GranuleInfo, soundings_frame
from tasks.readers.netcdf import decode_times, open_netcdf, read_array
from tasks.readers.xco2_units import ppm_factor

LITE_FILL = -999999.0
MISSIONS = ("oco2", "oco3")


def read_oco_lite(path: Path | str, mission: str) -> tuple[pd.DataFrame, GranuleInfo]:
    """All soundings of a Lite granule (good and bad) in the tasks.gridding.soundings schema."""
    if mission not in MISSIONS:
        raise ValueError(f"mission must be one of {MISSIONS}, got {mission!r}")
    path = Path(path)
    with open_netcdf(path) as ds:
        fills = (LITE_FILL,)
        lat = read_array(ds, "latitude", path, fill_values=fills)
        lon = read_array(ds, "longitude", path, fill_values=fills)
        xco2 = read_array(ds, "xco2", path, fill_values=fills)
        unc = read_array(ds, "xco2_uncertainty", path, fill_values=fills)
        qf = read_array(ds, "xco2_quality_flag", path, dtype=np.int16, fill_values=(1,))
        time_values = read_array(ds, "time", path, fill_values=fills)
        vlat = read_array(ds, "vertex_latitude", path, fill_values=fills)
        vlon = read_array(ds, "vertex_longitude", path, fill_values=fills)
        if vlat.ndim != 2 or vlat.shape[1] != 4 or vlon.shape != vlat.shape:
            raise InputFileError(path, f"vertex_latitude/longitude have shape {vlat.shape}, "
                                       "expected (soundings, 4)")
        sounding = ds.groups.get("Sounding")
        if sounding is None or "footprint" not in sounding.variables:
            raise InputFileError(path, "group Sounding/ with variable footprint is missing")
        footprint = read_array(sounding, "footprint", path, dtype=np.int16, fill_values=(0,))
        modes = (read_array(sounding, "operation_mode", path, dtype=np.int16, fill_values=(-1,))
                 if "operation_mode" in sounding.variables else None)
        units_attr = getattr(ds["xco2"], "units", None)
        time_units = getattr(ds["time"], "units", None)
        variables = sorted(ds.variables)
        groups = sorted(ds.groups)
    factor, unit = ppm_factor(xco2, qf, path)
    times = decode_times(time_values, time_units, path)
    df = soundings_frame(
        path, mission, time=times, latitude=lat, longitude=lon, xco2=xco2 * factor,
        uncertainty=unc * factor, quality_flag=qf, footprint=footprint,
        vertex_latitude=vlat, vertex_longitude=vlon, footprint_diameter_km=np.nan)
    extra: dict = {"groups": groups}
    if modes is not None:
        values, counts = np.unique(modes, return_counts=True)
        extra["operation_modes"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
    return df, GranuleInfo(units_attr, unit, time_units, variables, extra)
