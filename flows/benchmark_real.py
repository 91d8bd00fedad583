"""`xco2 benchmark real`: the whole system on REAL OCO-2 values, scored at cell-days it never saw.

One box x window per run (docs/benchmark-real.md):
1. read the table of retrievals (day, lon, lat, xco2_ppm), keep the box and window, drop values
   the readers' plausible range refuses and the few failed retrievals left inside it;
2. hold out whole spatial blocks and whole days (tasks/analysis/real_benchmark.py): those rows are never
   written anywhere the system reads;
3. write the training rows as real-format OCO-2 Lite files (one per day; each bin one good
   sounding at its centre) and uninformative covariates (constant static layers, NDVI and ERA5)
   in the formats the readers accept, into a fresh folder;
4. run the system in local mode on it: daily (pull, grid, fuse, sample) -> retrain -> backfill of
   every day of the window, through the flows' public functions only;
5. score the archive's COGs at the held-out cell-days beside baselines fitted on the same rows;
   check the two intervals' noise against same-day neighbouring bins and draw their reliability;
6. write a Markdown table, a JSON of every number and the figures, and log them to MLflow
   (experiment `xco2-benchmark-real`).

Each step is a function of tasks/analysis/real_benchmark_io.py (inputs, outputs) or
tasks/analysis/real_benchmark.py (split, scores); this module runs them and the flows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.analysis import real_benchmark as rb
from models.retrieval_noise import noise_consistency
from tasks.analysis import reliability as rel
from tasks.analysis.real_benchmark_io import (ARCHIVE_BANDS, DEFAULT_BOXES, DEFAULT_TABLE, EXPERIMENT,
                                              RELIABILITY_PNG, SOUNDING_UNCERTAINTY_PPM, BenchmarkBox,
                                              BenchmarkInputError, BenchmarkOptions, figure, lite_soundings,
                                              parse_box, read_retrievals, reliability_curves, reliability_figure,
                                              select_box, system_overrides, write_constant_covariates,
                                              write_lite_files, write_text)
from tasks.io.progress import Stopwatch

__all__ = ["DEFAULT_BOXES", "DEFAULT_TABLE", "SOUNDING_UNCERTAINTY_PPM", "BenchmarkBox", "BenchmarkInputError",
           "BenchmarkOptions", "benchmark_tracking_uri", "lite_soundings", "parse_box", "read_retrievals",
           "run_benchmark", "run_system", "select_box", "write_combined", "write_constant_covariates",
           "write_lite_files"]


def run_system(overrides: dict, box: BenchmarkBox) -> dict:
    """daily (pull, grid, fuse, sample) -> retrain -> backfill of every day, as flows/demo.py does."""
    from flows.backfill import run_backfill
    from flows.daily import daily_update
    from flows.retrain import monthly_retrain

    timings = Stopwatch()
    with timings.step("daily_s"):
        daily = daily_update(start=box.start.isoformat(), end=box.end.isoformat(), overrides=overrides)
    with timings.step("retrain_s"):
        retrain = monthly_retrain(overrides=overrides)
    with timings.step("backfill_s"):
        backfill = run_backfill(box.start.isoformat(), box.end.isoformat(), overrides=overrides)
    # .get throughout: the flows' summaries may grow or change; the archive is what gets scored.
    return {"samples": int(sum(r.get("samples", 0) for r in daily.get("days", []))),
            "quarantined": len(daily.get("quarantined", [])),
            "model_version": retrain.get("version"), "retrain_metrics": retrain.get("metrics"),
            "uncertainty": retrain.get("uncertainty"),
            # The interval's parameters (noise, scales): what the implied noise is made of.
            "residual_field": retrain.get("residual_field"), "backfill": {k: v for k, v in backfill.items()
                                                                      if isinstance(v, (int, float, str))},
            "timings": dict(timings)}


def log_to_mlflow(tracking_uri: str, box: BenchmarkBox, opts: BenchmarkOptions, result: dict,
                  files: list[Path]) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    from registry.tracking import ensure_experiment

    mlflow.set_tracking_uri(tracking_uri)
    # Created with its artifacts beside the tracking DB: mlflow.set_experiment alone would put
    # them in ./mlruns of whatever directory the benchmark was started from.
    mlflow.set_experiment(experiment_id=ensure_experiment(MlflowClient(tracking_uri), EXPERIMENT, tracking_uri))
    with mlflow.start_run(run_name=box.label) as run:
        mlflow.log_params({"box": box.name, "west": box.west, "south": box.south, "east": box.east,
                           "north": box.north, "start": box.start.isoformat(), "end": box.end.isoformat(),
                           **{f"split_{k}": v for k, v in asdict(opts.split).items()},
                           "grid_step": opts.grid_step, "max_epochs": opts.max_epochs,
                           "max_training_samples": opts.max_training_samples, "seed": opts.seed})
        metrics = {}
        for method, row in result["table"].items():
            key = method.replace(" ", "_").replace("+", "plus").replace("(", "").replace(")", "")
            for h, s in row.items():
                for m in ("rmse", "r2", "bias", "n", "coverage68", "coverage68_low", "coverage68_high"):
                    if s.get(m) is not None and np.isfinite(s[m]):
                        metrics[f"{key}.{h}.{m}"] = float(s[m])
        noise = result.get("noise") or {}
        for name, value in (("noise.implied_ppm2", noise.get("implied", {}).get("variance")),
                            ("noise.neighbours_ppm2", noise.get("neighbours", {}).get("variance")),
                            ("noise.ratio", noise.get("ratio"))):
            if value is not None and np.isfinite(value):
                metrics[name] = float(value)
        mlflow.log_metrics(metrics)
        for f in files:
            mlflow.log_artifact(str(f))
        return run.info.run_id


def run_benchmark(opts: BenchmarkOptions, box: BenchmarkBox, table: pd.DataFrame | None = None,
                  log: Callable[[str], object] = print) -> dict:
    """One box x window: split, write, run, score, report. Returns the result (also result.json)."""
    from tasks.archive import day_cog_path
    from tasks.settings import Region, load_settings

    t0 = time.perf_counter()
    df = read_retrievals(opts.table) if table is None else table
    rows, counts = select_box(df, box)
    if rows.empty:
        raise BenchmarkInputError(f"{opts.table}: no retrievals in {box.label} {box.bounds}")
    rows["holdout"] = rb.split_holdouts(rows, box.bounds, box.start, box.end, opts.split).to_numpy()
    train = rows[rows["holdout"] == "train"].reset_index(drop=True)
    held = {h: rows[rows["holdout"] == h].reset_index(drop=True) for h in rb.HOLDOUTS}
    counts.update({"train": len(train), **{f"held_{h}": len(v) for h, v in held.items()},
                   "train_days": int(train["day"].nunique())})
    log(f"{box.label}: {counts}")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    run_dir = Path(opts.out_root) / f"{box.name}_{box.start:%Y%m%d}_{box.end:%Y%m%d}_{stamp}"
    inputs = run_dir / "inputs"
    overrides = system_overrides(opts, box, run_dir)
    settings = load_settings(**overrides)  # a bad option stops here, before anything is written
    region = Region(**overrides["region"])
    t = time.perf_counter()
    write_lite_files(train, inputs / "remote" / "oco2")
    write_constant_covariates(inputs, region, box.start, box.end, opts.grid_step)
    timings = {"write_inputs_s": round(time.perf_counter() - t, 1)}

    system = run_system(overrides, box)
    timings.update(system.pop("timings"))

    archive = {h: rb.archive_at(held[h], lambda d: day_cog_path(settings.archive_root, region.name, d),
                                ARCHIVE_BANDS) for h in rb.HOLDOUTS}
    result_table = rb.benchmark_table(train, held, archive, box.start, opts.seed)
    verdict = rb.goal_verdict(result_table)
    # Every row of the box and window, held out or not: the neighbour estimate uses no model.
    noise = noise_consistency(archive, rows, seed=opts.seed)
    curves = reliability_curves(held, archive, noise["neighbours"]["variance"])
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    result = {"box": {**asdict(box), "start": box.start.isoformat(), "end": box.end.isoformat()},
              "split": asdict(opts.split), "grid_step": opts.grid_step,
              "settings": {k: v for k, v in overrides.items() if k not in ("data_dir", "local_dir")},
              "counts": counts, "system": system, "table": result_table, "goal": verdict, "noise": noise,
              "reliability": [c.to_dict() for c in curves], "timings": timings, "run_dir": str(run_dir)}
    reliability_png = reliability_figure(curves, run_dir / RELIABILITY_PNG, box.label)
    md = box_markdown(box.label, result_table, noise, curves, reliability_png.name)
    files = [write_text(run_dir / "table.md", md),
             write_text(run_dir / "result.json", json.dumps(result, indent=2, default=str)),
             figure(result_table, held, archive, run_dir / "benchmark.png", box.label), reliability_png]
    result["mlflow_run_id"] = log_to_mlflow(benchmark_tracking_uri(opts), box, opts, result, files)
    return result


def box_markdown(label: str, table: dict, noise: dict, curves: list[rel.Reliability], reliability_png: str) -> str:
    """table.md of one box: the scores, the noise check and the reliability of both intervals."""
    return (rb.markdown_table({label: table})
            + "\nRetrieval noise variance: implied by the intervals (retrieval half-width^2 - true-column "
              "half-width^2, mean over held-out values) and from same-day neighbouring bins (read at their 68 % "
              "quantile; it misses the noise neighbours share along a track):\n\n"
            + rb.noise_markdown({label: noise})
            + "\nReliability (observed coverage at nominal levels, Gaussian scaling of each 68 % half-width):\n\n"
            + rel.markdown_table(curves) + f"\n![reliability]({reliability_png})\n")


def benchmark_tracking_uri(opts: BenchmarkOptions) -> str:
    """One MLflow store for every benchmark run under out_root, so runs compare side by side."""
    root = Path(opts.out_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def write_combined(out_root: Path, markdown: str, results: dict) -> Path:
    """The combined table of several boxes (Markdown) and their numbers (JSON) under out_root."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = write_text(Path(out_root) / f"combined_{stamp}.md", markdown)
    write_text(path.with_suffix(".json"), json.dumps(results, indent=2, default=str))
    return path
