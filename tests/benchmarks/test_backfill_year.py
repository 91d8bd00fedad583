"""`xco2 backfill`'s pool over a demo world's days, network share 0 and 1 (`make bench`, issue 23):
days per hour, the workers' peak memory, and whether a day's time or a worker's memory grows as
the days go by (the days in four quarters, in the order they finished).

By default 8 days over the small region (`xco2 demo --small`'s 0.5 x 0.5 degree box, its dense
soundings), so that `make bench` stays short. The year, and the Sichuan province's window that the
decade's projection needs, are the same benchmark with larger sizes (docs/inference-speed.md):

    BACKFILL_BENCH_DAYS=365 .venv/bin/python -m pytest -q -s -m slow \\
        tests/benchmarks/test_backfill_year.py -p no:cacheprovider
    BACKFILL_BENCH_REGION=sichuan BACKFILL_BENCH_DAYS=30 BACKFILL_BENCH_SHARE1_DAYS=12 ...

BACKFILL_BENCH_START (ISO day, default 2019-01-01) is the world's first day;
BACKFILL_BENCH_SHARE1_DAYS maps only the first so many days at share 1 (a province day at share 1
costs minutes on two cores). A world of a year is written under pytest's temporary folder
(`--basetemp` to put it elsewhere): about 1.3 MB a day over the small region, 17 MB a day over Sichuan.

The world is written and ingested as in the province-day benchmark (write_demo_world, then the
daily update without a champion); the two champions are exported from one random-weight network
with the background fitted to the world's samples (tests/benchmarks/test_province_day.py), and each
maps every day into a fresh archive with tasks/mapping/backfill_pool.py's map_days_in_processes,
the pool `xco2 backfill` runs (spawned workers, one per core, one ONNX Runtime thread each), its
residual cache filled as it goes, as a real backfill's is. Figures are printed; the test asserts
behaviour only (every day published, on the path its share asks for).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.gridding.geometry import Grid
from tasks.mapping.backfill_pool import DayDone, PoolPlan, map_days_in_processes
from tasks.regions.boundary import region_mask
from tasks.settings import Region, load_settings
from tasks.steps.demo import SMALL_REGION
from tests.benchmarks.test_province_day import GPU_FP32_PEAK_TFLOPS, GPU_HOST_CORES, _champions, _WorkersPeak

pytestmark = pytest.mark.slow

REGION = os.environ.get("BACKFILL_BENCH_REGION", "small")
DAYS = int(os.environ.get("BACKFILL_BENCH_DAYS", "8"))
START = date.fromisoformat(os.environ.get("BACKFILL_BENCH_START", "2019-01-01"))
SHARE1_DAYS = int(os.environ.get("BACKFILL_BENCH_SHARE1_DAYS", str(DAYS)))
DECADE_DAYS = (date(2025, 1, 1) - date(2015, 1, 1)).days
QUARTERS = 4


def _region() -> Region:
    if REGION == "small":
        return SMALL_REGION
    if REGION == "sichuan":
        return Region()
    raise ValueError(f"BACKFILL_BENCH_REGION must be small or sichuan, not {REGION!r}")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return text.split("model name", 1)[-1].split("\n", 1)[0].strip(": \t") or "unknown"


def _worker_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live worker in MB; zeros once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss, hwm = (int(status.split(f"{key}:", 1)[1].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
        return rss, hwm
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


@dataclass
class _Finished:
    """What the parent saw as each day finished: when, the worker's seconds on it, its memory."""

    t0: float
    load: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    hwm: list[float] = field(default_factory=list)

    def __call__(self, done: DayDone) -> None:
        rss, hwm = _worker_mb(done.worker_pid)
        self.at.append(time.perf_counter() - self.t0)
        self.seconds.append(done.seconds)
        self.rss.append(rss)
        self.hwm.append(hwm)
        self.load.append(os.getloadavg()[0])


@pytest.fixture(scope="module")
def world(prefect_harness, tmp_path_factory):
    from demo_world import write_demo_world
    from flows.daily import daily_update

    root = tmp_path_factory.mktemp(f"backfill-{REGION}-{DAYS}")
    region = _region()
    overrides = {"data_dir": str(root / "data"), "source": "demo", "seed": 20200601, "region": region.model_dump()}
    settings = load_settings(**overrides)
    end = START + timedelta(days=DAYS - 1)
    t = time.perf_counter()
    write_demo_world(settings.data_dir / "demo", settings.region, START, end, grid_step=settings.grid_step,
                     seed=20200601, dense=REGION == "small")
    written = time.perf_counter() - t
    daily_update(start=START.isoformat(), end=end.isoformat(), overrides=overrides)
    ingested = time.perf_counter() - t - written
    print(f"\n[bench] demo world over {region.name} ({DAYS} days from {START}): written in {written:.0f} s, "
          f"ingested in {ingested:.0f} s ({(written + ingested) / DAYS:.1f} s a day)")
    return root, overrides


