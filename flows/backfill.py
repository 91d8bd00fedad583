"""Backfill: (re)map every day of a window onto the archive with the champion model.

    run_backfill("2020-06-01", "2020-06-30")                 # honours settings.task_runner
    run_backfill(..., overrides={"task_runner": "dask", "dask_address": "tcp://10.0.0.5:8786"})

By default (`task_runner="process"`) the days are mapped by worker processes on this machine,
one per core (`backfill_workers`), each with its share of the cores as ONNX Runtime threads and
the days pipelined across them: tasks/archive/backfill_pool.py, under one thin task here. As the
days finish the run prints a line with days/hour and an ETA, a rich bar moves, and the progress
artifact follows.

The other runners map one Prefect task per day: a thread pool (`task_runner="thread"`,
`backfill_workers` threads) or Dask (`task_runner="dask"`: the scheduler at `dask_address`, else
a local cluster of `dask_workers` single-threaded processes; to use more than one machine).
A flow's task runner is fixed when it is decorated, so `run_backfill` builds the runner from
the settings and calls `backfill.with_options(task_runner=...)`: the flow run's own runner is
then the one the settings ask for. The bare `backfill` flow (a deployment's entrypoint, a direct
call) finds its decorated thread pool instead and starts the wanted runner inside the run.

Each day task is self-contained so Dask can ship it to another process or machine: it gets
the settings, the grid, the day and the champion (a small dataclass naming the ONNX file) and
opens its own ONNX Runtime predictor (a session can be neither pickled nor shared between
threads). Paths are made absolute before the tasks are sent, so workers need the data
directory at the same path (a shared filesystem), not the same working directory. An archived
day is replaced (write-then-rename), so re-running a window is idempotent: the same bytes.

Threads are safe because what the days share is serialized: HDF5 (the bundled netCDF4 one is not
thread-safe; two threads reading ERA5 crashed the process) behind the readers' process-wide lock
(tasks/readers/netcdf.py HDF5_LOCK, a whole file at a time), STAC upserts behind a file lock.
Worker processes are safe by construction: each has its own HDF5 library and its own lock.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import date, timedelta

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.onnx_runtime import OnnxPredictor
from registry.champion import ChampionModel, load_champion
from tasks.archive.backfill_pool import DayDone, PoolPlan, map_days_in_processes, progress_line
from tasks.archive.health import check_archive
from tasks.archive.provenance import stale_days
from tasks import units
from tasks.grid import Grid
from tasks.inference import inputs_available
from tasks.settings import Settings, load_settings
from tasks.sources.pull import raw_dir

PROGRESS_KEY = "backfill-progress"
DAYS_KEY = "backfill-days"


def task_runner_for(settings: Settings) -> TaskRunner:
    """The task runner the settings ask for (a new, unstarted one on every call)."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None,  # no dashboard (its port may be taken on a shared machine)
        })
    return ThreadPoolTaskRunner(max_workers=settings.backfill_workers or PoolPlan.for_days(0).workers)


def _days(start: str, end: str) -> list[date]:
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _absolute(settings: Settings) -> Settings:
    # Workers may run in another working directory (or on another machine sharing the data).
    return settings.model_copy(update={"data_dir": settings.data_dir.resolve(),
                                       "archive_dir": settings.archive_root.resolve()})


@task(name="backfill-day", task_run_name="backfill-{day}", cache_policy=NO_CACHE, retries=1)
def backfill_day(settings: Settings, grid: Grid, day: date, champion: ChampionModel) -> dict:
    """Map one day onto the archive (replacing it); runs in any worker process."""
    predictor = OnnxPredictor(champion.onnx_path)  # per task: neither picklable nor thread-safe
    row = units.map_day.fn(settings, grid, day, predictor, champion)
    return {**row, "model_name": champion.name, "model_version": str(champion.version),
            "provider": predictor.provider, "worker": f"{socket.gethostname()}:{os.getpid()}"}


class _BackfillProgress:
    """Days/hour and an ETA as the days finish: a printed line, a rich bar, the progress artifact."""

    def __init__(self, todo: list[date], progress_id, label: str, logger) -> None:
        self.total, self.progress_id, self.label, self.logger = len(todo), progress_id, label, logger
        self.done = self.failed = 0
        self.t0 = time.perf_counter()
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), transient=False)
        self.bar_task = self.bar.add_task(label, total=self.total)

    def __enter__(self) -> "_BackfillProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
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


def _collect(futures: list, todo: list[date], progress: _BackfillProgress) -> tuple[list[dict], dict[str, str]]:
    """Wait for the day tasks as they finish, reporting progress; (rows, failures)."""
    rows: list[dict] = []
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
def backfill_days_in_processes(settings: Settings, grid: Grid, todo: list[date], champion: ChampionModel,
                               progress: _BackfillProgress) -> tuple[list[dict], dict[str, str]]:
    """Map the days in worker processes (tasks/archive/backfill_pool.py); (rows, failures)."""
    plan = PoolPlan.for_days(len(todo), settings.backfill_workers)
    get_run_logger().info("%d worker processes, %d ONNX Runtime threads each", plan.workers, plan.threads_per_worker)

    def done(d: DayDone) -> None:
        progress.day_done(d.day, d.problem)

    rows, failed = map_days_in_processes(settings, grid, todo, champion, workers=settings.backfill_workers,
                                         on_done=done)
    return [{**r, "model_name": champion.name, "model_version": str(champion.version)} for r in rows], failed


