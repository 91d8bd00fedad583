"""The temporary Prefect server of one `xco2` command, which cannot outlive it.

With no PREFECT_API_URL, Prefect starts an ephemeral API server as a child process on its
own: that child inherits the command's stdout and stderr and is stopped only by an atexit
hook. A command killed with SIGKILL (or crashing in native code) never runs the hook, so the
server lives on, orphaned, holding the caller's pipes: a script that captures the output of
`xco2 daily` waits forever. So the command line hands Prefect a server of its own making, in
the slot where Prefect looks for its ephemeral server (`SubprocessASGIServer._instances[None]`,
as Prefect's own test harness does): Prefect still starts it only when a flow first needs the
API (a command that fails before its flow starts none), and it is started

- from a thread that lives as long as the process (the death signal follows the thread that
  forked the child, not the process), through a tiny launcher that sets PR_SET_PDEATHSIG to SIGKILL (Linux) and then execs the
  same uvicorn command Prefect would run: the kernel kills the server the moment the process
  that started it dies, however it dies. Checked after the prctl: if the parent is already
  gone, the launcher exits instead of serving;
- in its own process group, so a Ctrl-C in the terminal reaches the command (which then stops
  the server in order) rather than killing the server under a flow still reporting to it;
- with stdin from /dev/null and stdout/stderr to a log file under PREFECT_HOME
  (`xco2-servers/server-<pid>.log`, removed after a clean stop), never the caller's pipes;
- on a free loopback port, against the SQLite database the command names (the local stack's, so
  that `make up` later shows the command's runs: deployments/stack.py command_prefect_database) or
  else the one Prefect's settings name (PREFECT_HOME's, as the ephemeral server would), waited on
  until /api/health answers;
- with PREFECT_API_URL set in the environment once it answers, so that processes the command
  starts later (a local Dask cluster) report to it instead of starting servers of their own;
- and stopped (SIGTERM, then SIGKILL after a grace period) when the command ends normally or
  by an exception, after the log and event workers have drained into it.

A configured PREFECT_API_URL (environment or Prefect profile: `make up`'s stack, say) is used
as it is, and no server is started.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, cast

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0  # first start migrates a new SQLite database: slow on a busy 2-core host
STOP_GRACE_S = 10.0
# uvicorn's exit status when it cannot bind its port (another process took the free port we found).
_UVICORN_STARTUP_FAILURE = 3
_PORT_ATTEMPTS = 3

# Runs in the child between fork and the server: ask the kernel for SIGKILL when the parent dies
# (kept across execve), then replace this interpreter with the server. A launcher rather than
# preexec_fn, which is unsafe when the parent has threads.
_LAUNCHER = r"""
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if hasattr(os, "setpgid"):
    os.setpgid(0, 0)
try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
except (AttributeError, OSError, TypeError):
    prctl = None  # not Linux: the parent's clean stop is all there is
if prctl is not None and prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
    sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
if os.getppid() != parent:
    sys.exit("the xco2 command that started this server has already exited")
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class PrefectServerError(RuntimeError):
    pass


