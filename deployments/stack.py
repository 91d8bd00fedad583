"""The local xco2 stack: a Prefect server, an MLflow tracking server and a process worker.

    python -m deployments.stack up       # start (or complete) the stack, apply the deployments
    python -m deployments.stack status   # what runs, and whether it answers
    python -m deployments.stack down     # stop everything (idempotent)
    python -m deployments.stack deploy   # only: create the work pool, apply deployments/prefect.yaml

The state directory (default `./.xco2-stack`) holds one pid file and one log per process
(`<name>.pid`, `logs/<name>.log`), Prefect's home and SQLite database (`prefect/`), `stack.json`
(what `up` started, for `status` and for the `xco2` command line) and `env`, the environment that
points a shell at the stack (`source .xco2-stack/env`): PREFECT_API_URL, XCO2_MLFLOW_TRACKING_URI,
XCO2_DATA_DIR, XCO2_SOURCE, XCO2_STACK_DIR.

One model registry: the MLflow server serves the data directory's store, the one the command line
uses without a stack (`<data dir>/mlflow.db`, artifacts in `<data dir>/mlartifacts`), so a champion
that `xco2 demo` made before `up` is the stack's champion, and runs the stack records stay visible
to the command line after `down`. With XCO2_STACK_MLFLOW_BACKEND_URI (PostgreSQL) the server keeps
that database; its artifacts still go to `<data dir>/mlartifacts`. While the stack runs, `xco2`
commands find it through `stack.json` (use_running_stack) and record into the same server.

Configuration (environment; command-line options win):

    XCO2_STACK_DIR                state directory                         ./.xco2-stack
    XCO2_STACK_HOST               address the servers bind to             127.0.0.1
    XCO2_STACK_PREFECT_PORT       Prefect API and UI                      4200
    XCO2_STACK_MLFLOW_PORT        MLflow tracking server and UI           5000
    XCO2_STACK_DATABASE_URL       Prefect database (postgresql+asyncpg://user:pw@host/db)
                                                                          SQLite in the state dir
    XCO2_STACK_MLFLOW_BACKEND_URI MLflow backend store (postgresql://...) XCO2_MLFLOW_TRACKING_URI
                                  when it names a database, else <data dir>/mlflow.db
    XCO2_STACK_TIMEOUT            seconds to wait for health checks       240

The worker's flow runs start in the repository with the environment above, so they use the
stack's MLflow server; XCO2_DATA_DIR (default ./xco2-data) is taken from the environment of `up`, as
is every other XCO2_* setting. The region and source are the data directory's own when it records
them (`<data dir>/data-dir.toml`: a demo's data dir maps the demo's region from the demo world),
else the environment's, else the settings' defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import logging

    import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"
BIN = Path(sys.executable).parent
POOL = "xco2-process"
# Started in this order, stopped in the reverse one.
COMPONENTS = ("prefect-server", "mlflow-server", "worker")
# A pid file of an older stack (a pid only) names a process of ours while its command line has these words.
_MARKERS = {"prefect-server": ("prefect", "server"), "mlflow-server": ("mlflow", "server"),
            "worker": ("prefect", "worker")}


# How long the command line waits for a health check of a stack it found: it must never hang.
PROBE_TIMEOUT_S = 2.0


class StackError(RuntimeError):
    pass


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class StackConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    database_url: str | None = None
    mlflow_backend_uri: str | None = None
    timeout: float = 240.0
    pool: str = POOL
    settings_env: dict[str, str] = field(default_factory=dict)  # XCO2_* for the worker and the env file
    api_url: str | None = None  # another Prefect server's API (`deploy` under docker compose)
    data_store_uri: str | None = None  # XCO2_MLFLOW_TRACKING_URI of `up` when it names a database

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "StackConfig":
        env = dict(os.environ if environ is None else environ)
        settings_env = {k: v for k, v in env.items()
                        if k.startswith("XCO2_") and not k.startswith("XCO2_STACK_")
                        and k not in ("XCO2_MLFLOW_TRACKING_URI", "XCO2_REPO")}
        settings_env["XCO2_DATA_DIR"] = str(Path(settings_env.get("XCO2_DATA_DIR", "xco2-data")).resolve())
        # A tracking URI naming a database is the command line's store: the server serves it. An
        # http one is a server already (this stack's, from a shell that sourced its env file).
        tracking = env.get("XCO2_MLFLOW_TRACKING_URI") or ""
        # Field name -> value, of each field's own type (the overrides are the command line's).
        values: dict[str, Any] = {
            "state_dir": Path(env.get("XCO2_STACK_DIR", ".xco2-stack")),
            "host": env.get("XCO2_STACK_HOST", "127.0.0.1"),
            "prefect_port": int(env.get("XCO2_STACK_PREFECT_PORT", 4200)),
            "mlflow_port": int(env.get("XCO2_STACK_MLFLOW_PORT", 5000)),
            "database_url": env.get("XCO2_STACK_DATABASE_URL") or None,
            "mlflow_backend_uri": env.get("XCO2_STACK_MLFLOW_BACKEND_URI") or None,
            "timeout": float(env.get("XCO2_STACK_TIMEOUT", 240)),
            "settings_env": settings_env,
            "data_store_uri": tracking if tracking and not tracking.startswith(("http://", "https://")) else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["state_dir"] = Path(values["state_dir"]).resolve()
        return cls(**values)

    # Where things are.
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "stack.json"

    def pid_file(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    # Where things answer.
    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return self.api_url.rstrip("/") if self.api_url else f"{self.prefect_url}/api"

    @property
    def ui_api_url(self) -> str:
        """The API address the Prefect UI's pages call from the browser. `prefect server start
        --port` does not tell the UI: without it, the UI calls port 4200 and shows no data on any
        other port. A PREFECT_UI_API_URL of the environment (a proxy in front) is kept."""
        if os.environ.get("PREFECT_UI_API_URL"):
            return os.environ["PREFECT_UI_API_URL"]
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.prefect_home / 'prefect.db'}"

    @property
    def data_dir(self) -> Path:
        return Path(self.settings_env["XCO2_DATA_DIR"])

    def _recorded(self, key: str, default: str) -> str:
        """A setting as the worker's flow runs will see it: the environment's, else the data
        directory's record (tasks/settings.py), else the settings' default."""
        from tasks.settings import read_data_dir_record

        env = self.settings_env.get(f"XCO2_{key.upper()}") or self.settings_env.get(f"XCO2_{key.upper()}__NAME")
        if env:
            return env
        try:
            value = read_data_dir_record(self.data_dir).get(key)
        except ValueError as exc:  # ConfigError: a damaged record; the flow runs will name it too
            raise StackError(str(exc)) from None
        if isinstance(value, dict):
            value = value.get("name")
        return str(value) if value else default

    @property
    def source(self) -> str:
        return self._recorded("source", "demo")

    @property
    def region(self) -> str:
        return self._recorded("region", "sichuan")

    @property
    def mlflow_backend_store(self) -> str:
        """The command line's store: the stack and `xco2` without a stack share one registry."""
        return self.mlflow_backend_uri or self.data_store_uri or f"sqlite:///{self.data_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        """Where the command line puts a store's artifacts (registry.store.artifact_root_for):
        beside a SQLite database, else `<data dir>/mlartifacts`. A file: URI, so runs recorded
        through the server and without it have the same kind of artifact location."""
        from registry.store import artifact_root_for

        return artifact_root_for(self.mlflow_backend_store) or (self.data_dir / "mlartifacts").resolve().as_uri()

    # Environments.
    def client_env(self) -> dict[str, str]:
        """What a shell, the CLI and the worker's flow runs need to use the stack."""
        return {"PREFECT_API_URL": self.prefect_api_url, "XCO2_MLFLOW_TRACKING_URI": self.mlflow_url,
                "MLFLOW_TRACKING_URI": self.mlflow_url, **self.settings_env}

    def process_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XCO2_") and k not in (
            "PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "MLFLOW_TRACKING_URI",
            "MLFLOW_BACKEND_STORE_URI")}
        env.update({"PREFECT_HOME": str(self.prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def worker_env(self) -> dict[str, str]:
        return self.process_env(**self.client_env(), XCO2_REPO=str(REPO_ROOT))


# --- processes --------------------------------------------------------------------------------

def _process(cfg: StackConfig, name: str) -> psutil.Process | None:
    """The live process a pid file names, or None (no file, gone, zombie, or a reused pid).

    The pid file holds the pid and the process's start time: a reused pid has another one. (The
    command line is no test for a process just started: it reads empty while exec completes.)"""
    import psutil

    try:
        fields = cfg.pid_file(name).read_text().split()
        proc = psutil.Process(int(fields[0]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if len(fields) > 1:
            return proc if abs(proc.create_time() - float(fields[1])) < 1e-3 else None
        cmdline = " ".join(proc.cmdline())  # a pid file of an older stack: only the pid
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return proc if all(word in cmdline for word in _MARKERS[name]) else None


def _spawn(cfg: StackConfig, name: str, argv: list[str], env: dict[str, str]) -> int:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_file(name), "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    import psutil

    try:
        started = psutil.Process(proc.pid).create_time()
        cfg.pid_file(name).write_text(f"{proc.pid} {started!r}\n")
    except psutil.NoSuchProcess:  # gone already: no pid file, and the health wait reports its log
        pass
    return proc.pid


def _stop(cfg: StackConfig, name: str, grace: float = 20.0) -> str:
    """Stop a component and everything it started (its process group and its descendants: the
    worker's flow runs have groups of their own)."""
    import psutil

    proc = _process(cfg, name)
    cfg.pid_file(name).unlink(missing_ok=True)
    if proc is None:
        return "not running"
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        family = [proc]
    # One SIGTERM each: the group's members through the group, the others (flow runs) directly.
    # (A second SIGTERM makes `prefect worker` escalate to SIGKILL.)
    try:
        group = os.getpgid(proc.pid)
        os.killpg(group, signal.SIGTERM)
    except OSError:
        group = None
    for p in family:
        try:
            if group is None or os.getpgid(p.pid) != group:
                p.send_signal(signal.SIGTERM)
        except (OSError, psutil.Error):
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return f"stopped (pid {proc.pid})"


def _log_tail(cfg: StackConfig, name: str, lines: int = 25) -> str:
    try:
        return "\n".join(cfg.log_file(name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    """(status, body) of a GET, or (None, error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError) as exc:
        return None, str(exc)


def _healthy(cfg: StackConfig, name: str) -> bool:
    if name == "prefect-server":
        return _get(f"{cfg.prefect_api_url}/health")[0] == 200
    if name == "mlflow-server":
        return _get(f"{cfg.mlflow_url}/health")[0] == 200
    return _pool_status(cfg) == "READY"


def _pool_status(cfg: StackConfig) -> str | None:
    status, body = _get(f"{cfg.prefect_api_url}/work_pools/{cfg.pool}")
    if status != 200:
        return None
    try:
        return json.loads(body).get("status")
    except ValueError:
        return None


def _wait_healthy(cfg: StackConfig, names: list[str], deadline: float) -> None:
    waiting = list(names)
    while waiting:
        for name in list(waiting):
            if _healthy(cfg, name):
                print(f"  {name}: healthy", flush=True)
                waiting.remove(name)
            elif _process(cfg, name) is None:
                raise StackError(f"{name} exited; the end of {cfg.log_file(name)}:\n{_log_tail(cfg, name)}")
        if waiting and time.monotonic() > deadline:
            raise StackError(f"{', '.join(waiting)} not healthy after {cfg.timeout:g} s "
                             f"(XCO2_STACK_TIMEOUT); see {cfg.logs_dir}")
        if waiting:
            time.sleep(1.0)


# --- the commands -----------------------------------------------------------------------------

def server_plans(cfg: StackConfig) -> dict[str, tuple[int, list[str], dict[str, str]]]:
    """(port, argv, environment) of each server."""
    artifacts = cfg.mlflow_artifact_root
    return {
        "prefect-server": (cfg.prefect_port, [_tool("prefect"), "server", "start", "--host", cfg.host,
                                              "--port", str(cfg.prefect_port), "--no-background"],
                           cfg.process_env(PREFECT_API_DATABASE_CONNECTION_URL=cfg.prefect_database_url,
                                           PREFECT_UI_API_URL=cfg.ui_api_url)),
        # Database URLs travel in the environment, never on a command line: a password there would
        # show in `ps` and in the log's header line. New experiments get the command line's artifact
        # root (a file: URI), which this local server reads for the UI and clients write directly;
        # proxied mlflow-artifacts:/ locations (experiments an older stack made) land there too.
        "mlflow-server": (cfg.mlflow_port, [_tool("mlflow"), "server", "--default-artifact-root", artifacts,
                                            "--artifacts-destination", artifacts,
                                            "--host", cfg.host, "--port", str(cfg.mlflow_port), "--workers", "1"],
                          cfg.process_env(MLFLOW_BACKEND_STORE_URI=cfg.mlflow_backend_store)),
    }


def _start_servers(cfg: StackConfig) -> list[str]:
    started = []
    for name, (port, argv, env) in server_plans(cfg).items():
        # Asked once: a process that ends between two asks would leave no pid to print.
        if (running := _process(cfg, name)) is not None:
            print(f"  {name}: already running (pid {running.pid})")
            continue
        if not _port_free(cfg.host, port):
            raise StackError(f"{cfg.host}:{port} is taken by another program: stop it, or choose another port "
                             f"({'XCO2_STACK_PREFECT_PORT' if name == 'prefect-server' else 'XCO2_STACK_MLFLOW_PORT'})")
        print(f"  {name}: starting (log {cfg.log_file(name)})", flush=True)
        _spawn(cfg, name, argv, env)
        started.append(name)
    return started


def _run_cli(cfg: StackConfig, name: str, argv: list[str], env: dict[str, str], timeout: float) -> None:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_file(name), "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        log.flush()
        rc = subprocess.run(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc != 0:
        raise StackError(f"`{shlex.join(argv[1:])}` failed ({rc}); the end of {cfg.log_file(name)}:\n"
                         f"{_log_tail(cfg, name)}")


def deployment_names(path: Path = PREFECT_YAML) -> tuple[list[str], list[str]]:
    """(deployments whose entrypoint file exists, those whose file is missing)."""
    import yaml

    present: list[str] = []
    missing: list[str] = []
    for spec in yaml.safe_load(path.read_text()).get("deployments") or []:
        file = REPO_ROOT / spec["entrypoint"].partition(":")[0]
        (present if file.is_file() else missing).append(spec["name"])
    return present, missing


def apply_deployments(cfg: StackConfig, env: dict[str, str] | None = None) -> list[str]:
    """Create the process work pool when missing and apply deployments/prefect.yaml (the same
    `prefect deploy` an operator would run), against the stack's Prefect server."""
    env = cfg.worker_env() if env is None else env
    if _get(f"{cfg.prefect_api_url}/work_pools/{cfg.pool}")[0] != 200:
        print(f"  work pool {cfg.pool}: creating (type process)", flush=True)
        _run_cli(cfg, "deploy", [_tool("prefect"), "work-pool", "create", cfg.pool, "--type", "process"],
                 env, timeout=cfg.timeout)
    present, missing = deployment_names()
    for name in missing:
        print(f"  deployment {name}: NOT applied, its entrypoint file does not exist", file=sys.stderr)
    if not present:
        return []
    argv = [_tool("prefect"), "deploy", "--no-prompt", "--prefect-file", str(PREFECT_YAML)]
    argv += ["--all"] if not missing else [a for n in present for a in ("--name", n)]
    print(f"  deployments: applying {', '.join(present)} (log {cfg.log_file('deploy')})", flush=True)
    _run_cli(cfg, "deploy", argv, env, timeout=max(cfg.timeout, 300))
    return present


def write_env_file(cfg: StackConfig) -> Path:
    lines = ["# The xco2 stack's environment, written by `python -m deployments.stack up`.",
             f"# Load it into a shell with: source {cfg.env_file}"]
    lines += [f"export {k}={shlex.quote(v)}"
              for k, v in {**cfg.client_env(), "XCO2_STACK_DIR": str(cfg.state_dir)}.items()]
    cfg.env_file.write_text("\n".join(lines) + "\n")
    return cfg.env_file


def up(cfg: StackConfig) -> None:
    for d in (cfg.state_dir, cfg.logs_dir, cfg.prefect_home):
        d.mkdir(parents=True, exist_ok=True)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + cfg.timeout
    print(f"xco2 stack in {cfg.state_dir}", flush=True)
    print(f"  MLflow store: {_redact(cfg.mlflow_backend_store)}, artifacts {cfg.mlflow_artifact_root}", flush=True)
    if (cfg.state_dir / "mlflow.db").exists():
        print(f"  note: {cfg.state_dir / 'mlflow.db'} is the store of an older stack, no longer served "
              f"(the stack now serves the data directory's); copy what you need from it with MLflow", flush=True)
    _start_servers(cfg)
    _wait_healthy(cfg, ["prefect-server", "mlflow-server"], deadline)
    apply_deployments(cfg)
    worker = _process(cfg, "worker")
    if worker is None:
        print(f"  worker: starting on pool {cfg.pool} (log {cfg.log_file('worker')})", flush=True)
        _spawn(cfg, "worker", [_tool("prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process",
                               "--install-policy", "never", "--name", f"xco2-{socket.gethostname()}-{os.getpid()}"],
               cfg.worker_env())
    else:
        print(f"  worker: already running (pid {worker.pid})")
    _wait_healthy(cfg, ["worker"], time.monotonic() + cfg.timeout)
    write_env_file(cfg)
    _write_state(cfg, {
        "prefect_api_url": cfg.prefect_api_url, "prefect_ui": cfg.prefect_url, "mlflow_url": cfg.mlflow_url,
        "pool": cfg.pool, "prefect_database": _redact(cfg.prefect_database_url),
        "mlflow_backend_store": _redact(cfg.mlflow_backend_store), "mlflow_artifact_root": cfg.mlflow_artifact_root,
        "data_dir": cfg.settings_env["XCO2_DATA_DIR"], "source": cfg.source, "region": cfg.region,
        "stopped": False})
    print(f"ready\n  Prefect UI  {cfg.prefect_url}\n  MLflow UI   {cfg.mlflow_url}\n"
          f"  data dir    {cfg.settings_env['XCO2_DATA_DIR']} (region {cfg.region}, source {cfg.source})\n"
          f"  logs        {cfg.logs_dir}\n  environment source {cfg.env_file}", flush=True)


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _write_state(cfg: StackConfig, state: dict) -> None:
    # Read by `xco2` commands at any moment: never a half-written file.
    tmp = cfg.state_file.with_name(f".{cfg.state_file.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(state, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, cfg.state_file)


def down(cfg: StackConfig) -> None:
    for name in reversed(COMPONENTS):
        print(f"  {name}: {_stop(cfg, name)}", flush=True)
    # Marked stopped (kept for `status`): the command line then uses its local stores without a warning.
    try:
        state = json.loads(cfg.state_file.read_text())
    except (OSError, ValueError):
        state = None
    if isinstance(state, dict):
        _write_state(cfg, {**state, "stopped": True})
    print("down")


def _saved(cfg: StackConfig) -> StackConfig:
    """The ports `up` used, when status runs without the same environment."""
    try:
        state = json.loads(cfg.state_file.read_text())
    except (OSError, ValueError):
        return cfg
    p, m = urlsplit(state["prefect_ui"]), urlsplit(state["mlflow_url"])
    cfg.host, cfg.prefect_port, cfg.mlflow_port = p.hostname, p.port, m.port
    return cfg


def status(cfg: StackConfig) -> int:
    cfg = _saved(cfg)
    urls = {"prefect-server": cfg.prefect_url, "mlflow-server": cfg.mlflow_url, "worker": f"pool {cfg.pool}"}
    ok = True
    for name in COMPONENTS:
        proc = _process(cfg, name)
        health = ("healthy" if _healthy(cfg, name) else "not answering") if proc else "-"
        ok &= proc is not None and health == "healthy"
        print(f"{name:<15} {'running (pid %d)' % proc.pid if proc else 'stopped':<22} {health:<14} {urls[name]}")
    if cfg.env_file.is_file():
        print(f"environment: source {cfg.env_file}")
    return 0 if ok else 3


# --- the command line and a running stack --------------------------------------------------------

# Where the command line looks for the stack: XCO2_STACK_DIR (the env file exports it), else here.
_STACK_URL_VARIABLES = ("PREFECT_API_URL", "XCO2_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class StackUse:
    """What use_running_stack decided: `attached` (this process now uses the stack), `local`
    (no stack, a stopped one, or the environment names other servers) or `fallback` (a stack's
    state file exists but it cannot be used; `reason` says why, and was logged as a WARNING)."""

    decision: str
    state_file: Path | None = None
    reason: str = ""


def _probe(url: str, timeout: float) -> str | None:
    """None when the health check answers 200, else why not."""
    status, detail = _get(url, timeout=timeout)
    if status == 200:
        return None
    return f"HTTP {status}" if status is not None else (detail or "no answer")


def use_running_stack(data_dir: Path | str | None, environ: MutableMapping[str, str] | None = None,
                      timeout: float = PROBE_TIMEOUT_S, logger: logging.Logger | None = None) -> StackUse:
    """Point this process (PREFECT_API_URL, XCO2_MLFLOW_TRACKING_URI) at the running stack when
    there is one for `data_dir`, so an `xco2` command's flows show in the stack's Prefect UI and
    its models go to the stack's MLflow, the registry the deployments use.

    Call it before Prefect is imported (Prefect reads PREFECT_API_URL at import). The stack is
    found through `<XCO2_STACK_DIR or ./.xco2-stack>/stack.json`. Its servers are probed with a
    short timeout; when they do not answer, or the stack serves another data directory, the
    command keeps its local stores (a temporary Prefect server, MLflow in the data directory)
    with a WARNING, and stack URLs that a sourced env file left in the environment are removed.
    Servers named in the environment that are not this stack's are left as they are."""
    import logging

    environ = os.environ if environ is None else environ
    log = logger or logging.getLogger("xco2.stack")
    state_file = Path(environ.get("XCO2_STACK_DIR") or ".xco2-stack") / "stack.json"
    try:
        state = json.loads(state_file.read_text())
        api, mlflow_url, stack_data = state["prefect_api_url"], state["mlflow_url"], state["data_dir"]
    except FileNotFoundError:
        return StackUse("local")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = f"its state file {state_file} is unreadable ({exc})"
        log.warning("xco2 stack: %s; using the local stores", reason)
        return StackUse("fallback", state_file, reason)
    ours = {"PREFECT_API_URL": api, "XCO2_MLFLOW_TRACKING_URI": mlflow_url, "MLFLOW_TRACKING_URI": mlflow_url}

    def leave_stack(reason: str, warn: bool = True) -> StackUse:
        sourced = [k for k in _STACK_URL_VARIABLES if environ.get(k) == ours[k]]
        for k in sourced:
            del environ[k]
        if warn or sourced:
            log.warning("xco2 stack (%s): %s; this command uses its local stores: MLflow in the data directory, "
                        "a temporary Prefect server", state_file, reason)
        return StackUse("fallback" if warn or sourced else "local", state_file, reason)

    if state.get("stopped"):
        return leave_stack("it is stopped (`make down`); `make up` starts it", warn=False)
    others = [k for k in ("PREFECT_API_URL", "XCO2_MLFLOW_TRACKING_URI")
              if environ.get(k) and environ[k].rstrip("/") != ours[k].rstrip("/")]
    if others:
        log.info("xco2 stack (%s) not used: the environment names other servers (%s)", state_file,
                 ", ".join(f"{k}={environ[k]}" for k in others))
        return StackUse("local", state_file, "the environment names other servers")
    if data_dir is not None and Path(data_dir).resolve() != Path(stack_data).resolve():
        return leave_stack(f"it serves the data directory {stack_data}, not {Path(data_dir).resolve()}")
    problems = [f"{what} {url}: {why}" for what, url, why in (
        ("Prefect", api, _probe(f"{api.rstrip('/')}/health", timeout)),
        ("MLflow", mlflow_url, _probe(f"{mlflow_url.rstrip('/')}/health", timeout))) if why]
    if problems:
        return leave_stack(f"its servers do not answer ({'; '.join(problems)}); `make status` tells more")
    environ.update({"PREFECT_API_URL": api, "XCO2_MLFLOW_TRACKING_URI": mlflow_url})
    log.info("xco2 stack (%s): flows run on its Prefect server (UI %s), models are recorded in its MLflow %s",
             state_file.parent, state.get("prefect_ui", api), mlflow_url)
    return StackUse("attached", state_file)


def command_prefect_database(environ: Mapping[str, str] | None = None) -> str | None:
    """The Prefect database an `xco2` command without a running stack records its flow runs in:
    the stack's own SQLite file (`<XCO2_STACK_DIR or ./.xco2-stack>/prefect/prefect.db`), so that
    `make up` afterwards shows them in its UI, the demo's runs first among them. None (Prefect's
    default, under PREFECT_HOME) when a database is configured for Prefect, when the stack keeps
    its database elsewhere (PostgreSQL), or while a stack that `up` started on that file has not
    been stopped: two servers on one SQLite file would contend for it."""
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or environ.get("XCO2_STACK_DATABASE_URL"):
        return None
    cfg = StackConfig(state_dir=Path(environ.get("XCO2_STACK_DIR") or ".xco2-stack").resolve())
    try:
        state = json.loads(cfg.state_file.read_text())
    except FileNotFoundError:
        state = None
    except (OSError, ValueError):
        return None  # a damaged state file: use_running_stack has warned; stay out of its way
    if isinstance(state, dict) and (not state.get("stopped") or state.get("prefect_database") != cfg.prefect_database_url):
        return None
    try:
        cfg.prefect_home.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # not writable here: Prefect's own home still is
    return cfg.prefect_database_url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["up", "down", "status", "deploy"])
    p.add_argument("--dir", help="state directory (XCO2_STACK_DIR, default ./.xco2-stack)")
    p.add_argument("--host", help="address to bind (XCO2_STACK_HOST, default 127.0.0.1)")
    p.add_argument("--prefect-port", type=int, help="XCO2_STACK_PREFECT_PORT, default 4200")
    p.add_argument("--mlflow-port", type=int, help="XCO2_STACK_MLFLOW_PORT, default 5000")
    p.add_argument("--timeout", type=float, help="health-check timeout in s (XCO2_STACK_TIMEOUT, default 240)")
    args = p.parse_args(argv)
    cfg = StackConfig.from_env(state_dir=args.dir, host=args.host, prefect_port=args.prefect_port,
                               mlflow_port=args.mlflow_port, timeout=args.timeout)
    try:
        if args.command == "up":
            up(cfg)
        elif args.command == "down":
            down(cfg)
        elif args.command == "status":
            return status(cfg)
        else:
            # Against the server PREFECT_API_URL names (docker compose), else this stack's one.
            if os.environ.get("PREFECT_API_URL"):
                cfg.api_url = os.environ["PREFECT_API_URL"]
                apply_deployments(cfg, env={**os.environ, "XCO2_REPO": os.environ.get("XCO2_REPO", str(REPO_ROOT))})
            else:
                apply_deployments(cfg)
    except StackError as exc:
        print(f"xco2 stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
