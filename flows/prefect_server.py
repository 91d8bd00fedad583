"""The temporary Prefect server of one `xco2` command, which cannot outlive it.

With no PREFECT_API_URL, Prefect starts an ephemeral API server as a child process on its
own: that child inherits the command's stdout and stderr and is stopped only by an atexit
hook. A command killed with SIGKILL (or crashing in native code) never runs the hook, so the
server lives on, orphaned, holding the caller's pipes: a script that captures the output of
`xco2 daily` waits forever. So the command line starts the server itself:

- through a tiny launcher that sets PR_SET_PDEATHSIG to SIGKILL (Linux) and then execs the
  same uvicorn command Prefect would run: the kernel kills the server the moment the process
  that started it dies, however it dies. Checked after the prctl: if the parent is already
  gone, the launcher exits instead of serving;
- in its own process group, so a Ctrl-C in the terminal reaches the command (which then stops
  the server in order) rather than killing the server under a flow still reporting to it;
- with stdin from /dev/null and stdout/stderr to a log file under PREFECT_HOME
  (`xco2-servers/server-<pid>.log`, removed after a clean stop), never the caller's pipes;
- on a free loopback port, against the SQLite database Prefect's settings name (PREFECT_HOME's
  by default, as the ephemeral server would), waited on until /api/health answers;
- and stopped (SIGTERM, then SIGKILL after a grace period) when the command ends normally or
  by an exception, after the log and event workers have drained into it.

A configured PREFECT_API_URL (environment or Prefect profile: `make up`'s stack, say) is used
as it is, and no server is started.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
os.setpgid(0, 0)
try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
except (AttributeError, OSError):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TemporaryPrefectServer:
    """One Prefect API server for the life of this process (see the module docstring)."""

    def __init__(self, log_dir: Path, startup_timeout: float = STARTUP_TIMEOUT_S):
        self.log_dir = Path(log_dir)
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.log_dir / f"server-{os.getpid()}.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

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

    def start(self) -> str:
        """Start the server and wait until it answers; its API URL."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_logs()
        deadline = time.monotonic() + self.startup_timeout
        for _attempt in range(_PORT_ATTEMPTS):
            self.port = _free_loopback_port()
            with open(self.log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=self._env(), close_fds=True)
            log.info("starting a temporary Prefect server on %s (pid %d, log %s)",
                     self.api_url, self.process.pid, self.log_path)
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    break
                if self._healthy():
                    return self.api_url
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
        clean = True
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
        pending = EventsWorker.drain_all()
        if inspect.isawaitable(pending):
            await pending

    try:
        run_coro_as_sync(drain())
    except Exception as exc:  # noqa: BLE001 - losing a last log line must not fail the command
        log.warning("could not flush Prefect logs and events before stopping the server: %s", exc)


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API for this command: the configured one, else a temporary server that dies
    with this process. Enter it from the main thread (the death signal follows the thread that
    started the server)."""
    url = configured_api_url()
    if url:
        yield url
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    server = TemporaryPrefectServer(Path(PREFECT_HOME.value()) / "xco2-servers")
    url = server.start()
    previous = os.environ.get("PREFECT_API_URL")
    # The environment too: processes this command starts (a local Dask cluster) report to it.
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()
