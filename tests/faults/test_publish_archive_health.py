"""Issue 10 case 11: a day counts as archived only when its COG is sound and its STAC item names it.

Unit tests of tasks/archive/health.py on a hand-made archive (fast); the daily flow and the
backfill repairing a damaged archive are in test_publish_archive_flows.py.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tasks.archive import archived_days, collection_path, day_cog_path, day_item_path, validate_stac, write_day_cog
from tasks.archive.health import check_archive, day_problems
from tasks.archive.provenance import day_models
from tasks.archive.stac import item_properties_of, upsert_day_item
from tasks.gridding.geometry import Grid

REGION = "healthland"
GRID = Grid(west=104.0, south=30.6, east=104.2, north=30.8, step=0.01)  # 20 x 20 cells
DAYS = [date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)]


def tags_for(day: date) -> dict[str, str]:
    return {"units": "ppm", "date": day.isoformat(), "region": REGION, "model_name": "xco2-resnet-lstm",
            "model_version": "2", "feature_set_version": "fs-1", "source_mode": "demo", "synthetic": "true",
            "anchor_offset_ppm": "0.1234", "anchor_cells": "57", "anchor_days": "5",
            "anchor_window": "2024-04-27/2024-05-01", "anchor_method": "mean"}


def map_day(archive: Path, day: date) -> None:
    """What units.map_day publishes for a day: the COG, then its item from the same tags."""
    rng = np.random.default_rng(day.toordinal())
    xco2 = (415 + rng.normal(0, 0.4, GRID.shape)).astype(np.float32)
    uncertainty = np.full(GRID.shape, 0.8, np.float32)
    tags = tags_for(day)
    path = write_day_cog(day_cog_path(archive, REGION, day), xco2, GRID, tags, uncertainty=uncertainty)
    upsert_day_item(archive, REGION, GRID, day, path, item_properties_of(path))


@pytest.fixture
def archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    for day in DAYS:
        map_day(root, day)
    return root


def snapshot(archive: Path) -> dict[str, bytes]:
    return {str(p.relative_to(archive)): p.read_bytes() for p in sorted(archive.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def check(archive: Path, tmp_path: Path, days=DAYS):
    return check_archive(archive, REGION, GRID, days, tmp_path / "quarantine" / "archive")


def test_a_sound_archive_is_left_untouched(archive, tmp_path):
    before = snapshot(archive)
    stamps = {p: p.stat().st_mtime_ns for p in archive.rglob("*") if p.is_file()}
    health = check(archive, tmp_path)
    assert health.repairs == [] and health.to_remap == [] and health.sound == DAYS
    assert snapshot(archive) == before
    assert {p: p.stat().st_mtime_ns for p in archive.rglob("*") if p.is_file()} == stamps
    assert archived_days(archive, REGION) == DAYS and not any(day_problems(archive, REGION, d) for d in DAYS)


def test_a_lost_item_is_written_again_from_the_cogs_tags(archive, tmp_path):
    """A kill between the COG's rename and its item: the item comes back byte-identical."""
    before = snapshot(archive)
    item = day_item_path(archive, REGION, DAYS[1])
    item.unlink()
    # The collection was rebuilt without the day, as after a later day's upsert.
    upsert_day_item(archive, REGION, GRID, DAYS[2], day_cog_path(archive, REGION, DAYS[2]),
                    item_properties_of(day_cog_path(archive, REGION, DAYS[2])))
    assert day_problems(archive, REGION, DAYS[1]) == [f"{item}: no STAC item"]

    health = check(archive, tmp_path)

    assert [(r.day, r.file, r.action) for r in health.repairs] == [
        (DAYS[1].isoformat(), str(item), "item written again from the COG's tags")]
    assert health.to_remap == [] and health.sound == DAYS
    assert snapshot(archive) == before  # item and collection exactly as first written
    assert validate_stac(collection_path(archive, REGION)) == []
    assert not (tmp_path / "quarantine").exists()
    # The item says the layout the COG has (the writer adds the version tag; format 2: three bands).
    assert json.loads(item.read_text())["properties"]["xco2:format_version"] == "2"


