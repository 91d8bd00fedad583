"""Writing ERA5 hourly single-level files in the CDS layouts (docs/formats.md).

Input is an hourly Dataset on (time, latitude, longitude) with canonical variable names
(e, tp, sp, t2m, d2m, u10, v10, sund) in ERA5 units and optionally `expver(time)` strings.
- write_era5_new_cds: one NetCDF-4 file as the new CDS writes it;
- write_era5_zip: the ZIP of instant + accum files the new CDS returns for mixed requests;
- write_era5_old_cds: NetCDF-3, `time` in hours since 1900, int16 packed.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from tasks.io.atomic import atomic_path
from demo_world.writers.netcdf import Compression
from tasks.readers.era5_layout import (
    ACCUMULATED,
    ERA5_VARIABLES,
    EXPVER_FINAL,
    GRIB_PARAMETERS,
    GRIB_SHORT_NAMES,
    INSTANTANEOUS,
)

ZIP_MEMBERS = {"instant": "data_stream-oper_stepType-instant.nc",
               "accum": "data_stream-oper_stepType-accum.nc"}
OLD_CDS_FILL = -32767
_COMPRESSION: Compression = {"zlib": True, "complevel": 1, "shuffle": True}


def _times(hourly: xr.Dataset) -> pd.DatetimeIndex:
    t = pd.DatetimeIndex(hourly.indexes["time"])
    return t.tz_convert("UTC").tz_localize(None) if t.tz is not None else t


def _expver(hourly: xr.Dataset) -> list[str]:
    if "expver" in hourly.coords or "expver" in hourly.data_vars:
        return [str(v) for v in hourly["expver"].values]
    return [EXPVER_FINAL] * hourly.sizes["time"]


def _present(hourly: xr.Dataset, names: Iterable[str]) -> list[str]:
    return [v for v in names if v in hourly.data_vars]


def write_era5_new_cds(path: Path | str, hourly: xr.Dataset,
                       variables: list[str] | None = None, step_type: str | None = None) -> Path:
    """One new-CDS NetCDF-4 file: valid_time int64 s, latitude decreasing, expver strings,
    scalar `number`, float32 with NaN fill and GRIB_* attributes."""
    path = Path(path)
    variables = variables or _present(hourly, ERA5_VARIABLES)
    hourly = hourly.sortby("latitude", ascending=False)
    times = _times(hourly)
    lat = hourly["latitude"].values.astype(np.float64)
    lon = hourly["longitude"].values.astype(np.float64)
    with atomic_path(path) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
        try:
            ds.setncatts({
                "GRIB_centre": "ecmf",
                "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
                "GRIB_subCentre": np.int64(0),
                "Conventions": "CF-1.7",
                "institution": "European Centre for Medium-Range Weather Forecasts",
                "history": "GRIB to CDM+CF via cfgrib-0.9.15.0/ecCodes-2.39.0 with "
                           "{\"source\": \"tmp.grib\", \"filter_by_keys\": {\"stream\": "
                           "[\"oper\"], \"stepType\": [\"" + (step_type or "instant") + "\"]}, "
                           "\"encode_cf\": [\"parameter\", \"time\", \"geography\", "
                           "\"vertical\"]} (synthetic demo data)",
            })
            ds.createDimension("valid_time", len(times))
            ds.createDimension("latitude", lat.size)
            ds.createDimension("longitude", lon.size)
            number = ds.createVariable("number", "i8", ())
            number.setncatts({"long_name": "ensemble member numerical id", "units": "1",
                              "standard_name": "realization"})
            number.assignValue(0)
            vt = ds.createVariable("valid_time", "i8", ("valid_time",))
            vt.setncatts({"long_name": "time", "standard_name": "time",
                          "units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian"})
            vt[:] = (times.as_unit("s").asi8).astype(np.int64)
            la = ds.createVariable("latitude", "f8", ("latitude",))
            la.setncatts({"units": "degrees_north", "standard_name": "latitude",
                          "long_name": "latitude", "stored_direction": "decreasing"})
            la[:] = lat
            lo = ds.createVariable("longitude", "f8", ("longitude",))
            lo.setncatts({"units": "degrees_east", "standard_name": "longitude",
                          "long_name": "longitude"})
            lo[:] = lon
            ev = ds.createVariable("expver", str, ("valid_time",))
            ev.setncatts({"long_name": "model experiment version"})
            ev[:] = np.array(_expver(hourly), dtype=object)
            for name in variables:
                param, units, long_name, standard_name = GRIB_PARAMETERS[name]
                kind = "accum" if name in ACCUMULATED else "instant"
                v = ds.createVariable(name, "f4", ("valid_time", "latitude", "longitude"),
                                      fill_value=np.float32(np.nan), **_COMPRESSION,
                                      chunksizes=(1, lat.size, lon.size))
                v.setncatts({
                    "GRIB_paramId": np.int64(param), "GRIB_dataType": "an" if kind == "instant"
                    else "fc", "GRIB_numberOfPoints": np.int64(lat.size * lon.size),
                    "GRIB_typeOfLevel": "surface", "GRIB_stepUnits": np.int64(1),
                    "GRIB_stepType": kind, "GRIB_gridType": "regular_ll",
                    "GRIB_Nx": np.int64(lon.size), "GRIB_Ny": np.int64(lat.size),
                    "GRIB_iDirectionIncrementInDegrees": float(abs(np.diff(lon[:2]).sum()))
                    if lon.size > 1 else 0.25,
                    "GRIB_jDirectionIncrementInDegrees": float(abs(np.diff(lat[:2]).sum()))
                    if lat.size > 1 else 0.25,
                    "GRIB_latitudeOfFirstGridPointInDegrees": float(lat[0]),
                    "GRIB_longitudeOfFirstGridPointInDegrees": float(lon[0]),
                    "GRIB_latitudeOfLastGridPointInDegrees": float(lat[-1]),
                    "GRIB_longitudeOfLastGridPointInDegrees": float(lon[-1]),
                    "GRIB_missingValue": 3.4028234663852886e38,
                    "GRIB_name": long_name, "GRIB_shortName": GRIB_SHORT_NAMES[name],
                    "GRIB_units": units, "long_name": long_name, "units": units,
                    "standard_name": standard_name, "GRIB_surface": 0.0,
                    "coordinates": "number expver",
                })
                v[...] = hourly[name].transpose("time", "latitude", "longitude").values.astype(
                    np.float32)
        finally:
            ds.close()
    return path


def write_era5_zip(path: Path | str, hourly: xr.Dataset) -> Path:
    """The new CDS's answer to a request mixing instantaneous and accumulated variables: a ZIP
    of two NetCDF-4 files, whatever suffix the caller gave the download."""
    path = Path(path)
    groups = {"instant": _present(hourly, INSTANTANEOUS), "accum": _present(hourly, ACCUMULATED)}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ValueError(f"no ERA5 variables among {list(hourly.data_vars)}")
    with tempfile.TemporaryDirectory(dir=path.parent if path.parent.exists() else None) as tmpdir:
        members = []
        for kind, names in groups.items():
            member = Path(tmpdir) / ZIP_MEMBERS[kind]
            write_era5_new_cds(member, hourly, names, step_type=kind)
            members.append(member)
        with atomic_path(path) as tmp:
            # NetCDF-4 members are compressed already; storing them keeps the ZIP cheap to read.
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                for member in members:
                    zf.write(member, member.name)
    return path


def _pack_int16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """ECMWF's grib_to_netcdf packing: offset at mid-range, 65534 steps across the range."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    offset = (hi + lo) / 2.0
    scale = (hi - lo) / (2**16 - 2) if hi > lo else 1.0
    packed = np.round((values - offset) / scale)
    packed = np.where(np.isfinite(packed), np.clip(packed, -32766, 32766), OLD_CDS_FILL)
    return packed.astype(np.int16), scale, offset


