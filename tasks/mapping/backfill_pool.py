"""Map many days in worker processes: the backfill's CPU-bound part.

Mapping a day is CPU work (ONNX inference, kriging the daily anomaly, writing the COG) with some
reading at its start and writing at its end. Threads in one process would share the GIL for
everything but inference and the HDF5 reads, so the days run in worker processes instead: one per
core by default, each ONNX Runtime session with cores // workers intra-op threads, so the workers
together use every core once. Each worker takes the next day as soon as it has published one, so
one worker reads while another predicts and a third writes: the days are pipelined without a
separate reader or writer stage.

Safety: netCDF4's bundled HDF5 is not thread-safe, and tasks/readers/netcdf.py serializes it with
HDF5_LOCK, a lock *per process*. Every worker is its own process with its own HDF5 library and its
own lock, so no two threads are ever inside one HDF5 library at once: processes are safe by
construction, with no lock between them. Workers are started with "spawn", not "fork": the parent
runs Prefect's threads (and may hold HDF5_LOCK or a logging lock in one of them), and a forked
child would inherit such a lock held by a thread that does not exist in it. What workers share on
disk is published atomically (tasks/io/atomic.py) or under a file lock (the STAC upsert), which the
kernel releases when a worker dies.

A worker that dies (killed, out of memory) fails the day it was mapping and no other: the parent
sees its exit, records the day as failed, removes the temp files that the dead writer left
(tasks/io/integrity.remove_dead_temp_files) and starts a fresh worker for the remaining days.
A day that raises fails alone too, with the worker kept.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from datetime import date
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tasks.gridding.geometry import Grid
from tasks.mapping.champion import Champion
from tasks.mapping.day import map_day
from tasks.mapping.inference import CellPredictor
from tasks.settings import Settings

if TYPE_CHECKING:  # a worker opens it, the parent never does: ONNX Runtime is imported there only
    from tasks.mapping.onnx_runtime import OnnxPredictor

# (settings, grid, day, predictor, champion) -> the day's archive row (tasks/mapping/day.py::map_day).
MapOne = Callable[[Settings, Grid, date, CellPredictor, Champion], dict[str, Any]]
# (settings, champion, intra_op_threads) -> the worker's predictor, opened once per worker.
OpenPredictor = Callable[[Settings, Champion, int], CellPredictor]


@dataclass(frozen=True)
class PoolPlan:
    workers: int
    threads_per_worker: int

    @classmethod
    def for_days(cls, days: int, workers: int | None = None, cores: int | None = None) -> "PoolPlan":
        """One worker per core (never more workers than days), the cores shared out as ONNX
        Runtime intra-op threads: 2 cores, 2 workers -> 1 thread each; 1 worker -> 2 threads."""
        from models.onnx_session import available_cores  # the cores its sessions are sized by

        cores = cores or available_cores()
        if workers is not None and workers < 1:
            raise ValueError(f"backfill workers must be >= 1, got {workers}")
        n = max(1, min(workers or cores, days or 1))
        return cls(workers=n, threads_per_worker=max(1, cores // n))


def open_onnx_predictor(settings: Settings, champion: Champion, intra_op_threads: int) -> OnnxPredictor:
    from tasks.mapping.onnx_runtime import OnnxPredictor

    return OnnxPredictor(champion.onnx_path, intra_op_threads=intra_op_threads)


def map_one_day(settings: Settings, grid: Grid, day: date, predictor: CellPredictor,
                champion: Champion) -> dict[str, Any]:
    return map_day(settings, grid, day, predictor, champion)


@dataclass(frozen=True)
class DayDone:
    day: date
    row: dict[str, Any] | None
    problem: str | None
    seconds: float
    worker_pid: int


def _worker(conn: Connection, settings: Settings, grid: Grid, champion: Champion, threads: int,
            open_predictor: OpenPredictor, map_one: MapOne) -> None:
    # Each worker's per-day progress bars would interleave on the terminal; the parent prints one
    # line per day for all of them.
    sys.stdout = open(os.devnull, "w")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    predictor: CellPredictor | None = None
    while True:
        day = conn.recv()
        if day is None:
            return
        t0 = time.perf_counter()
        try:
            if predictor is None:
                predictor = open_predictor(settings, champion, threads)
            row = map_one(settings, grid, day, predictor, champion)
            row = {**row, "provider": getattr(predictor, "provider", None),
                   "worker": f"{socket.gethostname()}:{os.getpid()}"}
            conn.send(DayDone(day, row, None, time.perf_counter() - t0, os.getpid()))
        except Exception as exc:  # noqa: BLE001 - one bad day must not stop the worker
            conn.send(DayDone(day, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, os.getpid()))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _litter_roots(settings: Settings) -> list[Path]:
    # Where a day's writer puts temp files: its COG and STAC item, the residual cache.
    return [settings.archive_root / settings.region.name, settings.region_dir / "residuals"]


def map_days_in_processes(settings: Settings, grid: Grid, days: list[date], champion: Champion, *,
                          workers: int | None = None, on_done: Callable[[DayDone], None] | None = None,
                          open_predictor: OpenPredictor = open_onnx_predictor,
                          map_one: MapOne = map_one_day) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Map `days` in worker processes; (rows sorted by day, {day: why} of the days that failed).

    `on_done` is called in this process as each day finishes (progress). `open_predictor` and
    `map_one` must be module-level functions (they are sent to spawned processes)."""
    from tasks.io.integrity import remove_dead_temp_files

    plan = PoolPlan.for_days(len(days), workers)
    context = multiprocessing.get_context("spawn")
    queue = list(days)
    busy: dict[int, tuple[BaseProcess, Connection, date | None]] = {}  # pid -> (process, pipe, day or None)
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}

    def start_worker() -> None:
        here, there = context.Pipe()
        process = context.Process(target=_worker, name="xco2-backfill-worker", daemon=True,
                                  args=(there, settings, grid, champion, plan.threads_per_worker,
                                        open_predictor, map_one))
        process.start()
        there.close()
        pid = int(process.pid or 0)
        busy[pid] = (process, here, None)
        give_next(pid)

    def give_next(pid: int) -> None:
        process, pipe, _ = busy[pid]
        if queue:
            day = queue.pop(0)
            try:
                pipe.send(day)
            except OSError:  # it died just now: the day waits for the next worker
                queue.insert(0, day)
                busy[pid] = (process, pipe, None)
                return
            busy[pid] = (process, pipe, day)
        else:
            pipe.send(None)
            busy.pop(pid)
            process.join(timeout=30)
            pipe.close()

    def report(done: DayDone) -> None:
        if done.row is not None:
            rows.append(done.row)
        else:
            failed[done.day.isoformat()] = done.problem or "failed"
        if on_done is not None:
            on_done(done)

    def bury(pid: int) -> None:
        """A worker that died: its day fails with how it died, its litter goes, a new one starts."""
        process, pipe, day = busy.pop(pid)
        process.join(timeout=30)
        if process.is_alive():  # its pipe closed yet it runs on: it must not outlive the pool
            process.kill()
            process.join()
        pipe.close()
        if day is not None:
            report(DayDone(day, None, f"worker process {pid} {_death(process.exitcode)} while mapping it", 0.0, pid))
        remove_dead_temp_files([r for r in _litter_roots(settings) if r.is_dir()])
        if queue:
            start_worker()

    try:
        for _ in range(plan.workers):
            if queue:
                start_worker()
        while busy:
            owner: dict[Any, int] = {pipe: pid for pid, (_, pipe, _) in busy.items()}
            owner.update({process.sentinel: pid for pid, (process, _, _) in busy.items()})
            for ready in wait(list(owner)):
                pid = owner[ready]
                if pid not in busy:
                    continue
                process, pipe, day = busy[pid]
                if ready is pipe:
                    try:
                        done = pipe.recv()
                    except EOFError:
                        # Its end closed: it died. Buried here, not when its sentinel fires: an end-of-file
                        # pipe stays readable, so the sentinel's "nothing left to read" never came and a
                        # loaded machine, seeing both at once, spun forever (tests/test_backfill.py).
                        bury(pid)
                        continue
                    report(done)
                    give_next(pid)
                elif not pipe.poll():  # exited with nothing left to read: it died
                    bury(pid)
    finally:
        for process, pipe, _ in busy.values():  # an interrupted pool: leave no worker behind
            process.kill()
            process.join()
            pipe.close()
    return sorted(rows, key=lambda r: r["day"]), failed


def progress_line(done: int, total: int, failed: int, elapsed_s: float, last_day: date | None = None) -> str:
    """'backfill 3/7 days (1 failed), 41.2 days/hour, ETA 0:05:49 (2020-06-03 done)'."""
    rate = 3600.0 * done / elapsed_s if elapsed_s > 0 and done else 0.0
    eta = "--:--:--" if not rate else _hms((total - done) * 3600.0 / rate)
    return (f"backfill {done}/{total} days" + (f" ({failed} failed)" if failed else "")
            + f", {rate:.1f} days/hour, ETA {eta}" + (f" ({last_day} done)" if last_day else ""))


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
