"""The daily XCO2 map archive: COGs on the 0.01 degree grid, STAC metadata, quicklooks.

    path = day_cog_path(root, region.name, day)
    write_day_cog(path, xco2, grid, tags, uncertainty)
    upsert_day_item(root, region, grid, day, path, properties)
    quicklook_png(path, png, title)
    validate_cog(path, grid) / validate_stac(collection_path(root, region.name))  # [] when sound
    check_archive(root, region.name, grid, days, quarantine)  # health.py: repair unsound days
"""

from tasks.archive.cog import NODATA, ArchiveWriteError, validate_cog, write_day_cog
from tasks.archive.layout import archived_days, collection_path, day_cog_path, day_item_path
from tasks.archive.quicklook import quicklook_markdown, quicklook_png
from tasks.archive.stac import upsert_day_item
from tasks.archive.stac_validation import validate_stac

__all__ = [
    "NODATA",
    "ArchiveWriteError",
    "archived_days",
    "collection_path",
    "day_cog_path",
    "day_item_path",
    "quicklook_markdown",
    "quicklook_png",
    "upsert_day_item",
    "validate_cog",
    "validate_stac",
    "write_day_cog",
]
