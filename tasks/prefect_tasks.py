"""The Prefect task wrappers of the nightly path (daily update, backfill, report): thin tasks over
the plain functions of `tasks/` (retries where I/O can fail), and `publish` for the artifacts a
flow's steps build. The functions themselves are tested without Prefect; flows compose these tasks.

The retrain's wrappers, whose functions import torch, are in `tasks/prefect_tasks_retrain.py`:
nothing imported here may import torch (import-linter contract `nightly-without-torch`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import date
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, ParamSpec, TypeVar
from uuid import UUID

from prefect import Task, task
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact, update_progress_artifact
from prefect.client.schemas.objects import TaskRun
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from prefect.cache_policies import NO_CACHE

from tasks.fusion.merge import GosatFit
from tasks.mapping import day as day_mapping
from tasks.mapping.champion import Champion
from tasks.samples import ingest
from tasks.samples.ingest import DayGridding
from tasks.analysis import report
from tasks.mapping.onnx_runtime import predictor_for_thread
from tasks.mapping.backfill_pool import DayDone, PoolPlan, map_days_in_processes, progress_line
from tasks.covariates.static import CovariateError, build_covariates
from tasks.gridding.geometry import Grid
from tasks.io.integrity import Logger
from tasks.io.progress import progress_bar
from tasks.settings import Settings
from tasks.sources import pull
from tasks.sources.pull import PullReport
from tasks.steps.artifacts import Artifact
from tasks.steps.backfill import with_model

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def unit(**options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Prefect's `task` with caching off: inputs are large arrays and settings objects, never
    hashed. A function, not functools.partial(task, ...): mypy reads such a partial as the
    decorator's first overload and loses every task's signature."""
    return task(cache_policy=NO_CACHE, **options)


# Per-granule retries live in the pull itself; this covers a crash of the pull as a whole.
@unit(name="pull-inputs", retries=1, retry_delay_seconds=60, retry_jitter_factor=0.5)
def pull_inputs(settings: Settings, start: date | None, end: date | None,
                products: tuple[str, ...] | None = None) -> PullReport:
    return pull(settings, products=products, start=start, end=end)


def _retry_unless_bad_input(_task: Task[..., Any], _task_run: TaskRun, state: State) -> bool:
    # A layer refused for its contents would be refused again; only I/O hiccups are worth a retry.
    return not isinstance(getattr(state, "data", None), CovariateError)


@unit(name="build-covariates", retries=1, retry_condition_fn=_retry_unless_bad_input)
def build_static_covariates(settings: Settings, grid: Grid,
                            set_aside: list[dict[str, Any]] | tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:
    """Grid the static layers and NDVI composites; the raw layers quarantined as unusable (rows
    as the daily run's). A bad NDVI composite holds back only its days; a bad static layer raises
    CovariateError naming it, with `.quarantined` set. `set_aside`: the pull's quarantined rows."""
    quarantined: list[dict[str, Any]] = []
    composites = [q for q in set_aside if q.get("product") == "static"]
    try:
        with progress_bar("static covariates", 1) as advance:
            build_covariates(settings.raw("static"), grid, settings.region_dir,
                             progress=lambda _s, done, total: advance(done * 1 // max(total, 1)),
                             quarantine_dir=settings.quarantine_dir,
                             manifest_path=settings.manifest_path,
                             set_aside=composites, quarantined=quarantined)
    except CovariateError as exc:
        exc.quarantined = quarantined
        raise
    from prefect import get_run_logger

    for q in quarantined:
        get_run_logger().warning("NDVI composite %s quarantined as %s: %s; only the days it feeds wait",
                                 q["file"], q["quarantined_as"], q["problem"])
    return quarantined


@unit(name="grid-day", retries=2, retry_delay_seconds=5)
def grid_day(settings: Settings, grid: Grid, day: date, granules: dict[str, list[Path]]) -> DayGridding:
    return ingest.grid_day(day, granules, grid, settings.region_dir, settings.quarantine_dir,
                           manifest_path=settings.manifest_path)


@unit(name="gosat-fit")
def current_gosat_fit(settings: Settings, grid: Grid) -> tuple[GosatFit, dict[str, Any] | None]:
    """The GOSAT -> OCO fit the daily update maps with: the stored one (fitted only when none is
    stored), refitted, with the sample days it fused re-fused, when the GOSAT days and their OCO
    it was made on have since grown or changed; (fit, the refit as a dict or None)."""
    fit, refit = ingest.gosat_fit_for_daily(settings.region_dir, settings.raw("era5"), grid)
    if refit is not None:
        get_run_logger().warning(
            "GOSAT fit %s was made on data that has since changed (%s): refitted as %s on %d collocations, "
            "%d sample days re-fused", refit.previous_fit_id, refit.why, fit.fit_id, fit.n_collocations,
            len(refit.rewritten))
    return fit, (refit.to_dict() if refit is not None else None)


@unit(name="refit-gosat-to-oco")
def refit_gosat(settings: Settings, grid: Grid) -> dict[str, Any]:
    """At retrain: refit GOSAT -> OCO on every gridded day and re-fuse the sample days it changes."""
    return ingest.refit_gosat_and_refuse(settings.region_dir, settings.raw("era5"), grid).to_dict()


@unit(name="update-samples", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_bad_input)
def update_samples(settings: Settings, grid: Grid, day: date, fit: GosatFit) -> int:
    return ingest.sample_day(settings.region_dir, settings.raw("era5"), grid, day, fit)


@unit(name="check-state")
def check_state(settings: Settings, grid: Grid) -> list[dict[str, Any]]:
    """Damaged derived state set aside and recomputed, dead writers' temp files removed (what was found)."""
    from prefect import get_run_logger

    from tasks.steps.state_check import check_state as check

    return [f.to_dict() for f in check(settings, grid, logger=get_run_logger())]


# The mapping of a day is a plain function (tasks/mapping/day.py); this is its task.
map_day = unit(name="map-day", retries=1)(day_mapping.map_day)



def publish(artifacts: list[Artifact]) -> None:
    """Create each artifact (tables and Markdown pages built by tasks/steps) in the current run."""
    for a in artifacts:
        if a.table is not None:
            create_table_artifact(key=a.key, table=a.table, description=a.description)
        else:
            create_markdown_artifact(key=a.key, markdown=a.markdown or "", description=a.description)


# The backfill's tasks (flows/backfill.py). A day task is self-contained so that Dask can ship it.
@task(name="backfill-day", task_run_name="backfill-{day}", cache_policy=NO_CACHE, retries=1)
def backfill_day(settings: Settings, grid: Grid, day: date, champion: Champion) -> dict[str, Any]:
    """Map one day onto the archive (replacing it); runs in any worker process."""
    predictor = predictor_for_thread(champion.onnx_path)  # neither picklable nor thread-safe
    row = day_mapping.map_day(settings, grid, day, predictor, champion)
    return {**row, "model_name": champion.name, "model_version": str(champion.version),
            "provider": predictor.provider, "worker": f"{socket.gethostname()}:{os.getpid()}"}


class BackfillProgress:
    """Days/hour and an ETA as the days finish: a printed line, a rich bar, the progress artifact."""

    def __init__(self, todo: list[date], progress_id: UUID, label: str, logger: Logger) -> None:
        self.total, self.progress_id, self.label, self.logger = len(todo), progress_id, label, logger
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), transient=False)
        self.bar_task = self.bar.add_task(label, total=self.total)

    def __enter__(self) -> "BackfillProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def day_done(self, day: date, problem: str | None) -> None:
        self.done += 1
        if problem is not None:
            self.failed += 1
            self.logger.error("backfill of %s failed: %s", day, problem)
        line = progress_line(self.done, self.total, self.failed, time.perf_counter() - self.t0, day)
        self.logger.info(line)
        self.bar.update(self.bar_task, completed=self.done, description=line)
        update_progress_artifact(artifact_id=self.progress_id, progress=100.0 * self.done / max(self.total, 1),
                                 description=f"{self.label}: {line}")


