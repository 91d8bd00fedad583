"""Writing daily C3S GOSAT L2 XCO2 files (CCI-style layout on `sounding_dim`, docs/formats.md).

`xco2_units` is the units attribute to write. 'mol/mol' (or '1') stores mole fractions
(~4e-4); any other label stores ppm, including the real header quirk '1e-9' over ppm values.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import numpy.typing as npt
import pandas as pd

from tasks.io.atomic import atomic_path
from demo_world.writers.netcdf import Compression
from tasks.readers.names import gosat_c3s_name

C3S_FILL = -999.0
N_LEVELS = 20  # surface first in this product
MOLE_FRACTION_LABELS = ("mol/mol", "mol mol-1", "1")
_COMPRESSION: Compression = {"zlib": True, "complevel": 2, "shuffle": True}


def write_gosat_c3s(path: Path | str, soundings: pd.DataFrame, xco2_units: str = "1e-9",
                    day: date | None = None) -> Path:
    """Write one daily file; `path` may be a directory, then the real file name is used.

    Optional extra columns: solar_zenith_angle, sensor_zenith_angle, altitude, psurf,
    flag_landtype, flag_sunglint. Returns the written file's path."""
    times = pd.DatetimeIndex(pd.to_datetime(soundings["time"], utc=True))
    if day is None:
        if not len(soundings):
            raise ValueError("an empty granule needs its day")
        day = times.min().date()
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / gosat_c3s_name(day)
    order = np.argsort(times.asi8, kind="stable")
    df = soundings.iloc[order].reset_index(drop=True)
    times = times[order]
    n = len(df)
    scale = 1e-6 if xco2_units in MOLE_FRACTION_LABELS else 1.0

    def col(name: str, default: float, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        return df[name].to_numpy().astype(dtype) if name in df else np.full(n, default, dtype)

    def filled(values: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(values), values, C3S_FILL)

    with atomic_path(path) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            ds.setncatts({
                "title": "C3S XCO2 TANSO-FTS OCFP Level 2 (synthetic demo data)",
                "institution": "University of Leicester (layout); demo_world (values)",
                "Conventions": "CF-1.6",
                "platform": "GOSAT", "sensor": "TANSO-FTS", "product_version": "v7.3",
                "date": f"{day:%Y%m%d}",
            })
            ds.createDimension("sounding_dim", n)
            ds.createDimension("level_dim", N_LEVELS)
            dim = ("sounding_dim",)

            def var(name: str, dtype: str, dims: tuple[str, ...], values: np.ndarray,
                    fill: float | None = C3S_FILL, **attrs: str) -> netCDF4.Variable[Any]:
                v = ds.createVariable(name, dtype, dims, fill_value=fill, **_COMPRESSION)
                v.setncatts(attrs)
                if n:
                    v[...] = values
                return v

            seconds = (times.as_unit("ns").asi8 - pd.Timestamp("1970-01-01", tz="UTC").value) / 1e9
            var("time", "f8", dim, seconds, None, units="seconds since 1970-01-01 00:00:00",
                standard_name="time", calendar="standard")
            var("latitude", "f4", dim, filled(col("latitude", np.nan)), units="degrees_north",
                standard_name="latitude")
            var("longitude", "f4", dim, filled(col("longitude", np.nan)), units="degrees_east",
                standard_name="longitude")
            xco2 = col("xco2", np.nan)
            unc = col("xco2_uncertainty", np.nan)
            var("xco2", "f4", dim, filled(xco2 * scale), units=xco2_units,
                long_name="column-average dry-air mole fraction of atmospheric carbon dioxide")
            var("xco2_uncertainty", "f4", dim, filled(unc * scale), units=xco2_units)
            var("xco2_quality_flag", "i1", dim, col("quality_flag", 0, np.int8), None,
                comment="0 = good, 1 = bad")
            psurf = col("psurf", 1000.0)
            sigma = np.linspace(1.0, 0.0, N_LEVELS)
            sigma[-1] = 1e-4
            var("pressure_levels", "f4", ("sounding_dim", "level_dim"),
                psurf[:, None] * sigma[None, :], units="hPa", comment="surface first")
            apriori = np.where(np.isfinite(xco2) & (np.abs(xco2) < 1000), xco2, 410.0) - 1.0
            var("co2_profile_apriori", "f4", ("sounding_dim", "level_dim"),
                (apriori[:, None] - 6.0 * (1.0 - sigma[None, :]) ** 4) * scale, units=xco2_units)
            var("xco2_averaging_kernel", "f4", ("sounding_dim", "level_dim"),
                np.broadcast_to(0.4 + 0.6 * sigma ** 0.6, (n, N_LEVELS)))
            weight = np.full(N_LEVELS, 1.0 / (N_LEVELS - 1))
            weight[[0, -1]] *= 0.5
            var("pressure_weight", "f4", ("sounding_dim", "level_dim"),
                np.broadcast_to(weight, (n, N_LEVELS)))
            var("solar_zenith_angle", "f4", dim, col("solar_zenith_angle", 35.0),
                units="degree")
            var("sensor_zenith_angle", "f4", dim, col("sensor_zenith_angle", 5.0),
                units="degree")
            var("flag_landtype", "i1", dim, col("flag_landtype", 1, np.int8), None,
                comment="0 = water, 1 = land")
            var("flag_sunglint", "i1", dim, col("flag_sunglint", 0, np.int8), None,
                comment="0 = no sunglint, 1 = sunglint")
            var("altitude", "f4", dim, col("altitude", 0.0), units="m")
        finally:
            ds.close()
    return path
