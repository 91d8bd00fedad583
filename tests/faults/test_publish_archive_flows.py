"""Issue 10 cases 7 and 11 through the flows, on a tiny demo world with a champion.

- a STAC item lost (killed between the COG's rename and its item): the next daily run, or a
  backfill, writes it again, byte-identical, without remapping the day;
- a COG cut short: the next run quarantines it (with a note) and maps the day again, and the
  final bytes equal the undisturbed run's;
- a truncated cached champion: the next daily run fetches it again and maps.
Each repair shows in the run's result.

Slow (about 40 s of CPU for the world: ingest, one short retrain, two mapped days); the same
repairs are unit-tested fast in test_publish_archive_health.py and test_publish_champion.py.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from flows.backfill import run_backfill
from flows.daily import daily_update
from flows.retrain import monthly_retrain
from registry.store import ONNX_SHA256_TAG, client_for, file_digest
from tasks.archive import collection_path, day_cog_path, day_item_path, validate_stac
from tasks.archive.health import day_problems
from demo_world import write_demo_world
from tasks.settings import Region, load_settings

pytestmark = pytest.mark.slow

MODEL = "faults-publish-archive"
START = date(2020, 6, 1)
DAYS = 4
ARCHIVE_DAYS = 2


# 0.2 x 0.2 degree (20 x 20 cells) inside the demo's small region: every step is quick.
REGION = Region(name="chengdu-tiny", west=103.95, south=30.55, east=104.15, north=30.75)


@pytest.fixture(scope="module")
def world(prefect_harness, tracking_uri, tmp_path_factory):
    """A 4-day demo world over a tiny region, a champion (one short retrain), and its last 2
    days archived, as `xco2 demo` makes them; returns (overrides, the undisturbed archive's
    bytes, the archived days)."""
    root = tmp_path_factory.mktemp("publish-archive")
    end = START + timedelta(days=DAYS - 1)
    overrides = {"data_dir": str(root / "xco2-data"), "source": "demo", "region": REGION.model_dump(),
                 "archive_lookback_days": ARCHIVE_DAYS, "max_epochs": 1, "max_training_samples": 1000,
                 "max_validation_samples": 300, "comparison_protocols": [],
                 "mlflow_tracking_uri": tracking_uri, "registered_model_name": MODEL}
    settings = load_settings(**overrides)
    write_demo_world(settings.data_dir / "demo", settings.region, START, end, grid_step=settings.grid_step,
                     seed=20200601, dense=True)
    daily(overrides)  # ingest: no champion yet
    monthly_retrain(overrides=overrides)
    first = daily(overrides)
    archived = [end - timedelta(days=1), end]
    assert [r["day"] for r in first["archive_days"]] == [d.isoformat() for d in archived]
    return overrides, archive_bytes(overrides, archived), archived


def archive_root(overrides) -> Path:
    return Path(overrides["data_dir"]) / "archive"


def archive_bytes(overrides, days) -> dict[str, bytes]:
    root = archive_root(overrides)
    return {str(p): p.read_bytes() for d in days
            for p in (day_cog_path(root, REGION.name, d), day_item_path(root, REGION.name, d))}


def daily(overrides) -> dict:
    end = START + timedelta(days=DAYS - 1)
    return daily_update(start=START.isoformat(), end=end.isoformat(), overrides=overrides)


def assert_archive_as_undisturbed(overrides, undisturbed, days):
    assert archive_bytes(overrides, days) == undisturbed
    root = archive_root(overrides)
    assert [d for d in days if day_problems(root, REGION.name, d)] == []  # each archived, its COG and item sound
    assert validate_stac(collection_path(root, REGION.name)) == []


def test_the_daily_run_writes_a_lost_item_again(world):
    overrides, undisturbed, days = world
    item = day_item_path(archive_root(overrides), REGION.name, days[-1])
    item.unlink()

    result = daily(overrides)

    actions = {r["file"]: r["action"] for r in result["archive_repairs"]}
    assert actions[str(item)] == "item written again from the COG's tags"
    assert result["archive_days"] == []  # the map was sound: nothing remapped
    assert_archive_as_undisturbed(overrides, undisturbed, days)


def test_the_daily_run_remaps_a_cog_cut_short(world):
    overrides, undisturbed, days = world
    cog = day_cog_path(archive_root(overrides), REGION.name, days[0])
    cog.write_bytes(cog.read_bytes()[: cog.stat().st_size // 2])

    result = daily(overrides)

    repairs = {r["file"]: r for r in result["archive_repairs"]}
    assert repairs[str(cog)]["action"] == "COG quarantined; the day is mapped again"
    note = json.loads(Path(repairs[str(cog)]["quarantined_as"] + ".json").read_text())
    # Cut in half, the file loses its tiles or (a small map with a long record of its inputs) part
    # of its header: either way the note names what is wrong.
    assert note["file"] == cog.name and ("read" in note["reason"] or "expected" in note["reason"])
    assert Path(note["quarantined_as"]).parent == Path(overrides["data_dir"]) / "quarantine" / "archive"
    assert [r["day"] for r in result["archive_days"]] == [days[0].isoformat()]
    assert_archive_as_undisturbed(overrides, undisturbed, days)


def test_a_truncated_cached_champion_is_fetched_again_and_the_day_maps(world, tracking_uri):
    overrides, undisturbed, days = world
    cache = next((Path(overrides["data_dir"]) / "models").glob("*/model.onnx"))
    cache.write_bytes(cache.read_bytes()[:1000])
    day_cog_path(archive_root(overrides), REGION.name, days[-1]).unlink()  # a day to map

    result = daily(overrides)

    assert [r["day"] for r in result["archive_days"]] == [days[-1].isoformat()]
    version = client_for(tracking_uri).get_model_version_by_alias(MODEL, "champion")
    assert file_digest(cache)[0] == version.tags[ONNX_SHA256_TAG]
    assert_archive_as_undisturbed(overrides, undisturbed, days)


def test_a_stale_only_backfill_repairs_the_window(world):
    """Only days made by another model are remapped by a stale-only backfill: a lost item is
    written again, a COG cut short is quarantined and remapped all the same."""
    overrides, undisturbed, days = world
    root = archive_root(overrides)
    item = day_item_path(root, REGION.name, days[-1])
    item.unlink()
    cog = day_cog_path(root, REGION.name, days[0])
    cog.write_bytes(b"II*\x00" + cog.read_bytes()[4:200])

    result = run_backfill(days[0].isoformat(), days[-1].isoformat(), stale_only=True,
                          overrides={**overrides, "task_runner": "thread", "backfill_workers": 1})

    actions = {(r["file"], r["action"]) for r in result["archive_repairs"]}
    assert (str(item), "item written again from the COG's tags") in actions
    assert (str(cog), "COG quarantined; the day is mapped again") in actions
    assert [r["day"] for r in result["days"]] == [days[0].isoformat()]
    assert_archive_as_undisturbed(overrides, undisturbed, days)
    shutil.rmtree(Path(overrides["data_dir"]) / "quarantine" / "archive")


def test_a_day_that_cannot_be_written_fails_the_run_but_not_the_other_days(world):
    """One archive day that cannot be published (here a directory squats on its COG's name, as a
    full disk or a permission error would stop it) fails the run, naming the day and the path;
    the other day of the look-back is still mapped, and the next run completes the archive."""
    from flows.daily import ArchiveDaysFailed

    overrides, undisturbed, days = world
    root = archive_root(overrides)
    for d in days:
        day_cog_path(root, REGION.name, d).unlink()
    squatter = day_cog_path(root, REGION.name, days[0])
    squatter.mkdir()
    (squatter / "keep").write_text("not a COG")

    with pytest.raises(ArchiveDaysFailed) as failed:
        daily(overrides)

    assert list(failed.value.unmapped) == [days[0].isoformat()]
    assert str(squatter) in str(failed.value)
    late = day_cog_path(root, REGION.name, days[-1])
    assert late.read_bytes() == undisturbed[str(late)]  # the other day went on
    assert not list(late.parent.glob(".*.tmp"))

    shutil.rmtree(squatter)
    result = daily(overrides)
    assert [r["day"] for r in result["archive_days"]] == [days[0].isoformat()]
    assert_archive_as_undisturbed(overrides, undisturbed, days)
    shutil.rmtree(Path(overrides["data_dir"]) / "quarantine" / "archive", ignore_errors=True)
