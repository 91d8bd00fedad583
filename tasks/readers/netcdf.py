"""Opening NetCDF/HDF5 files so that every low-level failure becomes an InputFileError.

netCDF4 reports a truncated HDF5 file as "NetCDF: HDF error" and a foreign file as "Unknown file
format"; neither names the file in a way an operator can act on, and some damage only shows when
a variable is read. Everything that touches file bytes goes through here.

The netCDF4 wheels bundle an HDF5 built without its thread-safety option: two threads inside
the library at once (backfill maps days on a thread pool) fail with "NetCDF: HDF error" or
crash the process with SIGBUS. HDF5_LOCK, one re-entrant lock per process, is held from before
a file is opened until after it is closed, so a whole file read is serialized; ONNX inference,
the costly part of a day, still runs in parallel.
"""

from __future__ import annotations

import re
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import netCDF4
import numpy as np
import pandas as pd
from numpy.typing import DTypeLike

from tasks.gridding.plausibility import SOUNDING_YEARS
from tasks.io.quarantine import InputFileError
from tasks.readers.limits import check_variable_size

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05")

# Re-entrant: a reader that holds it for a whole file may open ZIP members through open_netcdf.
HDF5_LOCK = threading.RLock()

# Observation times outside this span mean the time variable was decoded wrongly.
PLAUSIBLE_YEARS = SOUNDING_YEARS


def container_kind(path: Path | str) -> str:
    """'zip', 'hdf5' (NetCDF-4) or 'netcdf3' from the first bytes; InputFileError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file does not exist")
    if not path.is_file():
        raise InputFileError(path, "not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise InputFileError(path, "file is empty (0 bytes)")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head[:4] in NETCDF3_SIGNATURES:
        return "netcdf3"
    if zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(b"PK"):
        raise InputFileError(path, "ZIP archive is truncated or corrupt")
    preview = head.decode("ascii", "replace").strip()
    looks_text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    what = f"a text file starting {preview!r}" if looks_text else f"unknown bytes {head!r}"
    raise InputFileError(path, f"not a NetCDF/HDF5 file: {what} ({size} bytes)")


@contextmanager
def open_netcdf(path: Path | str, memory: bytes | None = None, label: str | None = None
                ) -> Iterator[netCDF4.Dataset]:
    """netCDF4.Dataset on a file (or on bytes taken from an archive member), used under
    HDF5_LOCK: this thread holds it until the dataset is closed."""
    path = Path(path)
    where = f"{label}: " if label else ""
    with HDF5_LOCK:
        try:
            if memory is not None:
                ds = netCDF4.Dataset(label or path.name, mode="r", memory=memory)
            else:
                ds = netCDF4.Dataset(path, mode="r")
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputFileError(
                path, f"{where}cannot be opened as NetCDF (truncated or corrupt?): {exc}"
            ) from None
        try:
            yield ds
        finally:
            ds.close()


def read_array(ds: netCDF4.Dataset, name: str, path: Path, dtype: DTypeLike = np.float64,
               fill_values: tuple[float, ...] = ()) -> np.ndarray:
    """A variable as a plain array, masked/_FillValue and the given fill values set to NaN.

    Integer requests keep masked values as the given first fill value (caller decides)."""
    try:
        var = ds[name]
    except (IndexError, KeyError):
        raise InputFileError(path, f"variable {name!r} is missing") from None
    check_variable_size(var, path)  # a declared size is checked before it is allocated
    try:
        raw = var[...]
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        raise InputFileError(path, f"variable {name!r} cannot be read (truncated?): {exc}"
                             ) from None
    if np.issubdtype(np.dtype(dtype), np.floating):
        arr = np.ma.filled(np.ma.asarray(raw).astype(dtype), np.nan)
        for fill in fill_values:
            arr[arr == fill] = np.nan
        return arr
    filler = fill_values[0] if fill_values else 0
    return np.ma.filled(np.ma.asarray(raw), filler).astype(dtype)


_EPOCH_UNITS = re.compile(r"^\s*(seconds|second|secs|s|minutes|hours|days)\s+since\s+(.+?)\s*$",
                          re.IGNORECASE)
_UNIT_SECONDS = {"seconds": 1.0, "second": 1.0, "secs": 1.0, "s": 1.0, "minutes": 60.0,
                 "hours": 3600.0, "days": 86400.0}


def decode_times(values: np.ndarray, units: str | None, path: Path) -> pd.DatetimeIndex:
    """CF 'X since EPOCH' numbers to UTC timestamps; no units means seconds since 1970 (the
    products' documented convention). A time outside PLAUSIBLE_YEARS becomes NaT (its sounding
    is dropped, the others kept); when most are, the units are wrong and the file is refused."""
    if units:
        m = _EPOCH_UNITS.match(units)
        if not m:
            raise InputFileError(path, f"time units {units!r} are not 'seconds since <epoch>'")
        try:
            epoch = pd.Timestamp(m.group(2).replace("UTC", "").strip())
        except ValueError:
            raise InputFileError(path, f"time units {units!r} carry an unreadable epoch") from None
        epoch = epoch.tz_localize("UTC") if epoch.tzinfo is None else epoch.tz_convert("UTC")
        factor = _UNIT_SECONDS[m.group(1).lower()]
    else:
        epoch = pd.Timestamp("1970-01-01", tz="UTC")
        factor = 1.0
    seconds = np.asarray(values, dtype=np.float64) * factor
    finite = np.isfinite(seconds)
    # Judged in seconds, before nanoseconds: a corrupt 1e15 would overflow int64 silently.
    first = (pd.Timestamp(f"{PLAUSIBLE_YEARS[0]}-01-01", tz="UTC") - epoch).total_seconds()
    last = (pd.Timestamp(f"{PLAUSIBLE_YEARS[1] + 1}-01-01", tz="UTC") - epoch).total_seconds()
    with np.errstate(invalid="ignore"):
        plausible = finite & (seconds >= first) & (seconds < last)
    n_finite, n_plausible = int(finite.sum()), int(plausible.sum())
    if n_finite and n_plausible * 2 < n_finite:
        shown = seconds[finite & ~plausible][0]
        raise InputFileError(
            path, f"{n_finite - n_plausible} of {n_finite} time values (e.g. {shown:.6g}) fall outside "
            f"{PLAUSIBLE_YEARS[0]}..{PLAUSIBLE_YEARS[1]} with units {units!r}: wrong units or not this product")
    ns = np.full(seconds.shape, np.iinfo(np.int64).min, dtype=np.int64)  # NaT
    ns[plausible] = np.round(seconds[plausible] * 1e9).astype(np.int64) + epoch.value
    return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")
