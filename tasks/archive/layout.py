"""Where a region's daily maps and their STAC metadata live in the archive.

    <archive_root>/<region>/collection.json                       STAC collection
    <archive_root>/<region>/<YYYY>/xco2_<region>_<YYYYMMDD>.tif   the day's COG
    <archive_root>/<region>/<YYYY>/xco2_<region>_<YYYYMMDD>.json  the day's STAC item

The item sits next to its COG so a year folder copied elsewhere keeps working (the asset href
is just the file name), and the file names alone say region and day, so an analyst who only
has the .tif still knows what it is. Year folders keep directories small over decades.

Files being written are hidden siblings (".<name>.<random>.tmp"); the name patterns here
never match them, so a listing never reports a half-written day. `<region>/.stac.lock` is the
lock STAC upserts take so parallel days don't overwrite each other's collection update.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

PRODUCT = "xco2"
COLLECTION_FILE = "collection.json"

_REGION_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _checked_region(region_name: str) -> str:
    # The name becomes a path component: refuse anything that could climb out of the archive.
    if not _REGION_NAME.fullmatch(region_name or ""):
        raise ValueError(f"region name {region_name!r} must be letters, digits, '-' or '_'")
    return region_name


def region_dir(archive_root: Path | str, region_name: str) -> Path:
    return Path(archive_root) / _checked_region(region_name)


def collection_path(archive_root: Path | str, region_name: str) -> Path:
    return region_dir(archive_root, region_name) / COLLECTION_FILE


def day_stem(region_name: str, day: date) -> str:
    """`xco2_<region>_<YYYYMMDD>`: the COG's name without suffix, and the STAC item id."""
    return f"{PRODUCT}_{_checked_region(region_name)}_{day:%Y%m%d}"


def day_cog_path(archive_root: Path | str, region_name: str, day: date) -> Path:
    return region_dir(archive_root, region_name) / f"{day:%Y}" / f"{day_stem(region_name, day)}.tif"


def day_item_path(archive_root: Path | str, region_name: str, day: date) -> Path:
    return day_cog_path(archive_root, region_name, day).with_suffix(".json")


def _day_name_pattern(region_name: str, suffix: str) -> re.Pattern[str]:
    return re.compile(rf"{PRODUCT}_{re.escape(_checked_region(region_name))}_(\d{{8}}){re.escape(suffix)}")


def _days_in(folder: Path, region_name: str, suffix: str) -> list[date]:
    pattern = _day_name_pattern(region_name, suffix)
    days: set[date] = set()
    for year_dir in folder.glob("[0-9][0-9][0-9][0-9]"):
        if not year_dir.is_dir():
            continue
        for entry in year_dir.iterdir():
            match = pattern.fullmatch(entry.name)
            if match is None or not entry.is_file():
                continue
            try:
                day = datetime.strptime(match.group(1), "%Y%m%d").date()
            except ValueError:  # e.g. 20240231: not a day this archive wrote
                continue
            # A file in the wrong year folder is not where readers will look for it.
            if f"{day:%Y}" == year_dir.name:
                days.add(day)
    return sorted(days)


def archived_days(archive_root: Path | str, region_name: str) -> list[date]:
    """Days that have a finished COG in the archive, oldest first."""
    return _days_in(region_dir(archive_root, region_name), region_name, ".tif")


def itemised_days(archive_root: Path | str, region_name: str) -> list[date]:
    """Days that have a STAC item in the archive, oldest first."""
    return _days_in(region_dir(archive_root, region_name), region_name, ".json")
