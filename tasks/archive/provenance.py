"""Which model made each archived day (the COG's dataset tags), to find days to recompute."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from tasks.archive.layout import archived_days, day_cog_path


def day_models(archive_root: Path | str, region_name: str, first: date | None = None,
               last: date | None = None) -> dict[date, tuple[str, str]]:
    """{day: (model_name, model_version)} of the archived days in [first, last]; a COG without the
    tags (written by hand, or before they existed) or that cannot be opened maps to ('', '')."""
    out = {}
    for day in archived_days(archive_root, region_name):
        if (first and day < first) or (last and day > last):
            continue
        try:
            with rasterio.open(day_cog_path(archive_root, region_name, day)) as src:
                tags = src.tags()
        except (RasterioError, OSError):  # unreadable: made by nothing we know, so stale
            tags = {}
        out[day] = (tags.get("model_name", ""), tags.get("model_version", ""))
    return out


def stale_days(archive_root: Path | str, region_name: str, model_name: str, version: int | str,
               first: date | None = None, last: date | None = None) -> list[date]:
    """Archived days in [first, last] made by anything other than `model_name` version `version`."""
    wanted = (model_name, str(version))
    return sorted(d for d, made_by in day_models(archive_root, region_name, first, last).items() if made_by != wanted)
