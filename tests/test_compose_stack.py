"""deployments/docker-compose.yml, run without Docker (no engine on the CI machines).

Slow, out of `make test`; `make test-stack` runs it. Each service of the compose file is started
as a local process from the file itself: its command, its environment (over the Dockerfile's ENV),
its start order (`depends_on: service_healthy`, checked with the service's own healthcheck
command) and, for `postgres`, the image's behaviour (a cluster with POSTGRES_USER,
POSTGRES_PASSWORD and POSTGRES_DB, then the init scripts under /docker-entrypoint-initdb.d).
What a container would isolate is mapped onto this machine: service host names and
`localhost` to 127.0.0.1, the published ports to free ones, /app to the repository and the
volumes to a temporary folder. Then the daily deployment runs through the compose worker.

So a typo in a command, a wrong URL, port or healthcheck, a missing database or a start order
that cannot work fails here; the image build itself is not exercised.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import pytest
import yaml
from stack_support import PostgresNotFound, free_port, postgres_cluster, service_env, tail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deployments" / "docker-compose.yml"
DOCKERFILE = REPO / "deployments" / "Dockerfile"
DAY = date(2020, 6, 1)
DEADLINE_S = 600


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """KEY=value pairs of the Dockerfile's ENV instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


class Host:
    """Where a container's names, ports and paths land on this machine."""

    def __init__(self, services: list[str], ports: dict[int, int], paths: dict[str, str]):
        self.names = [*services, "localhost"]
        self.ports, self.paths = ports, paths

    def text(self, value) -> str:
        value = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1], m[2]), str(value))
        names = "|".join(re.escape(n) for n in self.names)
        value = re.sub(rf"(?<![\w.-])({names}):(\d+)",
                       lambda m: f"127.0.0.1:{self.ports.get(int(m[2]), m[2])}", value)
        return value

    def token(self, value) -> str:
        value = self.text(value)
        if value == "0.0.0.0":
            return "127.0.0.1"
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        return self.paths.get(value, value)

    def argv(self, command) -> list[str]:
        argv = command if isinstance(command, list) else shlex.split(command)
        return [self.token(a) for a in argv]

    def healthcheck(self, test) -> list[str]:
        kind, *rest = test
        if kind == "CMD-SHELL":
            return ["sh", "-c", self.text(rest[0])]
        assert kind == "CMD", f"healthcheck test {test!r}"
        return [self.token(a) for a in rest]


def _start_order(services: dict) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in order:
            for dep in services[name].get("depends_on") or {}:
                visit(dep)
            order.append(name)

    for name in services:
        visit(name)
    return order



