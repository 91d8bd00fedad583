"""ERA5 hourly single levels: read any CDS layout into one hourly Dataset, and make daily values.

Both layouts the CDS has served are accepted:
- new CDS: `valid_time` (int64 s since 1970), latitude decreasing, `expver(valid_time)` strings,
  float32 with NaN fill, and a ZIP of instant + accum files when a request mixes both, even
  when the file is called .nc;
- old CDS: `time` in hours since 1900, int16 packed with scale_factor/add_offset, and (for
  requests spanning ERA5 and ERA5T) an extra `expver` dimension with data in one slice per time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from tasks.gridding import plausibility
from tasks.io.quarantine import InputFileError
from tasks.readers.detect import classify, era5_zip_members
from tasks.readers.era5_layout import (
    ACCUMULATED,
    ERA5_ALIASES,
    ERA5_VARIABLES,
    INSTANTANEOUS,
    LATITUDE_NAMES,
    LONGITUDE_NAMES,
    TIME_NAMES,
)
from tasks.readers.netcdf import HDF5_LOCK, container_kind, open_netcdf


class MissingEra5Steps(ValueError):
    """Hourly steps a daily value needs are absent from the ERA5 data."""


# --------------------------------------------------------------------------------------------
# Reading


def read_era5(paths: Path | str | Iterable[Path | str]) -> xr.Dataset:
    """Hourly ERA5 on dims (time, latitude increasing, longitude) with canonical variable
    names (e, tp, sp, t2m, d2m, u10, v10, sund: whichever the files hold) in ERA5 units, and
    `expver(time)` when the files carry it. Several files (days) are joined along time."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    parts = [(Path(p), read_era5_file(Path(p))) for p in paths]
    if not parts:
        raise ValueError("read_era5 needs at least one file")
    first_path, first = parts[0]
    for path, part in parts[1:]:
        _check_same_grid(first, part, first_path, path)
    if len(parts) == 1:
        hourly = first
    else:
        datasets = [p for _, p in parts]
        if any("expver" in d.coords for d in datasets):
            # An old-CDS file does not say which stream it holds; '' keeps the join possible.
            datasets = [d if "expver" in d.coords else d.assign_coords(expver=("time", [""] * d.sizes["time"]))
                        for d in datasets]
        hourly = xr.concat(datasets, dim="time", data_vars="all", coords="different",
                           compat="equals", join="outer", combine_attrs="drop_conflicts")
    hourly = hourly.sortby("time")
    keep = ~hourly.indexes["time"].duplicated(keep="first")
    return hourly.isel(time=np.flatnonzero(keep))


def read_era5_file(path: Path) -> xr.Dataset:
    """One ERA5 file (plain NetCDF or CDS ZIP), normalised and loaded into memory."""
    if container_kind(path) == "zip":
        members = era5_zip_members(path)
        # One critical section for the whole archive rather than one per member: another
        # thread's file never interleaves with this one's members inside HDF5.
        with zipfile.ZipFile(path) as zf, HDF5_LOCK:
            pieces = []
            for member in members:
                with open_netcdf(path, memory=zf.read(member), label=member) as nc:
                    found = classify(nc, path, member)
                    if found != "era5":
                        raise InputFileError(path, f"ZIP member {member!r} is {found}, not ERA5")
                    pieces.append(_normalise(_load(nc, path, member), path, member))
        try:
            merged = xr.merge(pieces, compat="no_conflicts", join="outer",
                              combine_attrs="drop_conflicts")
        except (ValueError, xr.MergeError) as exc:
            raise InputFileError(path, f"ZIP members do not merge: {exc}") from None
        check_plausible(merged, path)
        return merged
    with open_netcdf(path) as nc:
        found = classify(nc, path)
        if found != "era5":
            raise InputFileError(path, f"expected an ERA5 file, found {found}")
        hourly = _normalise(_load(nc, path, None), path, None)
    check_plausible(hourly, path)
    return hourly


def check_plausible(hourly: xr.Dataset, path: Path) -> None:
    """InputFileError naming every variable with NaN or values outside its plausible range.

    ERA5 single levels are complete everywhere, so a NaN (once ERA5 and ERA5T slices are
    collapsed) is damage as much as `t2m = 1e20`: either would shift a day's map silently."""
    findings = [f for name in hourly.data_vars if name in plausibility.METEOROLOGY
                for f in [plausibility.check_values(name, hourly[name].values, plausibility.METEOROLOGY[name])]
                if f is not None]
    for axis, bounds in (("latitude", plausibility.LATITUDE), ("longitude", plausibility.LONGITUDE)):
        finding = plausibility.check_values(axis, hourly[axis].values, bounds)
        if finding is not None:
            findings.append(finding)
    times = pd.DatetimeIndex(hourly.indexes["time"])
    lo, hi = plausibility.ERA5_YEARS
    if len(times) and (times.isna().any() or times.min().year < lo or times.max().year > hi):
        raise InputFileError(path, f"ERA5 times {times.min()}..{times.max()} lie outside {lo}..{hi}")
    if findings:
        raise InputFileError(path, "implausible meteorology: " + "; ".join(f.describe() for f in findings))