def configured_api_url() -> str | None:
    """The Prefect API this process is already pointed at (environment, profile, or a test
    harness's temporary settings), or None."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_spawner_lock = threading.Lock()
# (argv, Popen keyword arguments, where the child or the error goes) for the spawner thread.
_SpawnRequest = tuple[list[str], dict[str, Any], "Future[subprocess.Popen[Any]]"]
_spawn_requests: "queue.SimpleQueue[_SpawnRequest] | None" = None


def _spawner(requests: "queue.SimpleQueue[_SpawnRequest]") -> None:
    while True:  # never returns: the thread must outlive every child it started
        argv, kwargs, done = requests.get()
        try:
            done.set_result(subprocess.Popen(argv, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)


def _popen_from_lifetime_thread(argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """subprocess.Popen run on a daemon thread that lives until the process exits. The parent
    death signal fires when the *thread* that forked the child ends: Prefect may ask for the
    server from a worker thread that ends long before the command does."""
    global _spawn_requests
    with _spawner_lock:
        if _spawn_requests is None:
            _spawn_requests = queue.SimpleQueue()
            threading.Thread(target=_spawner, args=(_spawn_requests,), name="xco2-server-spawner",
                             daemon=True).start()
    done: Future[subprocess.Popen[Any]] = Future()
    _spawn_requests.put((argv, kwargs, done))
    return done.result()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TemporaryPrefectServer:
    """One Prefect API server for the life of this process (see the module docstring). It offers
    what Prefect uses of its SubprocessASGIServer: start(timeout), server_process, api_url, stop()."""

    def __init__(self, log_dir: Path, startup_timeout: float = STARTUP_TIMEOUT_S, database_url: str | None = None):
        self.log_dir = Path(log_dir)
        self.database_url = database_url  # None: the one Prefect's settings name
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.log_dir / f"server-{os.getpid()}.log"
        self._lock = threading.Lock()  # Prefect's log and event threads may ask at the same time

    @property
    def server_process(self) -> subprocess.Popen | None:
        return self.process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.address}/api"

    def _argv(self) -> list[str]:
        import prefect

        return [sys.executable, "-c", _LAUNCHER, str(os.getpid()),
                "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on"]

    def _env(self) -> dict[str, str]:
        from prefect.settings import get_current_settings

        env = {**os.environ,
               # What Prefect's own ephemeral server sets: no UI to build, ephemeral services.
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               **get_current_settings().to_environment_variables(exclude_unset=True)}
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return env

    def _remove_stale_logs(self) -> None:
        # Logs of servers whose command was killed (a clean stop removes its own).
        for old in self.log_dir.glob("server-*.log"):
            try:
                pid = int(old.stem.split("-", 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and not _alive(pid):
                old.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float | None = None) -> str:
        """Start the server (once) and wait until it answers; its API URL. Prefect's own startup
        timeout is ignored: 20 s is too short for a first migration on a busy host."""
        with self._lock:
            if not self.running:
                self._start()
                os.environ["PREFECT_API_URL"] = self.api_url
        return self.api_url

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_logs()
        deadline = time.monotonic() + self.startup_timeout
        for _attempt in range(_PORT_ATTEMPTS):
            self.port = _free_loopback_port()
            with open(self.log_path, "ab") as log_file:
                self.process = _popen_from_lifetime_thread(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=self._env(), close_fds=True)
            log.info("starting a temporary Prefect server on %s (pid %d, log %s)",
                     self.api_url, self.process.pid, self.log_path)
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    break
                if self._healthy():
                    return
                time.sleep(0.2)
            else:
                self.stop(keep_log=True)
                raise PrefectServerError(
                    f"the temporary Prefect server did not answer on {self.api_url} within "
                    f"{self.startup_timeout:.0f} s (log {self.log_path}):\n{self._log_tail()}")
            if code != _UVICORN_STARTUP_FAILURE:
                break
        self.process = None
        raise PrefectServerError(
            f"the temporary Prefect server exited with status {code} before answering "
            f"(log {self.log_path}):\n{self._log_tail()}")

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, SIGKILL after a grace period); idempotent."""
        process, self.process = self.process, None
        # A server that died on its own keeps its log: it is all there is to say why.
        clean = process is None or process.poll() in (None, 0)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("the temporary Prefect server (pid %d) did not stop within %.0f s: killed",
                            process.pid, STOP_GRACE_S)
                process.kill()
                process.wait()
                clean = False
        if clean and not keep_log:
            self.log_path.unlink(missing_ok=True)


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued to the server before it stops (as Prefect's own
    test harness does), so the run's last records are not lost to connection errors."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            pending = APILogWorker.instance().drain()
            if inspect.isawaitable(pending):
                await pending
        except RuntimeError:
            pass  # never started: nothing to send
        pending_events = EventsWorker.drain_all()
        if inspect.isawaitable(pending_events):
            await pending_events

    try:
        run_coro_as_sync(drain())
    except Exception as exc:  # noqa: BLE001 - losing a last log line must not fail the command
        log.warning("could not flush Prefect logs and events before stopping the server: %s", exc)


@contextmanager
def prefect_api(database_url: str | None = None) -> Iterator[TemporaryPrefectServer | None]:
    """For one command: None when a Prefect API is configured (used as it is); else the
    temporary server Prefect will start when a flow first needs it, stopped on the way out, on
    `database_url` (None: the database Prefect's settings name)."""
    if configured_api_url():
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    server = TemporaryPrefectServer(Path(PREFECT_HOME.value()) / "xco2-servers", database_url=database_url)
    # Prefect's slot holds SubprocessASGIServers; ours stands in for one by shape (what Prefect
    # calls of it, TemporaryPrefectServer's docstring), not by class.
    registry = cast(dict[int | None, object], SubprocessASGIServer._instances)
    previous = registry.get(None)
    registry[None] = server  # what `SubprocessASGIServer()` returns from now on
    try:
        yield server
    finally:
        try:
            if server.running:
                _drain_prefect_workers()
        finally:
            server.stop()
            if registry.get(None) is server:
                if previous is None:
                    registry.pop(None, None)
                else:
                    registry[None] = previous
            if os.environ.get("PREFECT_API_URL") == server.api_url:
                os.environ.pop("PREFECT_API_URL", None)
