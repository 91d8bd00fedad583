"""Backfill: (re)map every day of a window onto the archive with the champion model.

    run_backfill("2020-06-01", "2020-06-30")                 # honours settings.task_runner
    run_backfill(..., overrides={"task_runner": "dask", "dask_address": "tcp://10.0.0.5:8786"})

By default (`task_runner="process"`) the days are mapped by worker processes on this machine,
one per core (`backfill_workers`), each with its share of the cores as ONNX Runtime threads and
the days pipelined across them: tasks/mapping/backfill_pool.py, under one thin task here. As the
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

from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from registry.champion import load_champion
from tasks.mapping.backfill_pool import PoolPlan
from tasks.archive.health import check_archive
from tasks.archive import archived_days
from tasks.archive.provenance import stale_archive_days
from tasks import prefect_tasks
from tasks.mapping.day import current_provenance
from tasks.prefect_tasks import BackfillProgress, backfill_day, backfill_days_in_processes, collect_days
from tasks.gridding.geometry import Grid
from tasks.covariates.day import inputs_available
from tasks.settings import Settings, load_settings
from tasks.steps import backfill as steps
from tasks.steps.backfill import DAYS_KEY, PROGRESS_KEY

if TYPE_CHECKING:  # imported where a Dask runner is asked for: dask is slow to import
    from prefect_dask import DaskTaskRunner

__all__ = ["DAYS_KEY", "PROGRESS_KEY", "backfill", "backfill_day", "run_backfill", "task_runner_for"]


def task_runner_for(settings: Settings) -> ThreadPoolTaskRunner[Any] | DaskTaskRunner:
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


# Prefect types a flow's task_runner as TaskRunner[PrefectFuture[Any]] with TaskRunner invariant in
# its future type, which no concrete runner is (its own docs pass ThreadPoolTaskRunner): a stub gap.
@flow(name="xco2-backfill", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=2))  # type: ignore[arg-type]
def backfill(start: str | None = None, end: str | None = None, overrides: dict[str, Any] | None = None,
             stale_only: bool = False) -> dict[str, Any]:
    """Map every day in [start, end] whose inputs are available, replacing archived days.

    stale_only: redo only the archived days of the window that are stale: made by another model
    than the current champion (after moving the alias, say), with another GOSAT fit, or from
    samples or meteorology that have since changed (tasks/archive/provenance.py), plus those found
    unsound. With stale_only, a bound left out is the archive's first (last) day."""
    logger = get_run_logger()
    settings = steps.absolute(load_settings(**(overrides or {})))
    grid = Grid.for_region(settings.region, settings.grid_step)
    if stale_only:
        window = steps.stale_window(start, end, archived_days(settings.archive_root, settings.region.name))
        if not window:
            logger.info("the archive of %s is empty: no stale days", settings.region.name)
            return {"window": None, "days": [], "skipped_days": [], "archive_repairs": [], "state_findings": [],
                    "model": None, "task_runner": settings.task_runner, "task_runner_started_in_run": False,
                    "why": {}}
    elif start is None or end is None:
        raise ValueError("a backfill needs start and end (or stale_only, over the whole archive)")
    else:
        window = steps.window_days(start, end)
    label = f"Backfill {window[0]}..{window[-1]}"
    # Mapping reads the covariates and (anchoring) the sample store: damaged files are recomputed
    # first, and temp files of writers that died are removed, as at the start of a daily run.
    state_findings = prefect_tasks.check_state(settings, grid)
    # Unsound COGs of the window are quarantined (and so mapped again), lost STAC items restored.
    health = check_archive(settings.archive_root, settings.region.name, grid, window,
                           settings.quarantine_dir / "archive")
    for repair in health.repairs:
        logger.warning("archive repair: %s: %s -> %s", repair.file, repair.problem, repair.action)

    # The champion is resolved once: every day of the backfill comes from the same version.
    champion = load_champion(settings.tracking_uri, settings.registered_model_name, settings.data_dir / "models")
    era5_dir = settings.raw("era5")
    candidates = window
    why: dict[str, str] | None = None
    if stale_only:
        stale = stale_archive_days(settings.archive_root, settings.region.name, window,
                                   current_provenance(settings, champion))
        candidates = steps.stale_candidates(stale, health.to_remap)
        why = steps.reasons_for(candidates, stale, health.to_remap)
        logger.info("%d archived days of %s..%s are stale or unsound (champion %s v%s)",
                    len(candidates), window[0], window[-1], champion.name, champion.version)
        for day, reason in why.items():
            logger.info("%s is redone: %s", day, reason)
    # A bad ERA5 file is quarantined here as in the daily run (and pulled again by the next one).
    # So are the days a quarantined NDVI composite feeds: they wait for a good copy.
    todo, skipped = steps.split_by_inputs(candidates, lambda d: inputs_available(
        era5_dir, d, settings.quarantine_dir, settings.manifest_path, region_dir=settings.region_dir))
    logger.info("backfill %s..%s (%s): %d days to map with %s v%s on the %s task runner, %d without inputs",
                window[0], window[-1], settings.region.name, len(todo), champion.name, champion.version,
                settings.task_runner, len(skipped))

    # Called in a flow run (a sync context), Prefect's async-dispatching function returns the id itself.
    progress_id = cast(UUID, create_progress_artifact(progress=0.0 if todo else 100.0, key=PROGRESS_KEY,
                                                      description=f"{label}: 0 of {len(todo)} days"))
    parameters: dict[str, Any] = {"settings": unmapped(settings), "grid": unmapped(grid), "day": todo,
                                  "champion": unmapped(champion)}
    started_in_run = False
    rows: list[dict[str, Any]]
    failed: dict[str, str]
    with BackfillProgress(todo, progress_id, label, logger) as progress:
        if not todo:
            rows, failed = [], {}
        elif settings.task_runner == "process":
            rows, failed = backfill_days_in_processes(settings, grid, todo, champion, progress)
        else:
            wanted = task_runner_for(settings)
            context = FlowRunContext.get()
            if context is not None and context.task_runner == wanted:
                # Started by run_backfill: this flow run's own task runner is the one the settings ask for.
                rows, failed = collect_days(backfill_day.map(**parameters), todo, progress)
            else:
                # The bare flow (a deployment's entrypoint, a direct call) runs on its decorated thread
                # pool: start the runner the settings ask for inside the run instead.
                logger.info("starting the %s task runner the settings ask for", settings.task_runner)
                started_in_run = True
                with wanted as runner:
                    # A runner's map is declared PrefectFutureList[<the future's type>], a list of futures
                    # of futures (PrefectFutureList takes the result type): Prefect's stub, not the value.
                    futures = runner.map(backfill_day, parameters)
                    rows, failed = collect_days(futures, todo, progress)  # type: ignore[arg-type]

    if why is not None:
        rows = [{**r, "why": why.get(r["day"], "")} for r in rows]
    prefect_tasks.publish(steps.run_artifacts(window, state_findings, health.rows() if health.repairs else [], rows,
                                              why))
    if failed:
        raise RuntimeError(steps.failure_message(failed, len(todo)))
    return {"window": [window[0].isoformat(), window[-1].isoformat()], "days": rows, "skipped_days": skipped,
            "archive_repairs": health.rows(), "state_findings": state_findings,
            "model": {"name": champion.name, "version": champion.version}, "task_runner": settings.task_runner,
            "task_runner_started_in_run": started_in_run, "why": why or {}}


def run_backfill(start: str | None, end: str | None, overrides: dict[str, Any] | None = None,
                 stale_only: bool = False) -> dict[str, Any]:
    """Run the backfill flow with the task runner the settings (with `overrides`) ask for as
    the flow run's own task runner (`backfill.with_options(task_runner=...)`)."""
    settings = load_settings(**(overrides or {}))
    if settings.task_runner == "process":  # the pool lives in one task: the decorated runner serves
        return backfill(start=start, end=end, overrides=overrides, stale_only=stale_only)
    runner = task_runner_for(settings)
    # with_options takes the runner as the decorator does (TaskRunner[PrefectFuture[Any]]): the same stub gap.
    flow_with_runner = backfill.with_options(task_runner=runner)  # type: ignore[arg-type]
    return flow_with_runner(start=start, end=end, overrides=overrides, stale_only=stale_only)