def _load(nc: netCDF4.Dataset, path: Path, member: str | None) -> xr.Dataset:
    where = f"{member}: " if member else ""
    try:
        ds = xr.open_dataset(xr.backends.NetCDF4DataStore(nc), decode_timedelta=False)
        return ds.load()
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        raise InputFileError(path, f"{where}ERA5 data cannot be read (truncated?): {exc}") from None


def _normalise(ds: xr.Dataset, path: Path, member: str | None) -> xr.Dataset:
    where = f"{member}: " if member else ""
    renames = {}
    for canonical, aliases in (("time", TIME_NAMES), ("latitude", LATITUDE_NAMES),
                               ("longitude", LONGITUDE_NAMES)):
        present = [a for a in aliases if a in ds.dims or a in ds.coords]
        if not present:
            raise InputFileError(path, f"{where}no {canonical} dimension (looked for {aliases})")
        if present[0] != canonical:
            if canonical in ds.variables:  # e.g. a stray `time` next to `valid_time`
                ds = ds.drop_vars(canonical)
            renames[present[0]] = canonical
    ds = ds.rename(renames)
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise InputFileError(path, f"{where}time values could not be decoded "
                                   f"(units {ds['time'].attrs.get('units')!r})")
    variables = {name: ERA5_ALIASES[name] for name in ds.data_vars if name in ERA5_ALIASES}
    if not variables:
        raise InputFileError(path, f"{where}none of the ERA5 variables {ERA5_VARIABLES} present")
    out = ds[list(variables)].rename({k: v for k, v in variables.items() if k != v})
    if "expver" in ds.dims:
        out = _collapse_expver_dimension(out)
    elif "expver" in ds.coords or "expver" in ds.data_vars:
        expver = ds["expver"]
        values = np.broadcast_to(np.asarray(expver.values), (ds.sizes["time"],))
        out = out.assign_coords(expver=("time", [_expver_text(v) for v in values]))
    scalar = [c for c in out.coords if c not in ("time", "latitude", "longitude", "expver")]
    out = out.drop_vars(scalar)
    lon = out["longitude"].values
    if np.nanmax(lon) > 180:  # 0..360 grids from some converters
        out = out.assign_coords(longitude=((lon + 180.0) % 360.0) - 180.0)
    # float32 axes (old CDS) would not line up with float64 ones from other files.
    out = out.assign_coords(latitude=np.round(out["latitude"].values.astype(np.float64), 6),
                            longitude=np.round(out["longitude"].values.astype(np.float64), 6))
    out = out.sortby("latitude").sortby("longitude")
    out = out.transpose("time", "latitude", "longitude")
    for name in out.data_vars:
        out[name] = out[name].astype(np.float32)
    out.attrs = {}
    return out


def _collapse_expver_dimension(ds: xr.Dataset) -> xr.Dataset:
    """Old CDS mixing ERA5 (1) and ERA5T (5): each time has data in one expver slice only.
    Take, per time, the first slice with data, preferring final ERA5."""
    order = sorted(ds["expver"].values.tolist(), key=lambda v: int(float(v)))
    ds = ds.sel(expver=order)
    first_var = next(iter(ds.data_vars))
    has_data = ds[first_var].notnull().any(dim=[d for d in ds[first_var].dims
                                                if d not in ("time", "expver")])
    pick = has_data.argmax(dim="expver")  # first slice with data (0 when none has any)
    collapsed = ds.isel(expver=pick)
    labels = [_expver_text(order[int(i)]) for i in pick.values]
    return collapsed.drop_vars("expver").assign_coords(expver=("time", labels))


def _expver_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    text = str(value).strip()
    try:
        return f"{int(float(text)):04d}"
    except ValueError:
        return text


def _check_same_grid(a: xr.Dataset, b: xr.Dataset, path_a: Path, path_b: Path) -> None:
    for axis in ("latitude", "longitude"):
        va, vb = a[axis].values, b[axis].values
        if va.shape != vb.shape or not np.allclose(va, vb, atol=1e-6):
            raise InputFileError(path_b, f"ERA5 {axis} grid differs from {path_a.name} "
                                         f"({vb.size} vs {va.size} points)")


# --------------------------------------------------------------------------------------------
# Daily values in the paper's units