@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    root = tmp_path_factory.mktemp("compose")
    ports = {5432: 0, 4200: free_port(), 5000: free_port(), 8080: free_port()}
    volumes = {"/data": root / "xco2-data", "/mlartifacts": root / "mlartifacts"}
    for folder in volumes.values():
        folder.mkdir()
    paths = {"/app": str(REPO), **{k: str(v) for k, v in volumes.items()}}
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("XCO2_", "PREFECT_", "MLFLOW_"))}
    base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
    image_env = dockerfile_env()
    processes: dict[str, subprocess.Popen] = {}
    logs = root / "logs"
    logs.mkdir()

    pg_service = services["postgres"]
    pg_env = service_env(pg_service)
    with contextlib.ExitStack() as cleanup:
        try:
            cluster = cleanup.enter_context(postgres_cluster(
                pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], (pg_env["POSTGRES_DB"],)))
        except PostgresNotFound as exc:
            pytest.fail(str(exc))
        cleanup.callback(_stop_all, processes)  # before the cluster stops: callbacks run last-in first
        # The postgres image runs the init scripts as POSTGRES_USER in POSTGRES_DB.
        configs = compose.get("configs") or {}
        for ref in pg_service.get("configs") or []:
            if ref["target"].startswith("/docker-entrypoint-initdb.d/") and ref["target"].endswith(".sql"):
                cluster.execute(configs[ref["source"]]["content"], pg_env["POSTGRES_DB"])
        ports[5432] = cluster.port
        host = Host(list(services), ports, paths)
        check_env = {**base_env, "PGHOST": str(cluster.root), "PGPORT": str(cluster.port),
                     "PATH": f"{cluster.bindir}{os.pathsep}{base_env['PATH']}"}

        def healthy(name: str) -> bool:
            argv = host.healthcheck(services[name]["healthcheck"]["test"])
            return subprocess.run(argv, env=check_env, capture_output=True, timeout=60).returncode == 0

        def wait_healthy(name: str) -> None:
            deadline = time.monotonic() + DEADLINE_S
            while not healthy(name):
                proc = processes.get(name)
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}):\n{tail(logs / f'{name}.log')}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} not healthy after {DEADLINE_S} s:\n{tail(logs / f'{name}.log')}")
                time.sleep(2)

        t0 = time.perf_counter()
        for name in _start_order(services):
            for dep, rule in (services[name].get("depends_on") or {}).items():
                assert rule["condition"] == "service_healthy", (name, dep, rule)
                wait_healthy(dep)
            if name == "postgres":
                continue
            service = services[name]
            env = {**base_env, **{k: host.token(v) for k, v in image_env.items()},
                   **{k: host.token(v) for k, v in service_env(service).items()},
                   # What each container has of its own: a home, and /app/.xco2-stack.
                   "HOME": str(root / "home" / name), "PREFECT_HOME": str(root / "home" / name / ".prefect"),
                   "XCO2_STACK_DIR": str(root / "home" / name / "stack")}
            Path(env["HOME"]).mkdir(parents=True)
            with open(logs / f"{name}.log", "wb") as log:
                processes[name] = subprocess.Popen(host.argv(service["command"]), cwd=REPO, env=env,
                                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
        for name in processes:
            wait_healthy(name)
        yield {"cluster": cluster, "logs": logs, "data": volumes["/data"],
               "api": f"http://127.0.0.1:{ports[4200]}/api", "healthy_s": round(time.perf_counter() - t0, 1)}


def _stop_all(processes: dict[str, subprocess.Popen]) -> None:
    for proc in reversed(list(processes.values())):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
    for proc in processes.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_compose_services_start_healthy_in_order(compose_stack):
    """Every service's healthcheck passes; the worker applied the deployments and polls the pool."""
    # The worker's healthcheck answers once it runs; the pool turns READY at its first poll.
    deadline, status = time.monotonic() + 120, None
    while status != "READY" and time.monotonic() < deadline:
        with urllib.request.urlopen(f"{compose_stack['api']}/work_pools/xco2-process", timeout=10) as r:
            status = json.loads(r.read())["status"]
        time.sleep(1 if status != "READY" else 0)
    assert status == "READY", f"pool xco2-process is {status}:\n{tail(compose_stack['logs'] / 'worker.log')}"
    names = {r[0] for r in compose_stack["cluster"].execute("SELECT name FROM deployment", "prefect")}
    assert {"daily-update", "monthly-retrain", "backfill", "archive-report"} <= names
    # MLflow keeps its tables in its own database, created by the init script.
    tables = {r[0] for r in compose_stack["cluster"].execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", "mlflow")}
    assert {"experiments", "registered_models", "registered_model_aliases"} <= tables
    print(f"\ncompose services healthy after {compose_stack['healthy_s']} s")


def test_compose_worker_runs_the_daily_deployment(compose_stack):
    """A daily run through the compose worker, on the compose settings (demo source, default
    region, data volume, MLflow server): it ingests the day and, with no champion yet, waits."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.demo import DemoOptions
    from demo_world import write_demo_world
    from tasks.settings import Region

    # The worker has no region setting: the default one (not Settings().region, which reads the
    # record of a checkout's own ./xco2-data after `make demo`).
    region = Region()
    write_demo_world(compose_stack["data"] / "demo", region, DAY, DAY, seed=DemoOptions().seed, dense=True)
    t = time.perf_counter()
    with temporary_settings(updates={PREFECT_API_URL: compose_stack["api"]}):
        run = run_deployment("xco2-daily-update/daily-update", timeout=1200, poll_interval=3,
                             parameters={"start": DAY.isoformat(), "end": DAY.isoformat()})
        assert run.state is not None and run.state.is_completed(), (
            f"{run.state}\n--- worker ---\n{tail(compose_stack['logs'] / 'worker.log', 80)}")
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    by_key = {a.key: a for a in artifacts}
    assert {"daily-days-processed", "daily-archive-days", "daily-summary"} <= set(by_key)
    # No champion in this stack yet: the run says so where an operator looks.
    assert "waiting for a first champion" in by_key["daily-summary"].data
    samples = list(compose_stack["data"].glob(f"regions/*/samples/day={DAY.isoformat()}/*.parquet"))
    assert samples, f"no samples under {compose_stack['data']}"
    print(f"\ncompose daily run: {time.perf_counter() - t:.1f} s, {len(samples)} sample file(s)")