def collect_days(futures: Sequence[PrefectFuture[dict[str, Any]]], todo: list[date],
                 progress: BackfillProgress) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Wait for the day tasks as they finish, reporting progress; (rows, failures)."""
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    day_of = {f.task_run_id: d for f, d in zip(futures, todo)}
    for future in as_completed(list(futures)):
        day = day_of[future.task_run_id]
        try:
            rows.append(future.result())
        except Exception as exc:  # noqa: BLE001 - one bad day must not hide the others
            failed[day.isoformat()] = f"{type(exc).__name__}: {exc}"
        progress.day_done(day, failed.get(day.isoformat()))
    return sorted(rows, key=lambda r: r["day"]), failed


@task(name="backfill-days-in-processes", cache_policy=NO_CACHE)
def backfill_days_in_processes(settings: Settings, grid: Grid, todo: list[date], champion: Champion,
                               progress: BackfillProgress) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Map the days in worker processes (tasks/mapping/backfill_pool.py); (rows, failures)."""
    plan = PoolPlan.for_days(len(todo), settings.backfill_workers)
    get_run_logger().info("%d worker processes, %d ONNX Runtime threads each", plan.workers, plan.threads_per_worker)

    def done(d: DayDone) -> None:
        progress.day_done(d.day, d.problem)

    rows, failed = map_days_in_processes(settings, grid, todo, champion, workers=settings.backfill_workers,
                                         on_done=done)
    return with_model(rows, champion.name, champion.version), failed


# The archive report's tasks (flows/report.py).
@unit(name="report-select-days")
def report_select_days(archive_root: Path, region_name: str, first: date, last: date) -> list[date]:
    return report.select_days(archive_root, region_name, first, last)


@unit(name="report-scan-archive")
def report_scan_and_map(archive_root: Path, region_name: str, grid: Grid, days: list[date], out_dir: Path,
                        area: report.ReportArea | None = None) -> tuple[list[report.DayStat], list[report.MapInfo]]:
    return report.scan_and_map(archive_root, region_name, grid, days, out_dir, area)


@unit(name="report-summarise")
def report_summarise(daily: list[report.DayStat]) -> dict[str, Any]:
    return report.summarise(daily)


@unit(name="report-write-outputs")
def report_write_outputs(out_dir: Path, tables: dict[str, Any], maps: list[report.MapInfo],
                         context: dict[str, Any]) -> dict[str, Any]:
    return report.write_outputs(out_dir, tables, maps, context)