def write_era5_old_cds(path: Path | str, hourly: xr.Dataset,
                       expver_dimension: bool = False) -> Path:
    """Old-CDS NetCDF-3: `time` int32 hours since 1900-01-01, latitude decreasing, int16 packed
    variables. With `expver_dimension`, the layout of requests spanning ERA5 and ERA5T: an extra
    `expver` dimension (1, 5) with each time's data in its own expver slice only."""
    path = Path(path)
    hourly = hourly.sortby("latitude", ascending=False)
    times = _times(hourly)
    hours = ((times - pd.Timestamp("1900-01-01")) / pd.Timedelta(hours=1)).to_numpy()
    lat = hourly["latitude"].values
    lon = hourly["longitude"].values
    expvers = [int(v) for v in _expver(hourly)]
    with atomic_path(path) as tmp:
        ds = netCDF4.Dataset(tmp, "w", format="NETCDF3_64BIT_OFFSET")
        try:
            ds.set_auto_maskandscale(False)
            ds.setncatts({"Conventions": "CF-1.6", "history": "2021-03-01 00:00:00 GMT by "
                          "grib_to_netcdf-2.16.0: /opt/ecmwf/eccodes/bin/grib_to_netcdf -S "
                          "param -o output.nc input.grib (synthetic demo data)"})
            ds.createDimension("longitude", lon.size)
            ds.createDimension("latitude", lat.size)
            if expver_dimension:
                ds.createDimension("expver", 2)
            ds.createDimension("time", None)
            lo = ds.createVariable("longitude", "f4", ("longitude",))
            lo.setncatts({"units": "degrees_east", "long_name": "longitude"})
            lo[:] = lon
            la = ds.createVariable("latitude", "f4", ("latitude",))
            la.setncatts({"units": "degrees_north", "long_name": "latitude"})
            la[:] = lat
            if expver_dimension:
                ev = ds.createVariable("expver", "i4", ("expver",))
                ev.setncatts({"long_name": "expver"})
                ev[:] = [1, 5]
            tv = ds.createVariable("time", "i4", ("time",))
            tv.setncatts({"units": "hours since 1900-01-01 00:00:00.0", "long_name": "time",
                          "calendar": "gregorian"})
            tv[:] = np.round(hours).astype(np.int32)
            dims = (("time", "expver", "latitude", "longitude") if expver_dimension
                    else ("time", "latitude", "longitude"))
            for name in _present(hourly, ERA5_VARIABLES):
                _, units, long_name, standard_name = GRIB_PARAMETERS[name]
                values = hourly[name].transpose("time", "latitude", "longitude").values
                packed, scale, offset = _pack_int16(values.astype(np.float64))
                v = ds.createVariable(name, "i2", dims, fill_value=np.int16(OLD_CDS_FILL))
                v.set_auto_maskandscale(False)  # the values are packed already
                v.setncatts({"scale_factor": scale, "add_offset": offset,
                             "missing_value": np.int16(OLD_CDS_FILL), "units": units,
                             "long_name": long_name})
                if standard_name != "unknown":
                    v.setncattr("standard_name", standard_name)
                if expver_dimension:
                    full = np.full((len(times), 2) + packed.shape[1:], OLD_CDS_FILL, np.int16)
                    slot = np.array([0 if e == 1 else 1 for e in expvers])
                    full[np.arange(len(times)), slot] = packed
                    v[...] = full
                else:
                    v[...] = packed
        finally:
            ds.close()
    return path
