"""`xco2 demo`: the whole system on the embedded demo world, no credentials and no network.

The demo world is written (or reused), then the flows run as in production: a daily update
(samples), the monthly retrain, a daily update again (the archive), and the archive is scored
against the world's truth. Its steps are tasks/steps/demo.py.
"""

from __future__ import annotations

from flows.daily import daily_update
from flows.retrain import monthly_retrain
from tasks.analysis.accuracy import accuracy_against_truth
from tasks.archive import archived_days
from tasks.gridding.geometry import Grid
from tasks.io.progress import Stopwatch, progress_bar
from tasks.settings import load_settings
from tasks.steps.demo import (SMALL_REGION, DemoDataDirError, DemoOptions, clear_previous_demo, demo_overrides,
                              demo_summary, record_demo_data_dir, world_matches, world_wanted)

# The names tests and the CLI import from here.
_clear_previous_demo = clear_previous_demo
__all__ = ["SMALL_REGION", "DemoDataDirError", "DemoOptions", "run_demo"]


def run_demo(opts: DemoOptions) -> dict:
    from demo_world import truth_for_day, write_demo_world

    timings = Stopwatch()
    overrides = demo_overrides(opts)
    settings = load_settings(**overrides)
    grid = Grid.for_region(settings.region, settings.grid_step)
    root = settings.data_dir / "demo"

    with timings.step("demo_world_s"):
        if not world_matches(root / "world.json", world_wanted(settings, opts)):
            clear_previous_demo(settings)
            with progress_bar("demo world", 100) as advance:
                write_demo_world(root, settings.region, opts.start, opts.end, grid_step=settings.grid_step,
                                 seed=opts.seed, dense=opts.small,
                                 progress=lambda _s, done, total: advance(int(100 * done / max(total, 1))))
        record_demo_data_dir(settings, opts, overrides)  # every run: a world kept from an older demo has none yet
    with timings.step("daily_ingest_s"):
        first = daily_update(start=opts.start.isoformat(), end=opts.end.isoformat(), overrides=overrides)
    with timings.step("retrain_s"):
        retrain = monthly_retrain(overrides=overrides)
    with timings.step("daily_archive_s"):
        daily_update(start=opts.start.isoformat(), end=opts.end.isoformat(), overrides=overrides)

    # Every archived day of the window, including those an earlier `xco2 demo` already wrote.
    days = [d for d in archived_days(settings.archive_root, settings.region.name) if opts.start <= d <= opts.end]
    accuracy = accuracy_against_truth(settings.archive_root, settings.region.name, settings.region_dir, grid,
                                      lambda d: truth_for_day(root, d), days) if days else None
    timings.total()
    return demo_summary(settings, grid, opts, first, retrain, days, accuracy, timings)
