"""Issue 10, case 2: `xco2 backfill` with its default workers (and with 4) maps the same bytes as
with one.

Each day task reads its ERA5 files (two per day) with netCDF4; with two threads this crashed the
process (SIGBUS in libhdf5) on every try, and the existing backfill test used a single worker.
Slow: the demo world with a champion takes minutes on two CPU cores; the fast guard of the lock is
tests/faults/test_concurrency_readers.py.
"""

from __future__ import annotations

from datetime import date

import pytest

from flows.backfill import run_backfill
from flows.demo import SMALL_REGION, DemoOptions, run_demo
from tasks.archive import collection_path, day_cog_path, validate_cog, validate_stac
from tasks.grid import Grid
from tasks.settings import Settings, load_settings

DAYS = ["2020-06-02", "2020-06-03", "2020-06-04", "2020-06-05"]
MODEL = "concurrency-resnet-lstm"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(prefect_harness, tracking_uri, tmp_path_factory):
    """A 6-day demo world over the small region with a champion (one short retrain)."""
    root = tmp_path_factory.mktemp("concurrency")
    opts = DemoOptions(data_dir=root / "xco2-data", start=date(2020, 6, 1), days=6, archive_days=1, max_epochs=2,
                       max_training_samples=2000, max_validation_samples=500, small=True,
                       extra={"mlflow_tracking_uri": tracking_uri, "registered_model_name": MODEL})
    run_demo(opts)
    base = {"data_dir": str(opts.data_dir), "source": "demo", "region": SMALL_REGION.model_dump(),
            "anchor_max_cells_per_day": 200, "task_runner": "thread", **opts.extra}
    return root, base


def _backfill(world, name: str, **workers) -> tuple[dict, dict[str, bytes]]:
    root, base = world
    archive = root / f"archive-{name}"
    result = run_backfill(DAYS[0], DAYS[-1], overrides={**base, "archive_dir": str(archive), **workers})
    assert [r["day"] for r in result["days"]] == DAYS, result
    grid = Grid.for_region(SMALL_REGION, 0.01)
    cogs = {}
    for day in DAYS:
        path = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(day))
        assert validate_cog(path, grid) == [], f"{name}: {path}"
        cogs[day] = path.read_bytes()
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []
    return result, cogs


@pytest.fixture(scope="module")
def one_worker(world):
    return _backfill(world, "one-worker", backfill_workers=1)[1]


def test_default_workers_map_the_same_bytes_as_one_worker(world, one_worker):
    default = Settings.model_fields["backfill_workers"].default
    assert default >= 2 and load_settings(**world[1]).backfill_workers == default  # no override below
    result, cogs = _backfill(world, "default-workers")
    assert result["task_runner"] == "thread"
    for day in DAYS:
        assert cogs[day] == one_worker[day], f"{day}: {default} workers wrote other bytes than one"


def test_four_workers_map_the_same_bytes_as_one_worker(world, one_worker):
    _, cogs = _backfill(world, "four-workers", backfill_workers=4)
    for day in DAYS:
        assert cogs[day] == one_worker[day], f"{day}: four workers wrote other bytes than one"
