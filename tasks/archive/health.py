"""Is each archived day sound, and repairing the days that are not.

A day counts as archived only when its COG reads back whole and passes the COG checks AND its
STAC item exists, parses and names that COG. Anything else is repaired here, at the start of a
run's archive extension (daily flow, backfill):

- a COG without (or with a broken) item: the item is written again from the COG's own tags;
  the map itself is fine, so nothing is remapped (a kill between the COG's rename and its item
  leaves exactly this);
- a COG that does not read back whole or fails the checks (cut short by a full disk, damaged on
  disk): moved aside to the quarantine with a .json note, together with its item; the day is
  then missing and the run maps it again;
- an item whose COG is gone: moved aside the same way, so the catalog never points at nothing;
- a collection that does not list exactly the items on disk: rebuilt from them.

Every repair is logged (WARNING, naming the file) and returned, for the run's result.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterable

import rasterio

from tasks.archive.cog import GDAL_ERRORS, read_back_problems
from tasks.archive.layout import collection_path, day_cog_path, day_item_path, day_stem, itemised_days
from tasks.archive.stac import ASSET_KEY, item_properties_of, refresh_collection, upsert_day_item
from tasks.gridding.geometry import Grid
from tasks.io.quarantine import quarantine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchiveRepair:
    """One repair: the day ('' for the collection), the file it concerned, what was wrong and
    what was done."""

    day: str
    file: str
    problem: str
    action: str
    quarantined_as: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ArchiveHealth:
    """What a check found and did. `to_remap`: days whose map was quarantined and must be mapped
    again; `sound`: the checked days that are archived (COG and item) after the repairs."""

    checked: list[date] = field(default_factory=list)
    sound: list[date] = field(default_factory=list)
    to_remap: list[date] = field(default_factory=list)
    repairs: list[ArchiveRepair] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [r.to_dict() for r in self.repairs]


def item_problems(archive_root: Path | str, region_name: str, day: date) -> list[str]:
    """Problems of the day's STAC item as a pointer to its COG; empty when it is sound."""
    item_path = day_item_path(archive_root, region_name, day)
    if not item_path.is_file():
        return [f"{item_path}: no STAC item"]
    try:
        item = json.loads(item_path.read_text(encoding="utf-8"))
        href = item["assets"][ASSET_KEY]["href"]
        item_id = item["id"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return [f"{item_path}: not a readable STAC item ({type(exc).__name__}: {exc})"]
    problems = []
    if item_id != day_stem(region_name, day):
        problems.append(f"{item_path}: id {item_id!r}, expected {day_stem(region_name, day)!r}")
    cog = day_cog_path(archive_root, region_name, day)
    if not isinstance(href, str) or Path(os.path.normpath(item_path.parent / href)) != cog:
        problems.append(f"{item_path}: its asset {href!r} does not name {cog.name}")
    return problems


def day_problems(archive_root: Path | str, region_name: str, day: date) -> list[str]:
    """Why the day does not count as archived (empty when its COG and its item are sound)."""
    cog = day_cog_path(archive_root, region_name, day)
    if not cog.is_file():
        return [f"{cog}: no COG"]
    return read_back_problems(cog) + item_problems(archive_root, region_name, day)


def _grid_of(cog: Path, grid: Grid) -> Grid:
    # The item describes the file as it is: normally on the run's grid; a day of an older grid
    # keeps its own footprint.
    with rasterio.open(cog) as src:
        if src.shape == grid.shape and src.transform == grid.transform:
            return grid
        t = src.transform
        return Grid(west=round(t.c, 9), north=round(t.f, 9), east=round(t.c + src.width * t.a, 9),
                    south=round(t.f + src.height * t.e, 9), step=round(t.a, 12))


def _restore_item(archive_root: Path, region_name: str, grid: Grid, day: date, cog: Path) -> None:
    upsert_day_item(archive_root, region_name, _grid_of(cog, grid), day, cog, item_properties_of(cog))


def _collection_problem(archive_root: Path, region_name: str) -> str | None:
    # Messages without the path: repairs name their file apart.
    path = collection_path(archive_root, region_name)
    wanted = {day_item_path(archive_root, region_name, d) for d in itemised_days(archive_root, region_name)}
    if not path.is_file():
        return "no collection" if wanted else None
    try:
        links = json.loads(path.read_text(encoding="utf-8"))["links"]
        listed = {Path(os.path.normpath(path.parent / link["href"])) for link in links if link.get("rel") == "item"}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"not a readable STAC collection ({type(exc).__name__}: {exc})"
    if listed != wanted:
        missing = sorted(p.name for p in wanted - listed)
        extra = sorted(p.name for p in listed - wanted)
        return ("does not list the items on disk"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; lists absent {', '.join(extra)}" if extra else ""))
    return None


def check_archive(archive_root: Path | str, region_name: str, grid: Grid, days: Iterable[date],
                  quarantine_dir: Path | str) -> ArchiveHealth:
    """Check the COG + STAC item pairs of `days` and repair what is wrong (see the module
    docstring); unsound maps go to `quarantine_dir` (e.g. <data>/quarantine/archive)."""
    archive_root, quarantine_dir = Path(archive_root), Path(quarantine_dir)
    health = ArchiveHealth(checked=sorted(set(days)))
    catalog_changed = False
    # Found before anything is moved: what the repairs below change is theirs to report.
    collection_problem = _collection_problem(archive_root, region_name)

    def repaired(day: date | None, path: Path, problem: str, action: str, moved: Path | None = None) -> None:
        repair = ArchiveRepair(day.isoformat() if day else "", str(path), problem, action,
                               str(moved) if moved else None)
        health.repairs.append(repair)
        log.warning("archive %s: %s -> %s", path, problem, action)

    def set_aside(path: Path, reason: str) -> Path | None:
        try:
            return quarantine(path, reason, quarantine_dir)
        except FileNotFoundError:  # a concurrent run's check moved it first
            return None

    for day in health.checked:
        cog = day_cog_path(archive_root, region_name, day)
        item = day_item_path(archive_root, region_name, day)
        if not cog.is_file():
            if item.is_file():  # an item pointing at nothing: set aside, the day maps again
                moved = set_aside(item, f"STAC item without its COG {cog.name}")
                repaired(day, item, f"item without its COG {cog.name}", "item quarantined", moved)
                catalog_changed = True
            continue
        problems = read_back_problems(cog)
        if problems:
            problem = "; ".join(p.removeprefix(f"{cog}: ") for p in problems)
            moved = set_aside(cog, problem)
            repaired(day, cog, problem, "COG quarantined; the day is mapped again", moved)
            if item.is_file():
                moved_item = set_aside(item, f"its COG {cog.name} was quarantined: {problem}")
                repaired(day, item, f"item of the quarantined COG {cog.name}", "item quarantined", moved_item)
            health.to_remap.append(day)
            catalog_changed = True
            continue
        problems = item_problems(archive_root, region_name, day)
        if problems:
            try:
                _restore_item(archive_root, region_name, grid, day, cog)
            except (*GDAL_ERRORS, OSError, ValueError) as exc:
                repaired(day, item, "; ".join(problems), f"NOT repaired: cannot write the item again: {exc}")
                continue
            repaired(day, item, "; ".join(p.removeprefix(f"{item}: ") for p in problems),
                     "item written again from the COG's tags")
        health.sound.append(day)

    if collection_problem or catalog_changed:
        collection = collection_path(archive_root, region_name)
        if refresh_collection(archive_root, region_name, grid) is not None:
            if collection_problem:
                repaired(None, collection, collection_problem, "collection rebuilt from the items on disk")
        elif collection.is_file():  # no item left: a collection listing days would lie
            why = collection_problem or "no STAC item left to list"
            moved = set_aside(collection, why)
            repaired(None, collection, why, "collection quarantined", moved)
    return health
