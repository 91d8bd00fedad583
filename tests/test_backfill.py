"""The backfill flow on a tiny demo world: thread runner, a real local Dask cluster, idempotence."""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import date

import pytest
import rasterio

from flows.backfill import backfill, backfill_day, run_backfill, task_runner_for
from flows.demo import SMALL_REGION
from tasks.archive import collection_path, day_cog_path, validate_cog, validate_stac
from tasks.gridding.geometry import Grid
from tasks.settings import load_settings

DAYS = ["2020-06-04", "2020-06-05", "2020-06-06"]
MODEL = "backfill-resnet-lstm"


@pytest.fixture(scope="module")
def world(small_world_with_champion):
    """A 6-day demo world over the small region with a champion (tests/conftest.py)."""
    return small_world_with_champion("backfill", days=6, model=MODEL)


def _cogs(archive) -> dict[str, bytes]:
    return {d: day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(d)).read_bytes() for d in DAYS}


@pytest.fixture(scope="module")
def thread_run(world):
    root, base = world
    archive = root / "archive-thread"
    overrides = {**base, "archive_dir": str(archive), "task_runner": "thread", "backfill_workers": 1}
    # 2020-06-07 lies past the demo world: no meteorology, so it is skipped, not failed.
    result = run_backfill(DAYS[0], "2020-06-07", overrides=overrides)
    return archive, overrides, result, _cogs(archive)


