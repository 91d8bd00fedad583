"""Helpers of the process tests (issue 10, case 3): which processes of a session are alive, and
reading a child's output pipe to its end without hanging the test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVER_MARK = "prefect.server.api.server:create_app"


def live_processes(session: int) -> dict[int, str]:
    """pid -> command line of every process of a session that is not a zombie (a zombie holds no
    pipe and no port; in a container nothing may reap it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == session and fields[0] not in ("Z", "X"):
            found[int(entry.name)] = cmdline.strip()
    return found


def wait_until_gone(session: int, timeout: float) -> dict[int, str]:
    """The live processes of the session left after waiting up to `timeout` seconds for none."""
    deadline = time.monotonic() + timeout
    while True:
        left = live_processes(session)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


class PipeReader:
    """Reads a child's stdout in a thread: the lines so far, and whether EOF was seen."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.eof = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        self.eof.set()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.eof.is_set():
                    raise AssertionError(f"no line with {text!r} within {timeout:.0f} s; output:\n"
                                         + "\n".join(self.lines[-40:]))
                self._changed.wait(min(left, 1.0))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def child_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a child `xco2`: no Prefect API configured, its own Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XCO2_", "PREFECT_API"))}
    env.update({"PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})
    return env


def start(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, PipeReader]:
    """A child in a new session (its id is the child's pid), stdout and stderr on one pipe, as a
    script capturing the output of a command would run it."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=cwd, start_new_session=True)
    return proc, PipeReader(proc.stdout)


def xco2() -> list[str]:
    """The installed `xco2` command, as an operator runs it."""
    script = Path(sys.executable).parent / "xco2"
    return [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
