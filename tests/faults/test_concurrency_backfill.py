"""Issue 10, case 2 and issue 12, item 4: `xco2 backfill` of 7 days with its default settings
(worker processes, one per core) maps the same COG and STAC item bytes as one worker, and so do 4
threads.

Each day task reads its ERA5 files (two per day) with netCDF4; with two threads this crashed the
process (SIGBUS in libhdf5) on every try, and the existing backfill test used a single worker.
Slow: the demo world with a champion takes minutes on two CPU cores; the fast guard of the lock is
tests/faults/test_concurrency_readers.py.
"""

from __future__ import annotations

from datetime import date

import pytest

from flows.backfill import run_backfill
from flows.demo import SMALL_REGION
from tasks.archive import collection_path, day_cog_path, validate_cog, validate_stac
from tasks.archive.layout import day_item_path
from tasks.gridding.geometry import Grid
from tasks.settings import Settings, load_settings

DAYS = [f"2020-06-{d:02d}" for d in range(2, 9)]
MODEL = "concurrency-resnet-lstm"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(small_world_with_champion):
    """A 9-day demo world over the small region with a champion (tests/conftest.py)."""
    return small_world_with_champion("concurrency", days=9, model=MODEL)


def _backfill(world, name: str, **workers) -> tuple[dict, dict[str, bytes]]:
    """(result, {day: COG bytes + STAC item bytes})."""
    root, base = world
    archive = root / f"archive-{name}"
    result = run_backfill(DAYS[0], DAYS[-1], overrides={**base, "archive_dir": str(archive), **workers})
    assert [r["day"] for r in result["days"]] == DAYS, result
    grid = Grid.for_region(SMALL_REGION, 0.01)
    cogs = {}
    for day in DAYS:
        path = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(day))
        assert validate_cog(path, grid) == [], f"{name}: {path}"
        cogs[day] = path.read_bytes() + day_item_path(archive, SMALL_REGION.name, date.fromisoformat(day)).read_bytes()
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []
    return result, cogs


@pytest.fixture(scope="module")
def one_worker(world):
    result, cogs = _backfill(world, "one-worker", backfill_workers=1)
    assert result["task_runner"] == "process" and len({r["worker"] for r in result["days"]}) == 1
    return cogs


def test_default_workers_map_the_same_bytes_as_one_worker(world, one_worker):
    from tasks.mapping.backfill_pool import PoolPlan

    settings = load_settings(**world[1])  # no override below: the defaults
    assert settings.task_runner == Settings.model_fields["task_runner"].default == "process"
    assert settings.backfill_workers is None
    workers = PoolPlan.for_days(len(DAYS)).workers
    result, cogs = _backfill(world, "default-workers")
    assert result["task_runner"] == "process"
    assert len({r["worker"] for r in result["days"]}) == workers  # each worker is handed a day as it starts
    for day in DAYS:
        assert cogs[day] == one_worker[day], f"{day}: {workers} worker processes wrote other bytes than one"


def test_four_threads_map_the_same_bytes_as_one_worker(world, one_worker):
    _, cogs = _backfill(world, "four-threads", task_runner="thread", backfill_workers=4)
    for day in DAYS:
        assert cogs[day] == one_worker[day], f"{day}: four threads wrote other bytes than one"
