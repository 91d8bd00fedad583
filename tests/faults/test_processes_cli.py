"""Issue 10, case 3 as an operator meets it: `xco2 daily` on a tiny demo world, its output captured
through a pipe, killed with SIGKILL in the middle of its flow run, or left to finish.

The killed run takes about 40 s on two cores (a tiny demo world, a fresh Prefect database, the
flow's start); the run left to finish, after it on the same data, is marked slow. The mechanism
alone is tested in test_processes_server.py.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import date

import pytest

from test_processes_support import SERVER_MARK, child_env, live_processes, start, wait_until_gone, xco2

START, END = date(2020, 6, 1), date(2020, 6, 2)
STARTUP_S = 300


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from flows.demo import SMALL_REGION
    from demo_world import write_demo_world

    root = tmp_path_factory.mktemp("processes")
    data = root / "xco2-data"
    write_demo_world(data / "demo", SMALL_REGION, START, END + (END - START), grid_step=0.01, seed=3, dense=True)
    region = {f"XCO2_REGION__{k.upper()}": str(v) for k, v in SMALL_REGION.model_dump().items()}
    env = child_env(root / "prefect-home", XCO2_DATA_DIR=str(data), XCO2_SOURCE="demo",
                    XCO2_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                    PREFECT_LOGGING_LEVEL="INFO", **region)
    return root, env


def _daily(world):
    root, env = world
    return start([*xco2(), "daily", "--start", START.isoformat(), "--end", END.isoformat()], env, root)


def test_killed_daily_leaves_no_process_and_releases_the_pipe(tiny_world):
    proc, out = _daily(tiny_world)
    try:
        out.wait_for("Beginning flow run", STARTUP_S)  # mid-run: the flow is running against the server
        before = live_processes(proc.pid)
        assert any(SERVER_MARK in cmd for cmd in before.values()), before
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        proc.wait(timeout=10)
        left = wait_until_gone(proc.pid, timeout=10)
        assert not left, f"alive after `xco2 daily` was killed: {left}"
        assert out.eof.wait(timeout=5), "a reader of the output pipe would hang"
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in live_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_daily_that_finishes_leaves_no_process(tiny_world):
    """After the killed run (same data): the rerun completes and leaves nothing behind."""
    proc, out = _daily(tiny_world)
    try:
        assert proc.wait(timeout=600) == 0, out.text[-4000:]
        assert out.eof.wait(timeout=10)
        assert not wait_until_gone(proc.pid, timeout=10)
        assert "Finished in state Completed" in out.text
    finally:
        if proc.poll() is None:
            proc.kill()
    root = tiny_world[0]
    assert sorted((root / "prefect-home" / "xco2-servers").glob("*.log")) == []
