"""Which product a file holds, judged by its content (and its name where content is silent)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import netCDF4

from tasks.io.quarantine import InputFileError
from tasks.readers.era5_layout import ERA5_ALIASES, LATITUDE_NAMES, LONGITUDE_NAMES, TIME_NAMES
from tasks.readers.limits import check_declared_sizes, check_zip_members
from tasks.readers.names import oco_mission_from_name
from tasks.readers.netcdf import container_kind, open_netcdf

FORMATS = ("oco2_lite", "oco3_lite", "gosat_c3s", "era5")
SOUNDING_FORMATS = {"oco2_lite": "oco2", "oco3_lite": "oco3", "gosat_c3s": "gosat"}

_LITE_VARIABLES = {"sounding_id", "latitude", "longitude", "time", "xco2", "xco2_uncertainty",
                   "xco2_quality_flag", "vertex_latitude", "vertex_longitude"}
_C3S_VARIABLES = {"latitude", "longitude", "time", "xco2", "xco2_uncertainty",
                  "xco2_quality_flag"}


def detect_format(path: Path | str) -> str:
    """'oco2_lite', 'oco3_lite', 'gosat_c3s' or 'era5'; InputFileError for anything else."""
    path = Path(path)
    kind = container_kind(path)
    if kind == "zip":
        return _detect_zip(path)
    with open_netcdf(path) as ds:
        return classify(ds, path)


def era5_zip_members(path: Path) -> list[str]:
    """The NetCDF members of a CDS ZIP, or InputFileError when it holds something else."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            # Before testzip, which inflates every member (minutes of CPU for a ZIP bomb).
            check_zip_members(zf, path)
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(path, f"ZIP archive cannot be read: {exc}") from None
    if bad is not None:
        raise InputFileError(path, f"ZIP member {bad!r} is corrupt (CRC mismatch)")
    members = [n for n in names if n.endswith(".nc")]
    if not members:
        raise InputFileError(path, f"ZIP archive holds no .nc member (has {names[:5]})")
    return members


def _detect_zip(path: Path) -> str:
    members = era5_zip_members(path)
    with zipfile.ZipFile(path) as zf:
        for member in members:
            with open_netcdf(path, memory=zf.read(member), label=member) as ds:
                found = classify(ds, path, member)
            if found != "era5":
                raise InputFileError(
                    path, f"ZIP member {member!r} is {found}: only ERA5 archives are read as "
                    "ZIPs (unpack other CDS archives first)")
    return "era5"


def classify(ds: netCDF4.Dataset, path: Path, label: str | None = None) -> str:
    """The format of an open file, once its declared sizes are known to be readable."""
    fmt = _format_of(ds, path)
    check_declared_sizes(ds, path, fmt, label)
    return fmt


def _format_of(ds: netCDF4.Dataset, path: Path) -> str:
    variables = set(ds.variables)
    dims = set(ds.dimensions)
    if "sounding_id" in dims and _LITE_VARIABLES <= variables:
        return _oco_mission(ds, path) + "_lite"
    if "sounding_dim" in dims and _C3S_VARIABLES <= variables:
        return "gosat_c3s"
    has_grid = (dims & set(LATITUDE_NAMES)) and (dims & set(LONGITUDE_NAMES))
    if has_grid and dims & set(TIME_NAMES) and variables & set(ERA5_ALIASES):
        return "era5"
    listed = ", ".join(sorted(variables)[:12]) or "none"
    raise InputFileError(
        path, f"NetCDF file without the variables of any supported product (variables: {listed})")


def _oco_mission(ds: netCDF4.Dataset, path: Path) -> str:
    mission = oco_mission_from_name(path)
    if mission == "acos":
        raise InputFileError(path, "ACOS GOSAT Lite files are not supported (use C3S GOSAT L2)")
    if mission:
        return mission
    attrs = " ".join(str(ds.getncattr(a)) for a in ds.ncattrs()).upper().replace("-", "")
    if "OCO3" in attrs and "OCO2" not in attrs:
        return "oco3"
    if "OCO2" in attrs and "OCO3" not in attrs:
        return "oco2"
    if "Sounding" in ds.groups and "target_id" in ds.groups["Sounding"].variables:
        return "oco3"  # only OCO-3 points at targets
    raise InputFileError(path, "OCO Lite layout, but neither name nor attributes tell OCO-2 "
                               "from OCO-3")
