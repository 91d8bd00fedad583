"""File-name conventions of the real products: parsing a granule's day and building real names.

Names are the cheapest evidence of what a file is and which UTC day it covers; readers still
check the content, because a name can lie (a renamed file, an HTML error page saved as .nc4).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

from tasks.io.quarantine import InputFileError

OCO_LITE_DAY = re.compile(r"_LtCO2_(\d{6})_")
OCO_LITE_MISSION = re.compile(r"^(oco2|oco3|acos)_LtCO2_", re.IGNORECASE)
GOSAT_C3S_DAY = re.compile(r"^(\d{8})-C3S")
ERA5_DEMO_DAY = re.compile(r"^era5_single_levels_(\d{8})\.nc$")

# Build/version tags of the product versions the system was written against (docs/formats.md);
# other versions keep the same layout, so readers never depend on these.
OCO_LITE_TAGS = {"oco2": "B11100Ar", "oco3": "B10400Br"}
GOSAT_C3S_SUFFIX = "-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc"


def day_of_granule(path: Path | str) -> date:
    """The UTC day a granule covers, from its real file name."""
    name = Path(path).name
    try:
        if m := OCO_LITE_DAY.search(name):
            return datetime.strptime(m.group(1), "%y%m%d").date()
        if m := GOSAT_C3S_DAY.match(name):
            return datetime.strptime(m.group(1), "%Y%m%d").date()
        if m := ERA5_DEMO_DAY.match(name):
            return datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        raise InputFileError(path, f"file name {name!r} holds an impossible date") from None
    raise InputFileError(
        path,
        f"file name {name!r} does not carry a day (expected *_LtCO2_YYMMDD_*, YYYYMMDD-C3S-* "
        "or era5_single_levels_YYYYMMDD.nc)",
    )


def oco_mission_from_name(path: Path | str) -> str | None:
    """'oco2', 'oco3', 'acos' from a Lite file name, or None when the name says nothing."""
    m = OCO_LITE_MISSION.match(Path(path).name)
    return m.group(1).lower() if m else None


def oco_lite_name(mission: str, day: date, produced: datetime) -> str:
    """oco2_LtCO2_YYMMDD_B11100Ar_<YYMMDDhhmmss>s.nc4 (the stamp is the production time)."""
    if mission not in OCO_LITE_TAGS:
        raise ValueError(f"mission must be one of {sorted(OCO_LITE_TAGS)}, got {mission!r}")
    return (
        f"{mission}_LtCO2_{day:%y%m%d}_{OCO_LITE_TAGS[mission]}_{produced:%y%m%d%H%M%S}s.nc4"
    )


def gosat_c3s_name(day: date) -> str:
    return f"{day:%Y%m%d}{GOSAT_C3S_SUFFIX}"


def era5_demo_name(day: date) -> str:
    return f"era5_single_levels_{day:%Y%m%d}.nc"