# A year over the small region is about half an hour a share on two cores; Sichuan's share-1 days
# minutes each. pyproject's 900 s is for tests.
@pytest.mark.timeout(max(3600, 600 * DAYS))
def test_backfill_days_per_hour_and_memory_both_shares(world):
    root, overrides = world
    settings = load_settings(**overrides)
    grid = Grid.for_region(settings.region, settings.grid_step)
    cells = int(region_mask(settings.region, grid).sum())
    end = START + timedelta(days=DAYS - 1)
    champions = _champions(root, settings.region_dir, START, end)
    print(f"[bench] backfill: {settings.region.name}, {grid.nx} x {grid.ny} cells, {cells:,} inside the boundary; "
          f"{_cpu_model()}, {os.cpu_count()} CPUs; process workers (map_days_in_processes, as `xco2 backfill`), "
          f"a fresh archive and residual cache each share")
    print(f"[bench] {'network share':<15}{'days':>6}{'workers':>9}{'days/hour':>11}{'s/day (worker)':>16}"
          f"{'peak RSS MB (worker)':>22}{'load at start':>15}{'decade h':>10}")
    quarters: dict[float, list[str]] = {}
    worker_s: dict[float, float] = {}
    for share, champion in champions.items():
        days = [START + timedelta(days=i) for i in range(SHARE1_DAYS if share > 0 else DAYS)]
        plan = PoolPlan.for_days(len(days))
        run = load_settings(**overrides, archive_dir=str(root / f"archive-share{share:g}"))
        load = os.getloadavg()[0]
        finished = _Finished(time.perf_counter())
        with _WorkersPeak() as workers:
            rows, failed = map_days_in_processes(run, grid, days, champion, on_done=finished)
        seconds = time.perf_counter() - finished.t0
        assert not failed, failed
        assert [r["day"] for r in rows] == [d.isoformat() for d in days]
        assert all(Path(r["path"]).is_file() for r in rows)
        assert all(r["network_pass"] is (share > 0) for r in rows)
        per_hour = 3600 * len(days) / seconds
        peak = max(workers.peak, *finished.hwm)
        print(f"[bench] {share:<15g}{len(days):>6}{f'{plan.workers} x {plan.threads_per_worker}t':>9}{per_hour:>11.1f}"
              f"{sum(finished.seconds) / len(days):>16.2f}{peak:>22,.0f}{load:>15.1f}{DECADE_DAYS / per_hour:>10,.1f}")
        quarters[share] = _quarters(finished)
        worker_s[share] = sum(finished.seconds) / len(days)
    for share, lines in quarters.items():
        print(f"[bench] share {share:g} by quarter of its days (in the order they finished): " + "; ".join(lines))
    print(f"[bench] decade h: {DECADE_DAYS:,} days of this region at the rate measured here, on "
          f"{os.cpu_count()} CPUs")
    # One H100/H200, PROJECTED (no GPU measured here): the network at the fp32 peak, a lower bound
    # on its time; the rest of a day is CPU work, a share-0 day's worker seconds (one core each),
    # shared out over the device machine's cores, one worker per core.
    network_s = cells * champions[1.0].flops / (GPU_FP32_PEAK_TFLOPS * 1e12)
    cpu_h = DECADE_DAYS * worker_s[0.0] / GPU_HOST_CORES / 3600
    print(f"[bench] {DECADE_DAYS:,} days of this region on one H100/H200, PROJECTED: the network "
          f"{network_s:.3g} s/day at {GPU_FP32_PEAK_TFLOPS:g} TFLOP/s fp32 = {DECADE_DAYS * network_s / 3600:.3g} h "
          f"on the GPU; the rest of a day {worker_s[0.0]:.1f} s of one core (share 0's s/day here) over "
          f"{GPU_HOST_CORES} host cores = {cpu_h:.2f} h; share 1 {max(cpu_h, DECADE_DAYS * network_s / 3600):.2f} h, "
          f"share 0 {cpu_h:.2f} h")


def _quarters(finished: _Finished) -> list[str]:
    """Days/hour, the workers' mean seconds a day, their resident and peak memory, the load: per
    quarter of the days, so that growth over the run shows."""
    n = len(finished.at)
    if n < 4 * QUARTERS:  # two workers finish days in pairs: a quarter of a pair or two is no rate
        return [f"{n} days: too few for quarters"]
    bounds = [round(n * q / QUARTERS) for q in range(QUARTERS + 1)]
    lines = []
    for q in range(QUARTERS):
        lo, hi = bounds[q], bounds[q + 1]
        span = finished.at[hi - 1] - (finished.at[lo - 1] if lo else 0.0)
        lines.append(f"Q{q + 1} days {lo + 1}-{hi}: {3600 * (hi - lo) / max(span, 1e-9):.1f} days/hour, "
                     f"{sum(finished.seconds[lo:hi]) / (hi - lo):.2f} s/day, RSS {max(finished.rss[lo:hi]):,.0f} MB, "
                     f"VmHWM {max(finished.hwm[lo:hi]):,.0f} MB, load {finished.load[hi - 1]:.1f}")
    return lines
