"""GOSAT L2 XCO2 from the Copernicus CDS (CCI-style daily NetCDF on `sounding_dim`) to soundings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.readers.soundings_table import GranuleInfo, soundings_frame
from tasks.readers.netcdf import decode_times, open_netcdf, read_array
from tasks.readers.xco2_units import ppm_factor

GOSAT_FOOTPRINT_DIAMETER_KM = 10.5
# CCI products use a large negative fill; keep -999999 too in case a converter reused Lite's.
C3S_FILLS = (-999.0, -9999.0, -999999.0, 9.969209968386869e36)


def read_gosat_c3s(path: Path | str) -> tuple[pd.DataFrame, GranuleInfo]:
    """All soundings of a daily C3S GOSAT file, xco2 in ppm whatever the units attribute says."""
    path = Path(path)
    with open_netcdf(path) as ds:
        lat = read_array(ds, "latitude", path, fill_values=C3S_FILLS)
        lon = read_array(ds, "longitude", path, fill_values=C3S_FILLS)
        xco2 = read_array(ds, "xco2", path, fill_values=C3S_FILLS)
        unc = read_array(ds, "xco2_uncertainty", path, fill_values=C3S_FILLS)
        qf = read_array(ds, "xco2_quality_flag", path, dtype=np.int16, fill_values=(1,))
        time_values = read_array(ds, "time", path, fill_values=C3S_FILLS)
        units_attr = getattr(ds["xco2"], "units", None)
        time_units = getattr(ds["time"], "units", None)
        variables = sorted(ds.variables)
    factor, unit = ppm_factor(xco2, qf, path)
    times = decode_times(time_values, time_units, path)
    df = soundings_frame(
        path, "gosat", time=times, latitude=lat, longitude=lon, xco2=xco2 * factor,
        uncertainty=unc * factor, quality_flag=qf, footprint=np.zeros(len(lat), np.int16),
        vertex_latitude=None, vertex_longitude=None,
        footprint_diameter_km=GOSAT_FOOTPRINT_DIAMETER_KM)
    return df, GranuleInfo(units_attr, unit, time_units, variables)