@flow(name="xco2-backfill", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def backfill(start: str, end: str, overrides: dict | None = None, stale_only: bool = False) -> dict:
    """Map every day in [start, end] whose inputs are available, replacing archived days.

    stale_only: recompute only the archived days of the window that a model other than the
    current champion made (after moving the alias, say)."""
    logger = get_run_logger()
    settings = _absolute(load_settings(**(overrides or {})))
    grid = Grid.for_region(settings.region, settings.grid_step)
    window = _days(start, end)
    label = f"Backfill {window[0]}..{window[-1]}"
    # Mapping reads the covariates and (anchoring) the sample store: damaged files are recomputed
    # first, and temp files of writers that died are removed, as at the start of a daily run.
    state_findings = units.check_state(settings, grid)
    # Unsound COGs of the window are quarantined (and so mapped again), lost STAC items restored.
    health = check_archive(settings.archive_root, settings.region.name, grid, window,
                           settings.quarantine_dir / "archive")
    for repair in health.repairs:
        logger.warning("archive repair: %s: %s -> %s", repair.file, repair.problem, repair.action)

    # The champion is resolved once: every day of the backfill comes from the same version.
    champion = load_champion(settings.tracking_uri, settings.registered_model_name, settings.data_dir / "models")
    era5_dir = raw_dir(settings, "era5")
    candidates = window
    if stale_only:
        candidates = sorted(set(stale_days(settings.archive_root, settings.region.name, champion.name,
                                           champion.version, window[0], window[-1])) | set(health.to_remap))
        logger.info("%d archived days of the window were made by another model than %s v%s",
                    len(candidates), champion.name, champion.version)
    # A bad ERA5 file is quarantined here as in the daily run (and pulled again by the next one).
    # So are the days a quarantined NDVI composite feeds: they wait for a good copy.
    todo = [d for d in candidates if inputs_available(era5_dir, d, settings.quarantine_dir,
                                                      settings.raw_dir / "manifest.parquet",
                                                      region_dir=settings.region_dir)]
    skipped = [d.isoformat() for d in candidates if d not in todo]
    logger.info("backfill %s..%s (%s): %d days to map with %s v%s on the %s task runner, %d without inputs",
                window[0], window[-1], settings.region.name, len(todo), champion.name, champion.version,
                settings.task_runner, len(skipped))

    progress_id = create_progress_artifact(progress=0.0 if todo else 100.0, key=PROGRESS_KEY,
                                           description=f"{label}: 0 of {len(todo)} days")
    parameters = {"settings": unmapped(settings), "grid": unmapped(grid), "day": todo, "champion": unmapped(champion)}
    started_in_run = False
    with _BackfillProgress(todo, progress_id, label, logger) as progress:
        if not todo:
            rows, failed = [], {}
        elif settings.task_runner == "process":
            rows, failed = backfill_days_in_processes(settings, grid, todo, champion, progress)
        else:
            wanted = task_runner_for(settings)
            context = FlowRunContext.get()
            if context is not None and context.task_runner == wanted:
                # Started by run_backfill: this flow run's own task runner is the one the settings ask for.
                rows, failed = _collect(backfill_day.map(**parameters), todo, progress)
            else:
                # The bare flow (a deployment's entrypoint, a direct call) runs on its decorated thread
                # pool: start the runner the settings ask for inside the run instead.
                logger.info("starting the %s task runner the settings ask for", settings.task_runner)
                started_in_run = True
                with wanted as runner:
                    rows, failed = _collect(runner.map(backfill_day, parameters), todo, progress)

    if state_findings:
        create_table_artifact(key="backfill-state-check", table=state_findings,
                              description="Damaged derived state recomputed, dead writers' temp files removed")
    if health.repairs:
        create_table_artifact(key="backfill-archive-repairs", table=health.rows(),
                              description="Archive days found unsound (COG or STAC item) and repaired")
    create_table_artifact(
        key=DAYS_KEY, description=f"Archive days written by the backfill {window[0]}..{window[-1]}",
        table=[{"day": r["day"], "path": r["path"], "mean_ppm": r["mean_ppm"], "model_version": r["model_version"]}
               for r in rows] or [{"day": "none"}])
    if failed:
        raise RuntimeError(f"backfill failed for {len(failed)} of {len(todo)} days: "
                           + "; ".join(f"{d}: {why}" for d, why in sorted(failed.items())))
    return {"window": [window[0].isoformat(), window[-1].isoformat()], "days": rows, "skipped_days": skipped,
            "archive_repairs": health.rows(), "state_findings": state_findings,
            "model": {"name": champion.name, "version": champion.version}, "task_runner": settings.task_runner,
            "task_runner_started_in_run": started_in_run}


def run_backfill(start: str, end: str, overrides: dict | None = None, stale_only: bool = False) -> dict:
    """Run the backfill flow with the task runner the settings (with `overrides`) ask for as
    the flow run's own task runner (`backfill.with_options(task_runner=...)`)."""
    settings = load_settings(**(overrides or {}))
    if settings.task_runner == "process":  # the pool lives in one task: the decorated runner serves
        return backfill(start=start, end=end, overrides=overrides, stale_only=stale_only)
    runner = task_runner_for(settings)
    return backfill.with_options(task_runner=runner)(start=start, end=end, overrides=overrides, stale_only=stale_only)
