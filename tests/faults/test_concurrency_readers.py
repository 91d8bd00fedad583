"""Issue 10, case 2: netCDF4/HDF5 is not thread-safe, so every read is serialized.

Without the lock, two threads reading ERA5 files at once failed with "NetCDF: HDF error" (then
reported as a truncated file, so a healthy file could be quarantined) or killed the process
with SIGBUS. Here several threads read real-format files in a loop at once and must get exactly
what a serial read gets; the unlocked case runs in a child process, since it may crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import netCDF4
import pandas as pd
import pytest
import xarray as xr

from demo_world.fixtures import tiny_era5_hourly, tiny_soundings
from demo_world.writers import (
    write_era5_new_cds,
    write_era5_old_cds,
    write_era5_zip,
    write_gosat_c3s,
    write_oco_lite,
)
from tasks.readers import read_era5, read_soundings
from tasks.readers import netcdf as netcdf_module
from tasks.readers.era5 import read_era5_file

DAY = date(2020, 6, 1)
THREADS = 4
ROUNDS = 3
REPO = Path(__file__).resolve().parents[2]


def _era5_files(folder: Path) -> list[Path]:
    """Consecutive days in the three CDS layouts, on a grid big enough for reads to overlap."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = (write_era5_zip, write_era5_new_cds, write_era5_old_cds)
    files = []
    for i in range(4):
        day = DAY + timedelta(days=i)
        hourly = tiny_era5_hourly(day, n_days=1, extra_step=False, bbox=(100.0, 28.0, 106.0, 33.0),
                                  seed=20 + i)
        files.append(writers[i % 3](folder / f"era5_single_levels_{day:%Y%m%d}.nc", hourly))
    return files


def _granules(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, mission in enumerate(("oco2", "oco3", "oco2", "oco3")):
        day = DAY + timedelta(days=i)
        files.append(write_oco_lite(folder, tiny_soundings(mission, day, n=400, seed=i), mission=mission))
    files.append(write_gosat_c3s(folder, tiny_soundings("gosat", DAY, n=200, seed=9)))
    return files


def _hammer(read, files: list[Path]) -> list[list]:
    """Every thread reads every file ROUNDS times, starting together; the results per thread."""
    start = threading.Barrier(THREADS)

    def worker(k: int) -> list:
        start.wait()
        out = []
        for r in range(ROUNDS):
            for path in files[k % len(files):] + files[:k % len(files)]:  # threads on different files
                out.append((path, read(path)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        return [f.result() for f in [pool.submit(worker, k) for k in range(THREADS)]]


def test_era5_read_from_many_threads_equals_serial_reads(tmp_path):
    files = _era5_files(tmp_path / "era5")
    serial = {path: read_era5_file(path) for path in files}
    for results in _hammer(read_era5_file, files):
        assert len(results) == ROUNDS * len(files)
        for path, ds in results:
            xr.testing.assert_identical(ds, serial[path])
    # The daily flow's read: a day's file joined with the next day's, from several threads.
    pairs = [files[i:i + 2] for i in range(len(files) - 1)]
    joined = {tuple(p): read_era5(p) for p in pairs}
    with ThreadPoolExecutor(THREADS) as pool:
        for pair, ds in zip(pairs, pool.map(read_era5, pairs)):
            xr.testing.assert_identical(ds, joined[tuple(pair)])


def test_soundings_read_from_many_threads_equal_serial_reads(tmp_path):
    files = _granules(tmp_path / "granules")
    serial = {path: read_soundings(path) for path in files}
    for results in _hammer(read_soundings, files):
        for path, df in results:
            pd.testing.assert_frame_equal(df, serial[path])


def test_every_netcdf_handle_is_opened_under_the_lock_and_closed(tmp_path, monkeypatch):
    """No read path reaches HDF5 without holding the process-wide lock."""
    files = _era5_files(tmp_path / "era5")[:3] + _granules(tmp_path / "granules")
    opened = []

    def checked_dataset(*args, **kwargs):
        ds = netCDF4.Dataset(*args, **kwargs)
        opened.append((ds, netcdf_module.HDF5_LOCK._is_owned()))
        return ds

    # Only the readers' reference: xarray keeps the real class for its isinstance checks.
    monkeypatch.setattr(netcdf_module, "netCDF4", types.SimpleNamespace(Dataset=checked_dataset))
    from tasks.readers import inspect_file

    for path in files:
        inspect_file(path)
    assert len(opened) >= 2 * len(files)  # detection, then the read (ZIPs: one per member)
    assert all(held for _, held in opened)
    assert not any(ds.isopen() for ds, _ in opened)
    assert netcdf_module.HDF5_LOCK.acquire(blocking=False)
    netcdf_module.HDF5_LOCK.release()


def test_a_crash_in_one_thread_releases_the_lock(tmp_path):
    """A damaged file read in one thread raises there and leaves the lock free for the others."""
    files = _era5_files(tmp_path / "era5")[:2]
    broken = tmp_path / "era5_single_levels_20200620.nc"
    broken.write_bytes(files[1].read_bytes()[: files[1].stat().st_size // 2])
    from tasks.io.quarantine import InputFileError

    with pytest.raises(InputFileError, match=broken.name):
        read_era5_file(broken)
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(read_era5_file, files[0]).result(timeout=60) is not None
    assert netcdf_module.HDF5_LOCK.acquire(blocking=False)
    netcdf_module.HDF5_LOCK.release()


_UNLOCKED = textwrap.dedent("""
    import contextlib, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    import tasks.readers.netcdf as nc
    from tasks.readers.era5 import read_era5_file
    import tasks.readers.era5 as era5
    nc.HDF5_LOCK = era5.HDF5_LOCK = contextlib.nullcontext()  # the code as it was
    files = [Path(p) for p in sys.argv[1:]]
    start = threading.Barrier(6)
    def work(k):
        start.wait()
        for _ in range(5):
            for p in files:
                read_era5_file(p)
    with ThreadPoolExecutor(6) as pool:
        for f in [pool.submit(work, k) for k in range(6)]:
            f.result()
    print("no failure")
""")


@pytest.mark.slow
def test_without_the_lock_threaded_era5_reads_fail(tmp_path):
    """The lock is what makes the threaded reads work: the same load without it fails (an
    InputFileError from "NetCDF: HDF error", or the process dies of a signal)."""
    files = _era5_files(tmp_path / "era5")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _UNLOCKED, *map(str, files)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode != 0, "threaded ERA5 reads without the lock did not fail this time"
    assert proc.returncode < 0 or "HDF error" in proc.stderr or "InputFileError" in proc.stderr, proc.stderr[-2000:]
