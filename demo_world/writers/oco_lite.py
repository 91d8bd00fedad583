"""Writing OCO-2 / OCO-3 Lite FP granules in the real layout (docs/formats.md).

Input is a soundings DataFrame in the tasks.gridding.soundings schema (xco2 in ppm, NaN for fill) plus
optional extra columns that the real product carries: operation_mode, land_fraction, orbit,
altitude, solar_zenith_angle, sensor_zenith_angle, xco2_apriori, psurf, windspeed, tcwv,
aod_total, target_id, target_name. Missing extras get plausible constants.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import numpy.typing as npt
import pandas as pd

from tasks.io.atomic import atomic_path
from demo_world.writers.netcdf import Compression
from tasks.readers.names import oco_lite_name
from tasks.gridding.soundings import VERTEX_LAT, VERTEX_LON

LITE_FILL = -999999.0
N_LEVELS = 20  # level 20 is the surface
N_VERTICES = 4
N_EPOCH = 7  # year, month, day, hour, minute, second, microsecond
# A soundings column as an array (name, value when the column is missing, dtype).
Column = Callable[[str, float, npt.DTypeLike], np.ndarray]
MISSIONS = ("oco2", "oco3")
_COMPRESSION: Compression = {"zlib": True, "complevel": 2, "shuffle": True}


def sounding_ids(times: pd.Series, footprints: np.ndarray) -> np.ndarray:
    """int64 YYYYMMDDhhmmss + tenth-of-second digit + footprint digit."""
    t = pd.DatetimeIndex(times).tz_convert("UTC")
    stamp = (t.year.astype(np.int64) * 10**10 + t.month * 10**8 + t.day * 10**6
             + t.hour * 10**4 + t.minute * 100 + t.second)
    tenth = (t.microsecond // 100_000).astype(np.int64)
    return (np.asarray(stamp, np.int64) * 100 + np.asarray(tenth) * 10
            + np.asarray(footprints, np.int64) % 10)


def production_time(day: date) -> datetime:
    """A fixed, plausible production stamp for the name: Lite files appear weeks later."""
    return datetime(day.year, day.month, day.day) + timedelta(days=38, hours=4, minutes=17,
                                                              seconds=day.toordinal() % 60)


def write_oco_lite(path: Path | str, soundings: pd.DataFrame, mission: str = "oco2",
                   day: date | None = None) -> Path:
    """Write a Lite granule; `path` may be a directory, then the real file name is used.

    Returns the written file's path."""
    if mission not in MISSIONS:
        raise ValueError(f"mission must be one of {MISSIONS}, got {mission!r}")
    df = soundings.copy()
    times = pd.DatetimeIndex(pd.to_datetime(df["time"], utc=True))
    if day is None:
        if not len(df):
            raise ValueError("an empty granule needs its day")
        day = times.min().date()
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / oco_lite_name(mission, day, production_time(day))
    footprint = df["footprint"].to_numpy(np.int64) if "footprint" in df else np.ones(len(df), int)
    ids = sounding_ids(pd.Series(times), footprint)
    order = np.argsort(ids, kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    ids = ids[order]
    times = times[order]
    if len(np.unique(ids)) != len(ids):
        raise ValueError("two soundings share a sounding_id (same tenth of a second and "
                         "footprint)")
    n = len(df)

    def col(name: str, default: float, dtype: npt.DTypeLike) -> np.ndarray:
        if name in df:
            return df[name].to_numpy().astype(dtype)
        return np.full(n, default, dtype=dtype)

    def filled(values: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(values), values, LITE_FILL)

    with atomic_path(path) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            _write_root(ds, df, ids, times, col, filled, mission, day, n)
            _write_groups(ds, df, col, mission, footprint[order], n)
        finally:
            ds.close()
    return path


def _var(ds: netCDF4.Dataset, name: str, dtype: str, dims: tuple[str, ...], values: np.ndarray,
         fill: float | None = None, **attrs: str) -> netCDF4.Variable[Any]:
    v = ds.createVariable(name, dtype, dims, fill_value=fill, **_COMPRESSION)
    for key, value in attrs.items():
        v.setncattr(key, value)
    if len(values):
        v[...] = values
    return v


def _write_root(ds: netCDF4.Dataset, df: pd.DataFrame, ids: np.ndarray, times: pd.DatetimeIndex, col: Column,
                filled: Callable[[np.ndarray], np.ndarray], mission: str, day: date, n: int) -> None:
    ds.setncatts({
        "title": f"{mission.upper().replace('OCO', 'OCO-')} Lite FP (synthetic demo data)",
        "Sensor": mission.upper().replace("OCO", "OCO-"),
        "Conventions": "CF-1.6",
        "product_version": "B11100Ar" if mission == "oco2" else "B10400Br",
        "date_created": f"{day:%Y-%m-%d}",
        "comment": "written by demo_world; layout follows the real Lite FP product",
    })
    ds.createDimension("sounding_id", n)
    ds.createDimension("levels", N_LEVELS)
    ds.createDimension("vertices", N_VERTICES)
    ds.createDimension("epoch_dimension", N_EPOCH)
    ds.createDimension("files", 1)
    sid = ("sounding_id",)
    _var(ds, "sounding_id", "i8", sid, ids, long_name="sounding_id",
         comment="YYYYMMDDhhmmss + tenth of second + footprint")
    epoch = np.stack([times.year, times.month, times.day, times.hour, times.minute,
                      times.second, times.microsecond], axis=1).astype(np.int32)
    _var(ds, "date", "i4", ("sounding_id", "epoch_dimension"), epoch,
         long_name="sounding date", comment="year, month, day, hour, minute, second, microsecond")
    lat = col("latitude", np.nan, np.float64)
    lon = col("longitude", np.nan, np.float64)
    _var(ds, "latitude", "f4", sid, filled(lat), LITE_FILL, units="degrees_north",
         long_name="latitude")
    _var(ds, "longitude", "f4", sid, filled(lon), LITE_FILL, units="degrees_east",
         long_name="longitude")
    seconds = (times.as_unit("ns").asi8 - pd.Timestamp("1970-01-01", tz="UTC").value) / 1e9
    _var(ds, "time", "f8", sid, seconds, units="seconds since 1970-01-01 00:00:00",
         long_name="time", calendar="gregorian")
    _var(ds, "solar_zenith_angle", "f4", sid, col("solar_zenith_angle", 35.0, np.float32),
         LITE_FILL, units="degrees")
    _var(ds, "sensor_zenith_angle", "f4", sid, col("sensor_zenith_angle", 0.5, np.float32),
         LITE_FILL, units="degrees")
    qf = col("quality_flag", 0, np.int8)
    _var(ds, "xco2_quality_flag", "i1", sid, qf, long_name="XCO2 quality flag",
         comment="0 = good, 1 = bad")
    _var(ds, "xco2_qf_bitflag", "i1", sid, (qf != 0).astype(np.int8) * 2)
    _var(ds, "xco2_qf_simple_bitflag", "i1", sid, (qf != 0).astype(np.int8))
    sf = ds.createVariable("source_files", str, ("files",))
    sf[0] = f"{mission}_L2Std_{day:%y%m%d}_synthetic.h5"
    _var(ds, "file_index", "i2", sid, np.ones(n, np.int16))
    vlat = np.stack([col(c, np.nan, np.float64) for c in VERTEX_LAT], axis=1) if n else \
        np.zeros((0, 4))
    vlon = np.stack([col(c, np.nan, np.float64) for c in VERTEX_LON], axis=1) if n else \
        np.zeros((0, 4))
    _var(ds, "vertex_latitude", "f4", ("sounding_id", "vertices"), filled(vlat), LITE_FILL,
         units="degrees_north", long_name="footprint corner latitudes")
    _var(ds, "vertex_longitude", "f4", ("sounding_id", "vertices"), filled(vlon), LITE_FILL,
         units="degrees_east", long_name="footprint corner longitudes")
    xco2 = col("xco2", np.nan, np.float64)
    unc = col("xco2_uncertainty", np.nan, np.float64)
    _var(ds, "xco2", "f4", sid, filled(xco2), LITE_FILL, units="ppm",
         long_name="Column-averaged dry-air mole fraction of CO2 (bias corrected)")
    _var(ds, "xco2_uncertainty", "f4", sid, filled(unc), LITE_FILL, units="ppm")
    apriori = col("xco2_apriori", np.nan, np.float64)
    apriori = np.where(np.isfinite(apriori), apriori,
                       np.where(np.isfinite(xco2) & (np.abs(xco2) < 1000), xco2, 410.0) - 0.8)
    _var(ds, "xco2_apriori", "f4", sid, apriori, LITE_FILL, units="ppm")
    psurf = col("psurf", np.nan, np.float64)
    psurf = np.where(np.isfinite(psurf), psurf, 1000.0)
    # Sigma levels from the top of the atmosphere (level 1) to the surface (level 20).
    sigma = np.linspace(0.0, 1.0, N_LEVELS)
    sigma[0] = 1e-4
    pressure = psurf[:, None] * sigma[None, :]
    _var(ds, "pressure_levels", "f4", ("sounding_id", "levels"), pressure, LITE_FILL,
         units="hPa")
    profile = apriori[:, None] - 6.0 * (1.0 - sigma[None, :]) ** 4
    _var(ds, "co2_profile_apriori", "f4", ("sounding_id", "levels"), profile, LITE_FILL,
         units="ppm")
    kernel = np.broadcast_to(0.35 + 0.7 * sigma ** 0.6, (n, N_LEVELS))
    _var(ds, "xco2_averaging_kernel", "f4", ("sounding_id", "levels"), kernel, LITE_FILL)
    weight = np.full(N_LEVELS, 1.0 / (N_LEVELS - 1))
    weight[[0, -1]] *= 0.5
    _var(ds, "pressure_weight", "f4", ("sounding_id", "levels"),
         np.broadcast_to(weight, (n, N_LEVELS)), LITE_FILL)


def _write_groups(ds: netCDF4.Dataset, df: pd.DataFrame, col: Column, mission: str, footprint: np.ndarray,
                  n: int) -> None:
    sid = ("sounding_id",)
    g = ds.createGroup("Sounding")
    _var(g, "operation_mode", "i1", sid, col("operation_mode", 0, np.int8),
         comment="0 nadir, 1 glint, 2 target, 3 transition, 4 snapshot area map")
    _var(g, "land_fraction", "f4", sid, col("land_fraction", 100.0, np.float32), units="percent")
    _var(g, "footprint", "i1", sid, footprint.astype(np.int8), comment="footprint 1-8")
    _var(g, "orbit", "i4", sid, col("orbit", 0, np.int32))
    _var(g, "altitude", "f4", sid, col("altitude", 0.0, np.float32), units="m")
    _var(g, "solar_azimuth_angle", "f4", sid, col("solar_azimuth_angle", 150.0, np.float32),
         units="degrees")
    if mission == "oco3":
        for name in ("target_id", "target_name"):
            v = g.createVariable(name, str, sid)
            values = df[name].astype(str).to_numpy() if name in df else np.full(n, "none")
            if n:
                v[:] = values.astype(object)
    r = ds.createGroup("Retrieval")
    psurf = col("psurf", 1000.0, np.float32)
    _var(r, "psurf", "f4", sid, psurf, units="hPa")
    _var(r, "windspeed", "f4", sid, col("windspeed", 3.0, np.float32), units="m s-1")
    _var(r, "tcwv", "f4", sid, col("tcwv", 20.0, np.float32), units="kg m-2")
    _var(r, "aod_total", "f4", sid, col("aod_total", 0.1, np.float32))
    m = ds.createGroup("Meteorology")
    _var(m, "psurf_apriori", "f4", sid, psurf + 0.8, units="hPa")
    _var(m, "windspeed_u_met", "f4", sid, col("u10", 1.0, np.float32), units="m s-1")
    _var(m, "windspeed_v_met", "f4", sid, col("v10", 1.0, np.float32), units="m s-1")
    p = ds.createGroup("Preprocessors")
    _var(p, "co2_ratio", "f4", sid, np.full(n, 1.0, np.float32))
    _var(p, "h2o_ratio", "f4", sid, np.full(n, 1.0, np.float32))
