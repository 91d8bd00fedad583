"""`xco2 demo`: the whole system on the embedded demo world, no credentials and no network."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from flows.daily import daily_update
from flows.retrain import monthly_retrain
from tasks.archive import archived_days
from tasks.grid import Grid
from tasks.progress import progress_bar
from tasks.regions.boundary import SHIPPED_BOUNDARIES
from tasks.settings import Region, load_settings
from tasks.truth import accuracy_against_truth

# A 0.5 x 0.5 degree box for quick runs (`--small`, `make demo`) that crosses Sichuan's border into
# Chongqing (about two thirds of its cells in Sichuan, around Suining and Nanchong; Tongnan and
# Hechuan to the south), with the shipped Sichuan boundary: its maps are nodata outside the province
# and its reports average over the province's cells, as the full Sichuan region's are.
SMALL_REGION = Region(name="sichuan-chongqing", west=105.70, south=30.20, east=106.20, north=30.70,
                      boundary=str(SHIPPED_BOUNDARIES["sichuan"]))


@dataclass
class DemoOptions:
    data_dir: Path = Path("xco2-data")
    start: date = date(2020, 6, 1)
    days: int = 40
    archive_days: int = 1
    max_epochs: int = 8
    max_training_samples: int = 16000
    max_validation_samples: int = 5000
    small: bool = False
    # The model comparison (3 models x 3 protocols) of the retrain; on a CPU it doubles the demo.
    compare: bool = False
    seed: int = 20200601
    extra: dict = field(default_factory=dict)

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)


def _world_matches(world_json: Path, wanted: dict) -> bool:
    try:
        have = json.loads(world_json.read_text())
    except (OSError, ValueError):
        return False
    return all(str(have.get(k)) == str(v) for k, v in wanted.items())


class DemoDataDirError(RuntimeError):
    pass


def _clear_previous_demo(settings) -> None:
    """A new demo world invalidates everything derived from the old one (same file names, new content)."""
    data = settings.data_dir
    derived = ["raw", "regions", "archive", "quarantine", "models"]
    present = [name for name in derived if (data / name).exists()]
    old_world = (data / "demo" / "world.json").is_file()
    if present and not old_world:
        raise DemoDataDirError(
            f"{data} holds data that the demo did not make ({', '.join(present)}); "
            "run the demo with another --data-dir")
    # The registry goes with an old demo world only when it is the local store. A registry the
    # running stack serves (`make up`: this very mlflow.db) keeps its history, and one made
    # before any demo world (the stack's, on a fresh data dir) is recorded into, not deleted.
    if old_world and settings.mlflow_tracking_uri is None:
        present += [name for name in ("mlartifacts", "mlflow.db") if (data / name).exists()]
    for name in present:
        path = data / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_demo(opts: DemoOptions) -> dict:
    from tasks.demo_world import truth_for_day, write_demo_world

    t0 = time.perf_counter()
    overrides = {
        "data_dir": str(opts.data_dir), "source": "demo", "max_epochs": opts.max_epochs,
        "max_training_samples": opts.max_training_samples,
        "max_validation_samples": opts.max_validation_samples, "archive_lookback_days": opts.archive_days,
        "seed": opts.seed % (2**31),
        # A CPU-sized comparison: 3 folds, 6000 rows and 6 epochs per fit (production: 5, 20000, 20).
        **({"comparison_folds": 3, "comparison_max_train_samples": 6000, "comparison_max_epochs": 6}
           if opts.compare else {"comparison_protocols": []}),
        **opts.extra,
    }
    if opts.small:
        overrides["region"] = SMALL_REGION.model_dump()
    settings = load_settings(**overrides)
    grid = Grid.for_region(settings.region, settings.grid_step)
    root = settings.data_dir / "demo"

    wanted = {"region": settings.region.name, "start": opts.start.isoformat(), "end": opts.end.isoformat(),
              "seed": opts.seed}
    timings = {}
    if not _world_matches(root / "world.json", wanted):
        _clear_previous_demo(settings)
        with progress_bar("demo world", 100) as advance:
            write_demo_world(root, settings.region, opts.start, opts.end, grid_step=settings.grid_step,
                             seed=opts.seed, dense=opts.small,
                             progress=lambda _s, done, total: advance(int(100 * done / max(total, 1))))
    timings["demo_world_s"] = round(time.perf_counter() - t0, 1)

    t = time.perf_counter()
    first = daily_update(start=opts.start.isoformat(), end=opts.end.isoformat(), overrides=overrides)
    timings["daily_ingest_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    retrain = monthly_retrain(overrides=overrides)
    timings["retrain_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    daily_update(start=opts.start.isoformat(), end=opts.end.isoformat(), overrides=overrides)
    timings["daily_archive_s"] = round(time.perf_counter() - t, 1)

    # Every archived day of the window, including those an earlier `xco2 demo` already wrote.
    days = [d for d in archived_days(settings.archive_root, settings.region.name) if opts.start <= d <= opts.end]
    accuracy = accuracy_against_truth(settings.archive_root, settings.region.name, settings.region_dir, grid,
                                      lambda d: truth_for_day(root, d), days) if days else None
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    return {
        "region": settings.region.model_dump(), "grid": {"nx": grid.nx, "ny": grid.ny, "step": grid.step},
        "window": [opts.start.isoformat(), opts.end.isoformat()],
        "samples_days": len(first["days"]), "samples": sum(r["samples"] for r in first["days"]),
        "gosat_fit": first["gosat_fit"],
        "archive_root": str(settings.archive_root / settings.region.name),
        "archive_days": [d.isoformat() for d in days],
        "model": {"name": settings.registered_model_name, "version": retrain["version"], "alias": retrain["alias"],
                  "epochs": retrain["epochs"], "best_epoch": retrain["best_epoch"],
                  "onnx_parity_max_abs_ppm": retrain["onnx_parity_max_abs_ppm"]},
        "validation": retrain["metrics"],
        "spatial_validation": retrain["spatial_metrics"], "promotion_holdout": retrain["promotion_holdout"],
        "holdouts": retrain["holdouts"], "uncertainty": retrain["uncertainty"], "comparison": retrain["comparison"],
        "truth_accuracy": accuracy,
        "timings": timings,
        "tracking_uri": settings.tracking_uri,
    }