@pytest.mark.parametrize("damage", ["truncated", "emptied", "garbage"])
def test_an_unsound_cog_is_quarantined_with_its_item_and_a_note(archive, tmp_path, damage):
    cog = day_cog_path(archive, REGION, DAYS[0])
    item = day_item_path(archive, REGION, DAYS[0])
    data = cog.read_bytes()
    cog.write_bytes({"truncated": data[: len(data) * 2 // 3], "emptied": b"",
                     "garbage": b"II*\x00" + os.urandom(len(data))}[damage])
    assert day_problems(archive, REGION, DAYS[0])

    health = check(archive, tmp_path)

    assert health.to_remap == [DAYS[0]] and health.sound == DAYS[1:]
    assert [r.file for r in health.repairs] == [str(cog), str(item)]
    assert not cog.exists() and not item.exists()
    quarantine = tmp_path / "quarantine" / "archive"
    note = json.loads(Path(health.repairs[0].quarantined_as + ".json").read_text())
    assert note["file"] == cog.name and note["reason"] and Path(note["quarantined_as"]).parent == quarantine
    assert sorted(p.name.split("_", 1)[1] for p in quarantine.iterdir()) == sorted(
        [cog.name, cog.name + ".json", item.name, item.name + ".json"])
    # The catalog no longer lists the day; the rest stays valid.
    links = [link["href"] for link in json.loads(collection_path(archive, REGION).read_text())["links"]
             if link["rel"] == "item"]
    assert len(links) == 2 and not any(item.name in href for href in links)
    assert validate_stac(collection_path(archive, REGION)) == []


def test_an_item_that_names_another_file_or_does_not_parse_is_rewritten(archive, tmp_path):
    before = snapshot(archive)
    first, second = (day_item_path(archive, REGION, d) for d in DAYS[:2])
    wrong = json.loads(first.read_text())
    wrong["assets"]["xco2"]["href"] = "./elsewhere.tif"
    first.write_text(json.dumps(wrong))
    second.write_text(second.read_text()[:100])
    health = check(archive, tmp_path)
    problems = {r.file: r.problem for r in health.repairs}
    assert "does not name" in problems[str(first)] and "not a readable STAC item" in problems[str(second)]
    assert snapshot(archive) == before


def test_an_item_without_its_cog_is_set_aside(archive, tmp_path):
    cog = day_cog_path(archive, REGION, DAYS[2])
    cog.unlink()
    health = check(archive, tmp_path)
    assert [(r.file, r.action) for r in health.repairs] == [
        (str(day_item_path(archive, REGION, DAYS[2])), "item quarantined")]
    assert not day_item_path(archive, REGION, DAYS[2]).exists()
    assert validate_stac(collection_path(archive, REGION)) == []


def test_a_collection_missing_an_item_is_rebuilt(archive, tmp_path):
    before = snapshot(archive)
    path = collection_path(archive, REGION)
    path.unlink()
    health = check(archive, tmp_path, days=[])  # whatever days a run checks, the catalog is whole
    assert [(r.file, r.action) for r in health.repairs] == [(str(path), "collection rebuilt from the items on disk")]
    assert snapshot(archive) == before


def test_days_outside_the_checked_window_are_not_read(archive, tmp_path):
    day_cog_path(archive, REGION, DAYS[0]).write_bytes(b"")
    health = check(archive, tmp_path, days=DAYS[1:])
    assert health.repairs == [] and health.checked == DAYS[1:]


def test_provenance_counts_an_unreadable_cog_as_made_by_no_model(archive):
    day_cog_path(archive, REGION, DAYS[0]).write_bytes(b"II*\x00 cut short")
    models = day_models(archive, REGION)
    assert models[DAYS[0]] == ("", "") and models[DAYS[1]] == ("xco2-resnet-lstm", "2")
