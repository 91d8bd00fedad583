"""deployments/stack.py's process bookkeeping, without servers (fast)."""

from __future__ import annotations

import sys

import psutil
import pytest

from deployments import stack


@pytest.fixture
def cfg(tmp_path):
    return stack.StackConfig.from_env({}, state_dir=tmp_path / "state")


@pytest.fixture
def sleeper(cfg):
    pid = stack._spawn(cfg, "worker", [sys.executable, "-c", "import time; time.sleep(60)"], cfg.process_env())
    yield pid
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


def test_a_process_just_spawned_is_ours(cfg, sleeper):
    # Its command line says nothing of `prefect worker`: the pid file's start time identifies it,
    # right after the spawn (while exec completes the command line can read empty).
    proc = stack._process(cfg, "worker")
    assert proc is not None and proc.pid == sleeper
    pid, started = cfg.pid_file("worker").read_text().split()
    assert int(pid) == sleeper and float(started) == psutil.Process(sleeper).create_time()


def test_a_reused_pid_is_not_ours(cfg, sleeper):
    cfg.pid_file("worker").write_text(f"{sleeper} {psutil.Process(sleeper).create_time() - 100.0!r}\n")
    assert stack._process(cfg, "worker") is None


def test_an_older_pid_file_is_checked_by_command_line(cfg, sleeper):
    cfg.pid_file("worker").write_text(f"{sleeper}\n")
    assert stack._process(cfg, "worker") is None  # `python -c ...` is not `prefect worker`


def test_stop_ends_the_process_and_removes_its_pid_file(cfg, sleeper):
    assert stack._stop(cfg, "worker", grace=10) == f"stopped (pid {sleeper})"
    assert not cfg.pid_file("worker").exists()
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == psutil.STATUS_ZOMBIE
    assert stack._stop(cfg, "worker") == "not running"


def test_status_of_nothing_running_fails(cfg, capsys):
    assert stack.status(cfg) != 0
    assert "stopped" in capsys.readouterr().out


def test_the_prefect_ui_calls_the_stacks_own_port(tmp_path, monkeypatch):
    # `prefect server start --port` does not tell the UI: its pages would call port 4200 and show
    # "Can't connect to Server API" on any other port (seen by tests/test_stack_browser.py).
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    cfg = stack.StackConfig.from_env({"XCO2_STACK_PREFECT_PORT": "4311"}, state_dir=tmp_path / "state")
    _, argv, env = stack.server_plans(cfg)["prefect-server"]
    assert argv[argv.index("--port") + 1] == "4311"
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4311/api"
    wildcard = stack.StackConfig.from_env({}, state_dir=tmp_path / "state", host="0.0.0.0")
    assert stack.server_plans(wildcard)["prefect-server"][2]["PREFECT_UI_API_URL"] == "http://localhost:4200/api"
    # A proxy's address, set by the operator, is kept.
    monkeypatch.setenv("PREFECT_UI_API_URL", "https://prefect.example.org/api")
    assert stack.server_plans(cfg)["prefect-server"][2]["PREFECT_UI_API_URL"] == "https://prefect.example.org/api"


def test_a_server_that_ends_while_reported_running_is_not_asked_twice(cfg, monkeypatch, capsys):
    # `up` names the pid of a server it found running; asking for the process a second time to
    # print it (as it once did) raised AttributeError when the server ended in between.
    answers = {"prefect-server": [psutil.Process(), None], "mlflow-server": [psutil.Process(), None]}
    monkeypatch.setattr(stack, "_process", lambda _cfg, name: answers[name].pop(0))
    assert stack._start_servers(cfg) == []
    out = capsys.readouterr().out
    pid = psutil.Process().pid
    assert f"prefect-server: already running (pid {pid})" in out
    assert f"mlflow-server: already running (pid {pid})" in out
