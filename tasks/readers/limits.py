"""Refusing hostile sizes before anything is read.

A NetCDF file can declare a dimension of two billion soundings and hold no data (HDF5 serves
the fill value), and a ZIP member of zeros can inflate a thousandfold: an 11 KB download then
asks for tens of GB and ends the process with a MemoryError that names nothing. The sizes a
file declares are checked against what its product can hold (tasks.gridding.plausibility), so such a
file is an InputFileError like any damaged one: the pull quarantines it, `xco2 inspect` names it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import netCDF4

from tasks.gridding import plausibility as limits
from tasks.io.quarantine import InputFileError
from tasks.readers.era5_layout import LATITUDE_NAMES, LONGITUDE_NAMES, TIME_NAMES

_SOUNDING_DIMENSIONS = {"oco2_lite": "sounding_id", "oco3_lite": "sounding_id", "gosat_c3s": "sounding_dim"}


def _size_text(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def check_declared_sizes(ds: netCDF4.Dataset, path: Path, fmt: str, label: str | None = None) -> None:
    """InputFileError when a dimension or variable of a `fmt` file is larger than the product
    can be, judged on the declared lengths only."""
    where = f"{label}: " if label else ""
    dims = {name: len(dim) for name, dim in ds.dimensions.items()}
    if fmt in _SOUNDING_DIMENSIONS:
        name = _SOUNDING_DIMENSIONS[fmt]
        n, most = dims.get(name, 0), limits.MAX_SOUNDINGS[fmt]
        if n > most:
            raise InputFileError(path, f"{where}declares {_size_text(n)} soundings ({name}); a daily "
                                       f"{fmt} file holds at most {_size_text(most)}: refused unread")
    elif fmt == "era5":
        for names, most, what in ((TIME_NAMES, limits.MAX_ERA5_TIME_STEPS, "time steps"),
                                  (LATITUDE_NAMES, limits.MAX_ERA5_LATITUDES, "latitudes"),
                                  (LONGITUDE_NAMES, limits.MAX_ERA5_LONGITUDES, "longitudes")):
            for name in names:
                if dims.get(name, 0) > most:
                    raise InputFileError(
                        path, f"{where}declares {_size_text(dims[name])} {what} ({name}); an ERA5 "
                              f"file holds at most {_size_text(most)}: refused unread")
    most = limits.MAX_ERA5_VALUES_PER_VARIABLE if fmt == "era5" else limits.MAX_VALUES_PER_VARIABLE
    _check_variables(ds, path, where, most)


def _check_variables(group: netCDF4.Dataset | netCDF4.Group, path: Path, where: str, most: int) -> None:
    for name, var in group.variables.items():
        check_variable_size(var, path, most, where)
    for sub in group.groups.values():
        _check_variables(sub, path, where, most)


def check_variable_size(var: netCDF4.Variable, path: Path, most: int = limits.MAX_VALUES_PER_VARIABLE,
                        where: str = "") -> None:
    n = int(var.size)
    if n > most:
        raise InputFileError(path, f"{where}variable {var.name!r} declares {_size_text(n)} values "
                                   f"(shape {tuple(var.shape)}), more than the {_size_text(most)} any "
                                   "input may hold: refused unread")


def check_zip_members(zf: zipfile.ZipFile, path: Path) -> None:
    """InputFileError when a member would inflate beyond what may be held in memory, or far
    beyond its compressed size (a ZIP bomb), from the sizes in the central directory.

    The declared size bounds what is read: Python's zipfile stops a member at it."""
    for info in zf.infolist():
        if info.is_dir():
            continue
        size, packed = info.file_size, max(info.compress_size, 1)
        if size > limits.MAX_ZIP_MEMBER_BYTES:
            raise InputFileError(
                path, f"ZIP member {info.filename!r} inflates to {_size_text(size)} bytes, more than "
                      f"the {_size_text(limits.MAX_ZIP_MEMBER_BYTES)} an ERA5 member may hold: refused unread")
        ratio = size / packed
        if size > limits.ZIP_RATIO_CHECKED_ABOVE_BYTES and ratio > limits.MAX_ZIP_COMPRESSION_RATIO:
            raise InputFileError(
                path, f"ZIP member {info.filename!r} inflates {ratio:.0f}-fold ({_size_text(packed)} -> "
                      f"{_size_text(size)} bytes): a ZIP bomb, not ERA5 data; refused unread")
