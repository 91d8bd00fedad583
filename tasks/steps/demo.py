"""The demo's steps (flows/demo.py, `xco2 demo`): its options and settings, whether the demo world
on disk is the one asked for, clearing what an older world left, and the run's summary."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tasks.analysis.reliability import level_label
from tasks.gridding.geometry import Grid
from tasks.regions.boundary import SHIPPED_BOUNDARIES
from tasks.settings import DATA_DIR_RECORD, Region, Settings, write_data_dir_record

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)


def world_matches(world_json: Path, wanted: Mapping[str, Any]) -> bool:
    try:
        have = json.loads(world_json.read_text())
    except (OSError, ValueError):
        return False
    return all(str(have.get(k)) == str(v) for k, v in wanted.items())


class DemoDataDirError(RuntimeError):
    pass


def clear_previous_demo(settings: Settings) -> None:
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
    if old_world and (data / DATA_DIR_RECORD).is_file():
        present.append(DATA_DIR_RECORD)
    if old_world and settings.mlflow_tracking_uri is None:
        present += [name for name in ("mlartifacts", "mlflow.db") if (data / name).exists()]
    for name in present:
        path = data / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def demo_overrides(opts: DemoOptions) -> dict[str, Any]:
    """The settings of a demo run (source `demo`, the CPU-sized training and comparison)."""
    overrides: dict[str, Any] = {
        "data_dir": str(opts.data_dir), "source": "demo", "max_epochs": opts.max_epochs,
        "max_training_samples": opts.max_training_samples,
        "max_validation_samples": opts.max_validation_samples, "archive_lookback_days": opts.archive_days,
        "seed": opts.seed % (2**31),
        # A CPU-sized comparison: 3 folds, 6000 rows and 6 epochs per fit (production: 5, 20000, 20).
        **({"comparison_folds": 3, "comparison_max_train_samples": 6000, "comparison_max_epochs": 6}
           if opts.compare else {"comparison_protocols": []}),
        **opts.extra,
    }
    # Always a region: a data dir the demo made before records its own, which must not be reused here.
    overrides.setdefault("region", (SMALL_REGION if opts.small else Region()).model_dump())
    return overrides


# The demo's settings that say what its data dir is for; the look-back is the demo's own run's.
NOT_RECORDED = ("data_dir", "archive_lookback_days")


def record_demo_data_dir(settings: Settings, opts: DemoOptions, overrides: Mapping[str, Any]) -> Path:
    """Record in the data dir (tasks/settings.py, DATA_DIR_RECORD) the region, source and CPU-sized
    training the demo made it with, so that `xco2 daily`, the stack's deployments and every other
    command map the demo's region from its sources with no settings of their own."""
    values = {k: v for k, v in overrides.items() if k not in NOT_RECORDED}
    values["region"] = settings.region.model_dump()
    values["today"] = opts.end  # the world's clock: it has no data after its last day
    return write_data_dir_record(settings.data_dir, values, "`xco2 demo`")


def world_wanted(settings: Settings, opts: DemoOptions) -> dict[str, Any]:
    """What world.json must say for the demo world on disk to be reused."""
    return {"region": settings.region.name, "start": opts.start.isoformat(), "end": opts.end.isoformat(),
            "seed": opts.seed}


TRUE_COLUMN_CURVE = "true column vs truth, "


def true_column_vs_truth(reliability: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """holdout -> the true column's 68% coverage of the truth from the retrain's reliability curves
    ({"coverage": float, "range": the coverage's chance range over the holdout's days or blocks,
    CoverageRange.to_dict, or None}), None where it was not scored."""
    out: dict[str, dict[str, Any] | None] = {}
    for curve in reliability:
        if str(curve.get("name", "")).startswith(TRUE_COLUMN_CURVE):
            coverage = curve.get("coverage", {}).get(level_label(0.6827))
            out[curve["name"][len(TRUE_COLUMN_CURVE):]] = (None if coverage is None else
                                                           {"coverage": coverage, "range": curve.get("range68")})
    return out


def demo_summary(settings: Settings, grid: Grid, opts: DemoOptions, first: Mapping[str, Any],
                 retrain: Mapping[str, Any], days: list[date], accuracy: dict[str, Any] | None,
                 timings: Mapping[str, float]) -> dict[str, Any]:
    """What run_demo returns (and `xco2 demo` prints): the window, samples, model, scores, timings."""
    return {
        "region": settings.region.model_dump(), "grid": {"nx": grid.nx, "ny": grid.ny, "step": grid.step},
        "window": [opts.start.isoformat(), opts.end.isoformat()],
        "samples_days": len(first["days"]), "samples": sum(r["samples"] for r in first["days"]),
        "gosat_fit": first["gosat_fit"],
        "archive_root": str(settings.archive_root / settings.region.name),
        "archive_days": [d.isoformat() for d in days],
        "model": {"name": settings.registered_model_name, "version": retrain["version"], "alias": retrain["alias"],
                  "epochs": retrain["epochs"], "best_epoch": retrain["best_epoch"],
                  "onnx_parity_max_abs_ppm": retrain["onnx_parity_max_abs_ppm"],
                  # Whether the maps use the network at all (share 0: background + daily-anomaly field).
                  "network_share": retrain["network_share"]},
        "validation": retrain["metrics"],
        "spatial_validation": retrain["spatial_metrics"], "promotion_holdout": retrain["promotion_holdout"],
        "holdouts": retrain["holdouts"], "uncertainty": retrain["uncertainty"], "comparison": retrain["comparison"],
        "truth_accuracy": accuracy,
        # The true column's 68% interval (COG band 3) against the truth on the scoring halves of
        # held-out blocks and days (the retrain's reliability, models/holdouts.py::map_true_column).
        "true_column_vs_truth": true_column_vs_truth(retrain.get("reliability") or []),
        "timings": dict(timings),
        "tracking_uri": settings.tracking_uri,
    }
