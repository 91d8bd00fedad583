"""Issue 10, case 3: the temporary Prefect server of a command dies with it, however it ends.

Before, Prefect's own ephemeral server inherited the command's stdout/stderr and was stopped only
by an atexit hook: each kill -9 of `xco2 daily` left one running (parent 1), holding the caller's
pipe, so a script capturing the output hung. Here a child process enters
flows.prefect_server.prefect_api() exactly as the command line does, makes a Prefect client (which
is when Prefect starts its ephemeral server: here, ours), and is killed or exits.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from test_processes_support import REPO, SERVER_MARK, child_env, live_processes, start, wait_until_gone

STARTUP_S = 240  # the first start migrates a fresh SQLite database; two busy cores are slow at it

# What `xco2 daily` does around its flow, without the flow: the API for this command, then what
# a flow run does first (a client, from a worker thread here: the server must outlive that thread).
_COMMAND = """
import json, os, sys, threading, time
from flows.prefect_server import prefect_api
with prefect_api() as server:
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer
    asked = threading.Thread(target=lambda: get_client(sync_client=True))
    asked.start()
    asked.join()
    print("API " + json.dumps({"url": server.api_url, "prefect": SubprocessASGIServer().api_url,
                               "env": os.environ.get("PREFECT_API_URL")}), flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


def _run(prefect_home: Path, mode: str):
    import sys

    return start([sys.executable, "-c", _COMMAND, mode], child_env(prefect_home), REPO)


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_a_killed_command_leaves_no_server_and_its_pipe_reaches_eof(prefect_home):
    proc, out = _run(prefect_home, "hang")
    try:
        api = json.loads(out.wait_for("API ", STARTUP_S).split(" ", 1)[1])
        assert api["prefect"] == api["url"] == api["env"]  # Prefect and child processes use ours
        assert _health(api["url"])
        servers = {pid: cmd for pid, cmd in live_processes(proc.pid).items() if SERVER_MARK in cmd}
        assert len(servers) == 1, live_processes(proc.pid)
        (server_pid,) = servers
        assert os.getpgid(server_pid) == server_pid  # its own group: a terminal's Ctrl-C goes to the command
        # Not the caller's pipe: stdin from /dev/null, stdout and stderr to its log file.
        fds = {n: os.readlink(f"/proc/{server_pid}/fd/{n}") for n in (0, 1, 2)}
        log = prefect_home / "xco2-servers" / f"server-{proc.pid}.log"
        assert fds == {0: "/dev/null", 1: str(log), 2: str(log)}, fds

        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_until_gone(proc.pid, timeout=10)
        assert not left, f"alive after the command was killed: {left}"
        assert out.eof.wait(timeout=5), "the command's output pipe is still held open"
        assert time.monotonic() - t0 < 15
        assert not _health(api["url"])
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in live_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
    # The killed command's server log stays for the operator; the next start removes it.
    assert list((prefect_home / "xco2-servers").glob(f"server-{proc.pid}.log"))


def test_a_normal_exit_stops_the_server_and_leaves_nothing(prefect_home):
    proc, out = _run(prefect_home, "exit")
    try:
        api = json.loads(out.wait_for("API ", STARTUP_S).split(" ", 1)[1])
        assert proc.wait(timeout=60) == 0
        out.wait_for("DONE", 5)
        assert out.eof.wait(timeout=5)
        assert not wait_until_gone(proc.pid, timeout=10)
        assert not _health(api["url"])
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = sorted(p.name for p in (prefect_home / "xco2-servers").glob("server-*.log"))
    assert logs == [], f"server logs left after a clean stop (or of dead commands): {logs}"


def test_a_configured_api_is_used_and_no_server_started(prefect_harness, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    from flows import prefect_server

    started = []
    monkeypatch.setattr(prefect_server.TemporaryPrefectServer, "start", lambda self: started.append(self))
    assert PREFECT_API_URL.value()
    with prefect_server.prefect_api() as server:
        assert server is None
    assert started == []


def test_a_command_that_fails_before_its_flow_starts_no_server(tmp_path, monkeypatch, capsys):
    """Prefect starts the server only when a flow needs it: a bad report window fails at once."""
    import flows.cli as cli
    from flows import prefect_server

    started = []
    monkeypatch.setattr(prefect_server.TemporaryPrefectServer, "start", lambda self, timeout=None: started.append(1))
    monkeypatch.setattr(prefect_server, "configured_api_url", lambda: None)  # as outside the tests
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["report", "--start", "2021-03-02", "--end", "2021-03-01"]) == 2
    assert "after end" in capsys.readouterr().err and started == []


def test_only_commands_that_run_flows_get_a_server(monkeypatch, tmp_path):
    import flows.cli as cli
    import flows.prefect_server as prefect_server

    entered = []

    class Recorder:
        def __init__(self, database_url=None):
            self.database_url = database_url

        def __enter__(self):
            entered.append(self.database_url)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(prefect_server, "prefect_api", Recorder)
    monkeypatch.setenv("XCO2_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["features"]) == 0 and entered == []
    monkeypatch.setattr(cli, "_cmd_daily", lambda args: 0)
    monkeypatch.setattr(cli, "_join_running_stack", lambda args: None, raising=False)
    monkeypatch.setenv("XCO2_STACK_DIR", str(tmp_path / "stack"))
    assert cli.main(["daily"]) == 0
    # Its server keeps the runs where a later `make up` finds them: the stack's database.
    assert entered == [f"sqlite+aiosqlite:///{tmp_path / 'stack' / 'prefect' / 'prefect.db'}"]