# Magnus coefficients over water (Alduchov and Eskridge 1996), temperatures in degC.
MAGNUS_A = 17.625
MAGNUS_B = 243.04

DAILY_UNITS = {
    "evaporation_mm": "mm", "precipitation_mm": "mm", "surface_pressure_hpa": "hPa",
    "relative_humidity_pct": "%", "sunshine_duration_h": "h", "temperature_c": "degC",
    "wind_speed_ms": "m s-1",
}


def relative_humidity_pct(t2m_k: np.ndarray, d2m_k: np.ndarray) -> np.ndarray:
    t = np.asarray(t2m_k, dtype=np.float64) - 273.15
    td = np.asarray(d2m_k, dtype=np.float64) - 273.15
    rh = 100.0 * np.exp(MAGNUS_A * td / (MAGNUS_B + td) - MAGNUS_A * t / (MAGNUS_B + t))
    return np.minimum(rh, 100.0)


def era5_daily(hourly: xr.Dataset, days: Iterable[date | datetime | np.datetime64 | str]
               ) -> xr.Dataset:
    """Daily covariates on dims (day, latitude, longitude).

    Accumulations (e, tp, sund) for day d sum the steps 01 UTC on d through 00 UTC on d+1 (each
    step covers the hour ending at it), so day d needs the next day's 00 UTC step.
    Instantaneous variables average 00..23 UTC of d. Missing steps raise MissingEra5Steps;
    NaN in any needed step gives NaN rather than a silently short total."""
    missing_vars = [v for v in ERA5_VARIABLES if v not in hourly.data_vars]
    if missing_vars:
        raise ValueError(f"ERA5 hourly data lack variable(s) {missing_vars} needed for daily "
                         "covariates")
    day_list = [pd.Timestamp(d).normalize() for d in days]
    if not day_list:
        raise ValueError("era5_daily needs at least one day")
    index = pd.DatetimeIndex(hourly.indexes["time"])
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    position = pd.Series(np.arange(len(index)), index=index)
    position = position[~position.index.duplicated()]

    def steps(day: pd.Timestamp, first_hour: int, kind: str) -> np.ndarray:
        wanted = day + pd.to_timedelta(np.arange(first_hour, first_hour + 24), unit="h")
        absent = wanted[~wanted.isin(position.index)]
        if len(absent):
            shown = ", ".join(f"{t:%Y-%m-%dT%H:%M}" for t in absent[:4])
            more = f" and {len(absent) - 4} more" if len(absent) > 4 else ""
            hint = (" (the next day's 00 UTC step closes the day's accumulations: fetch "
                    f"{day + timedelta(days=1):%Y-%m-%d} too)"
                    if kind == "accumulated" and absent[-1] == wanted[-1] else "")
            raise MissingEra5Steps(
                f"ERA5 {kind} values for {day:%Y-%m-%d} need hourly step(s) {shown}{more}, "
                f"which are missing{hint}")
        return position.loc[wanted].to_numpy()

    arrays: dict[str, list[np.ndarray]] = {k: [] for k in DAILY_UNITS}
    data = {v: hourly[v].values for v in ERA5_VARIABLES}
    for day in day_list:
        inst = steps(day, 0, "instantaneous")
        accu = steps(day, 1, "accumulated")

        def total(name: str) -> np.ndarray:
            return data[name][accu].astype(np.float64).sum(axis=0)

        def mean(values: np.ndarray) -> np.ndarray:
            return values.astype(np.float64).mean(axis=0)

        arrays["evaporation_mm"].append(-total("e") * 1000.0)
        arrays["precipitation_mm"].append(total("tp") * 1000.0)
        arrays["sunshine_duration_h"].append(total("sund") / 3600.0)
        arrays["surface_pressure_hpa"].append(mean(data["sp"][inst]) / 100.0)
        arrays["temperature_c"].append(mean(data["t2m"][inst]) - 273.15)
        arrays["relative_humidity_pct"].append(
            mean(relative_humidity_pct(data["t2m"][inst], data["d2m"][inst])))
        arrays["wind_speed_ms"].append(
            mean(np.hypot(data["u10"][inst].astype(np.float64),
                          data["v10"][inst].astype(np.float64))))
    coords = {"day": np.array([d.to_datetime64() for d in day_list], dtype="datetime64[ns]"),
              "latitude": hourly["latitude"].values, "longitude": hourly["longitude"].values}
    daily = xr.Dataset(
        {k: (("day", "latitude", "longitude"), np.stack(v).astype(np.float32),
             {"units": DAILY_UNITS[k]}) for k, v in arrays.items()},
        coords=coords,
    )
    return daily


__all__ = ["read_era5", "read_era5_file", "era5_daily", "relative_humidity_pct",
           "MissingEra5Steps", "INSTANTANEOUS", "ACCUMULATED"]