def test_task_runner_follows_the_settings():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    thread = task_runner_for(load_settings(backfill_workers=3))
    assert isinstance(thread, ThreadPoolTaskRunner) and thread._max_workers == 3
    remote = task_runner_for(load_settings(task_runner="dask", dask_address="tcp://192.0.2.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://192.0.2.1:8786"
    local = task_runner_for(load_settings(task_runner="dask", dask_workers=3))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3


def test_cli_backfill_passes_the_runner_settings(monkeypatch):
    import flows.backfill
    from flows.cli import main

    calls = []
    monkeypatch.setattr(flows.backfill, "run_backfill", lambda **kw: calls.append(kw) or {
        "window": [kw["start"], kw["end"]], "task_runner": "dask", "model": {}, "days": [], "skipped_days": []})
    assert main(["backfill", "--start", "2020-06-01", "--end", "2020-06-03",
                 "--dask-address", "tcp://192.0.2.1:8786"]) == 0
    assert main(["backfill", "--start", "2020-06-01", "--end", "2020-06-01", "--task-runner", "thread"]) == 0
    assert calls[0]["overrides"] == {"task_runner": "dask", "dask_address": "tcp://192.0.2.1:8786"}
    assert calls[1]["overrides"] == {"task_runner": "thread"}
    with pytest.raises(SystemExit):
        main(["backfill", "--start", "2020-06-01", "--end", "2020-06-01", "--task-runner", "ray"])


def test_day_task_pickles_for_dask(world):
    import cloudpickle

    from registry.champion import load_champion

    root, base = world
    settings = load_settings(**base)
    champion = load_champion(settings.tracking_uri, MODEL, settings.data_dir / "models")
    grid = Grid.for_region(settings.region, settings.grid_step)
    # A Dask worker gets copies: they must be the same settings, grid and model, and the same task.
    # (By repr: a metric may be NaN, and NaN != NaN.)
    for obj in (settings, grid, champion):
        assert repr(cloudpickle.loads(cloudpickle.dumps(obj))) == repr(obj)
    task = cloudpickle.loads(cloudpickle.dumps(backfill_day))
    assert task.name == backfill_day.name
    assert task.fn.__module__ == "tasks.prefect_tasks" and task.fn.__code__.co_code == backfill_day.fn.__code__.co_code


def test_thread_backfill_writes_the_days(thread_run):
    from prefect.artifacts import Artifact

    archive, _, result, cogs = thread_run
    assert result["task_runner"] == "thread" and not result["task_runner_started_in_run"]
    assert [r["day"] for r in result["days"]] == DAYS
    assert result["skipped_days"] == ["2020-06-07"]
    assert result["model"] == {"name": MODEL, "version": 1}
    grid = Grid.for_region(SMALL_REGION, 0.01)
    for row in result["days"]:
        path = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(row["day"]))
        assert row["path"] == str(path) and validate_cog(path, grid) == []
        with rasterio.open(path) as src:
            assert src.tags()["model_version"] == "1" and src.tags()["date"] == row["day"]
        assert 395 < row["mean_ppm"] < 430
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []

    progress = Artifact.get("backfill-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    table = json.loads(Artifact.get("backfill-days").data)
    assert [(r["day"], r["model_version"]) for r in table] == [(d, "1") for d in DAYS]


def test_dask_backfill_is_byte_identical_to_the_thread_backfill(world, thread_run):
    from distributed import Client, LocalCluster

    root, base = world
    _, _, _, thread_cogs = thread_run
    archive = root / "archive-dask"
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        overrides = {**base, "archive_dir": str(archive), "task_runner": "dask",
                     "dask_address": cluster.scheduler_address}
        result = run_backfill(DAYS[0], DAYS[-1], overrides=overrides)
        # The days really ran in the cluster's worker processes, not in this one.
        with Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
    assert {r["worker"] for r in result["days"]} <= {f"{socket.gethostname()}:{pid}" for pid in worker_pids}
    assert f"{socket.gethostname()}:{os.getpid()}" not in {r["worker"] for r in result["days"]}
    elapsed = time.perf_counter() - t0
    assert result["task_runner"] == "dask" and not result["task_runner_started_in_run"]
    assert [r["day"] for r in result["days"]] == DAYS
    dask_cogs = _cogs(archive)
    for day in DAYS:
        assert dask_cogs[day] == thread_cogs[day], f"{day}: the Dask COG differs from the thread COG"
    print(f"dask backfill of {len(DAYS)} days: {elapsed:.1f} s")


def _stac_items(archive) -> dict[str, bytes]:
    from tasks.archive.layout import day_item_path

    return {d: day_item_path(archive, SMALL_REGION.name, date.fromisoformat(d)).read_bytes() for d in DAYS}


def test_process_backfill_is_byte_identical_to_one_thread(world, thread_run):
    """The default runner: worker processes (one per core, 2 here), the days pipelined across them."""
    from prefect.artifacts import Artifact

    root, base = world
    thread_archive, _, _, thread_cogs = thread_run
    archive = root / "archive-process"
    result = run_backfill(DAYS[0], DAYS[-1], overrides={**base, "archive_dir": str(archive)})
    assert result["task_runner"] == "process" and [r["day"] for r in result["days"]] == DAYS
    assert f"{socket.gethostname()}:{os.getpid()}" not in {r["worker"] for r in result["days"]}
    assert {r["model_version"] for r in result["days"]} == {"1"}
    assert _cogs(archive) == thread_cogs
    assert _stac_items(archive) == _stac_items(thread_archive)
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []
    progress = Artifact.get("backfill-progress")
    assert float(progress.data) == 100.0 and "backfill 3/3 days" in progress.description
    assert "days/hour, ETA 0:00:00" in progress.description


def test_rerunning_replaces_the_days_with_the_same_bytes(thread_run):
    archive, overrides, _, before = thread_run
    paths = {d: day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(d)) for d in DAYS}
    inodes = {d: p.stat().st_ino for d, p in paths.items()}
    # The bare flow, as a deployment runs it: its decorated runner (2 threads) is not the one the
    # settings ask for (1 thread), so it starts that one inside the run.
    again = backfill(start=DAYS[0], end=DAYS[-1], overrides=overrides)
    assert [r["day"] for r in again["days"]] == DAYS and again["task_runner_started_in_run"]
    for day, path in paths.items():
        assert path.stat().st_ino != inodes[day], f"{day} was not rewritten"
        assert path.read_bytes() == before[day]
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []


def test_stale_only_recomputes_the_days_another_model_made(thread_run):
    import rasterio

    from tasks.archive.provenance import day_models, stale_days

    archive, overrides, result, before = thread_run
    version = str(result["model"]["version"])
    old = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(DAYS[1]))
    with rasterio.open(old, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as dst:  # as if an earlier champion made it
        dst.update_tags(model_version="0")
    assert day_models(archive, SMALL_REGION.name)[date.fromisoformat(DAYS[1])] == (MODEL, "0")
    assert stale_days(archive, SMALL_REGION.name, MODEL, version) == [date.fromisoformat(DAYS[1])]

    again = backfill(start=DAYS[0], end=DAYS[-1], overrides=overrides, stale_only=True)
    assert [r["day"] for r in again["days"]] == [DAYS[1]]
    assert stale_days(archive, SMALL_REGION.name, MODEL, version) == []
    assert old.read_bytes() == before[DAYS[1]]  # remade by the champion: the same map as before


def test_backfill_heals_damaged_covariates_and_removes_dead_writers_temp_files(world, thread_run):
    """As a daily run does, the backfill first recomputes damaged derived state (here the static
    covariates it maps with, truncated) and removes temp files a dead writer left in the archive;
    the day it then maps is the same map as before."""
    import subprocess
    import sys

    _, base = world
    archive, overrides, _, before = thread_run
    static = load_settings(**overrides).region_dir / "covariates" / "static.npy"
    undamaged = static.read_bytes()
    static.write_bytes(undamaged[: len(undamaged) // 3])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    cog = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(DAYS[0]))
    litter = cog.with_name(f".{cog.name}.{dead}.0badc0de.tmp")
    litter.write_bytes(b"half a COG")

    result = backfill(start=DAYS[0], end=DAYS[0], overrides=overrides)

    found = {f["path"]: f for f in result["state_findings"]}
    assert str(static) in found, found
    assert not litter.exists()
    assert static.read_bytes() == undamaged
    assert cog.read_bytes() == before[DAYS[0]]


# ---- the process pool (tasks/mapping/backfill_pool.py) -------------------------------------------

def test_pool_plan_shares_the_cores_out():
    from tasks.mapping.backfill_pool import PoolPlan

    assert PoolPlan.for_days(7, cores=2) == PoolPlan(workers=2, threads_per_worker=1)
    assert PoolPlan.for_days(7, workers=1, cores=2) == PoolPlan(workers=1, threads_per_worker=2)
    assert PoolPlan.for_days(1, cores=16) == PoolPlan(workers=1, threads_per_worker=16)  # never idle workers
    assert PoolPlan.for_days(30, workers=4, cores=16) == PoolPlan(workers=4, threads_per_worker=4)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        PoolPlan.for_days(3, workers=0)


def test_progress_line_gives_days_per_hour_and_an_eta():
    from tasks.mapping.backfill_pool import progress_line

    assert progress_line(0, 7, 0, 0.0) == "backfill 0/7 days, 0.0 days/hour, ETA --:--:--"
    # 3 days in 10 minutes: 18 days/hour, 4 days left = 13 min 20 s.
    assert (progress_line(3, 7, 1, 600.0, date(2020, 6, 3))
            == "backfill 3/7 days (1 failed), 18.0 days/hour, ETA 0:13:20 (2020-06-03 done)")
    assert progress_line(7, 7, 0, 3600.0).endswith("7.0 days/hour, ETA 0:00:00")


def test_a_worker_that_dies_fails_its_day_alone_and_leaves_no_litter(tmp_path):
    from backfill_pool_support import fake_map_one, fake_predictor

    from tasks.mapping.backfill_pool import PoolPlan, map_days_in_processes

    settings = load_settings(data_dir=str(tmp_path / "data"), region=SMALL_REGION.model_dump())
    grid = Grid.for_region(settings.region, settings.grid_step)
    days = [date(2020, 6, d) for d in range(1, 8)]
    seen = []
    rows, failed = map_days_in_processes(settings, grid, days, champion=None, workers=2, on_done=seen.append,
                                         open_predictor=fake_predictor, map_one=fake_map_one)
    assert sorted(failed) == ["2020-06-03", "2020-06-04"]
    assert "SIGKILL" in failed["2020-06-03"] and "while mapping it" in failed["2020-06-03"]
    assert failed["2020-06-04"] == "ValueError: no ERA5 for this day"
    assert [r["day"] for r in rows] == [d.isoformat() for d in days if d.day not in (3, 4)]
    assert len({r["pid"] for r in rows}) >= 2 and os.getpid() not in {r["pid"] for r in rows}  # worker processes
    assert sorted(d.day for d in seen) == days and {r["worker"].split(":")[0] for r in rows} == {socket.gethostname()}
    folder = settings.archive_root / SMALL_REGION.name / "2020"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{r['day']}.txt" for r in rows)  # no temp file left
    threads = PoolPlan.for_days(len(days), 2).threads_per_worker  # the cores shared out between 2 workers
    assert (folder / "2020-06-01.txt").read_text() == f"2020-06-01 {threads}"


@pytest.mark.timeout(120)
def test_a_worker_death_seen_late_on_a_loaded_machine_still_ends_the_pool(tmp_path, monkeypatch):
    """On a loaded machine the pool looks late, and a dead worker's closed pipe and its exit show
    together: the pool buries it then (it used to spin forever, an end-of-file pipe being always
    readable) and the other days still map."""
    from backfill_pool_support import fake_map_one, fake_predictor

    import tasks.mapping.backfill_pool as pool

    real_wait = pool.wait

    def late_wait(objects, timeout=None):
        time.sleep(0.3)  # the parent busy elsewhere: whatever happened meanwhile is ready at once
        return real_wait(objects, timeout)

    monkeypatch.setattr(pool, "wait", late_wait)
    settings = load_settings(data_dir=str(tmp_path / "data"), region=SMALL_REGION.model_dump())
    grid = Grid.for_region(settings.region, settings.grid_step)
    days = [date(2020, 6, d) for d in range(1, 8)]
    rows, failed = pool.map_days_in_processes(settings, grid, days, champion=None, workers=2,
                                              open_predictor=fake_predictor, map_one=fake_map_one)
    assert sorted(failed) == ["2020-06-03", "2020-06-04"] and "SIGKILL" in failed["2020-06-03"]
    assert [r["day"] for r in rows] == [d.isoformat() for d in days if d.day not in (3, 4)]
