"""The real local stack (deployments/stack.py): Prefect server, MLflow server, process worker.

Slow (a few minutes on two cores), so out of `make test`; run it with
    .venv/bin/python -m pytest -q -m slow tests/test_stack.py
It starts the stack on free loopback ports into a temporary directory, seeds a champion in the
stack's MLflow server, runs the daily-update deployment through the worker, checks the run's
state, artifacts and the archive's model version, registers a second version, moves the
`champion` alias to it as an operator would in the MLflow UI, runs again and sees the new
version used, then stops the stack and checks that nothing is left running.

It runs twice: on the default SQLite databases, and on PostgreSQL (both servers' databases in a
throwaway PostgreSQL cluster that the test starts on a free loopback port with the machine's
`initdb`/`pg_ctl`; `.ci/run` installs PostgreSQL where it is missing).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from datetime import date, timezone
from pathlib import Path

import pytest
from stack_support import PostgresNotFound, free_port, postgres_cluster, tail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[1]
MODEL = "xco2-resnet-lstm"  # the default registered model name: the worker is not told another
START, LAST_SEEDED, NEW_DAY = date(2020, 6, 1), date(2020, 6, 6), date(2020, 6, 7)


def _stack(command: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.stack", command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster with the databases `prefect` and `mlflow`, owned by role
    xco2 with a random password."""
    try:
        with postgres_cluster("xco2", f"pw-{secrets.token_hex(8)}", ("prefect", "mlflow")) as cluster:
            yield cluster
    except PostgresNotFound as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):
    from flows.demo import SMALL_REGION, DemoOptions
    from tasks.demo_world import write_demo_world

    root = tmp_path_factory.mktemp("stack")
    state, data = root / "state", root / "xco2-data"
    write_demo_world(data / "demo", SMALL_REGION, START, NEW_DAY, grid_step=0.01, seed=DemoOptions().seed,
                     dense=True)
    prefect_port, mlflow_port = free_port(), free_port()
    settings = {  # what the worker's flow runs get through the stack's environment
        "XCO2_DATA_DIR": str(data), "XCO2_SOURCE": "demo", "XCO2_ARCHIVE_LOOKBACK_DAYS": "1",
        "XCO2_COMPARISON_PROTOCOLS": "[]",  # no baseline comparison in the retrains: minutes on CPU
        **{f"XCO2_REGION__{k.upper()}": str(v) for k, v in SMALL_REGION.model_dump().items()},
    }
    env = {**os.environ, **settings, "XCO2_STACK_DIR": str(state), "XCO2_STACK_PREFECT_PORT": str(prefect_port),
           "XCO2_STACK_MLFLOW_PORT": str(mlflow_port), "XCO2_STACK_TIMEOUT": "600"}
    database = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    if database:
        env.update(XCO2_STACK_DATABASE_URL=database.url("prefect", "asyncpg"),
                   XCO2_STACK_MLFLOW_BACKEND_URI=database.url("mlflow", "psycopg"))
    t0 = time.perf_counter()
    try:
        started = _stack("up", env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ready" in started.stdout
        yield {"env": env, "state": state, "data": data, "region": SMALL_REGION, "up_s": time.perf_counter() - t0,
               "database": database,
               "api": f"http://127.0.0.1:{prefect_port}/api", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    finally:
        _deliver_events()
        _stack("down", env, timeout=300)


def _deliver_events() -> None:
    """Send this process's queued Prefect events while their server still answers: left queued,
    they are retried at interpreter exit against a stopped server, minutes per event."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=120, at_exit=False)


def _run_deployment(stack, name: str, parameters: dict):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        run = run_deployment(name, parameters=parameters, timeout=1200, poll_interval=3)
    assert run.state is not None and run.state.is_completed(), (
        f"{name}: {run.state}\n--- worker log ---\n{tail(stack['state'] / 'logs' / 'worker.log')}")
    return run


def _artifact_keys(stack, flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key for a in artifacts}


def _cog_model_version(stack, day: date) -> str:
    import rasterio

    from tasks.archive import day_cog_path

    with rasterio.open(day_cog_path(stack["data"] / "archive", stack["region"].name, day)) as src:
        return src.tags()["model_version"]


def _champion_version(stack) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack["mlflow"]).get_model_version_by_alias(MODEL, "champion").version


def test_scheduler_creates_the_nightly_runs(stack):
    """The server's scheduler turns the cron schedules into scheduled runs (02:30 UTC daily)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline, runs = time.monotonic() + 180, []
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=["daily-update"])))
                if runs:
                    break
                time.sleep(5)
    assert runs, ("no scheduled run of daily-update: the scheduler failed, see the end of "
                  f"{stack['state'] / 'logs' / 'prefect-server.log'}:\n"
                  f"{tail(stack['state'] / 'logs' / 'prefect-server.log', 15)}")
    assert all(r.state.is_scheduled() for r in runs)
    starts = [r.expected_start_time.astimezone(timezone.utc) for r in runs]
    assert {(t.hour, t.minute) for t in starts} == {(2, 30)}


def test_stack_runs_the_daily_deployment_with_the_champion(stack):
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.daily import daily_update
    from flows.retrain import monthly_retrain

    timings = {"up_s": round(stack["up_s"], 1)}
    state = stack["state"]
    env_file = (state / "env").read_text()
    assert f"export PREFECT_API_URL={stack['api']}" in env_file
    assert f"export XCO2_MLFLOW_TRACKING_URI={stack['mlflow']}" in env_file
    status = _stack("status", stack["env"], timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr

    # Seed: samples and a first champion in the stack's MLflow server (this process, same API).
    t = time.perf_counter()
    overrides = {"data_dir": str(stack["data"]), "source": "demo", "region": stack["region"].model_dump(),
                 "mlflow_tracking_uri": stack["mlflow"], "max_epochs": 2, "max_training_samples": 2000,
                 "max_validation_samples": 500, "comparison_protocols": []}
    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        seeded = daily_update(start=START.isoformat(), end=LAST_SEEDED.isoformat(), overrides=overrides)
        assert sum(r["samples"] for r in seeded["days"]) > 200 and seeded["archive_days"] == []
        first = monthly_retrain(overrides=overrides)
        _deliver_events()
    assert first["alias"] == "champion" and _champion_version(stack) == str(first["version"])
    timings["seed_s"] = round(time.perf_counter() - t, 1)

    # The nightly deployment, through the worker: it finds the champion through the stack's env.
    t = time.perf_counter()
    run = _run_deployment(stack, "xco2-daily-update/daily-update",
                          {"start": LAST_SEEDED.isoformat(), "end": LAST_SEEDED.isoformat()})
    timings["daily_1_s"] = round(time.perf_counter() - t, 1)
    assert {"daily-days-processed", "daily-archive-days", "daily-summary"} <= _artifact_keys(stack, run.id)
    assert _cog_model_version(stack, LAST_SEEDED) == _champion_version(stack) == str(first["version"])

    # A second version through the retrain deployment; the gate keeps the champion (margin), so
    # the operator moves the alias, as in the MLflow UI.
    t = time.perf_counter()
    retrain = _run_deployment(stack, "xco2-monthly-retrain/monthly-retrain",
                              {"overrides": {"max_epochs": 1, "max_training_samples": 1000,
                                             "max_validation_samples": 300, "promotion_margin_ppm": 1000}})
    timings["retrain_s"] = round(time.perf_counter() - t, 1)
    assert {"retrain-validation-metrics", "retrain-report"} <= _artifact_keys(stack, retrain.id)
    client = MlflowClient(tracking_uri=stack["mlflow"])
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert len(versions) == 2 and _champion_version(stack) == str(first["version"])
    second = str(max(versions))
    client.set_registered_model_alias(MODEL, "champion", second)

    t = time.perf_counter()
    run = _run_deployment(stack, "xco2-daily-update/daily-update",
                          {"start": NEW_DAY.isoformat(), "end": NEW_DAY.isoformat()})
    timings["daily_2_s"] = round(time.perf_counter() - t, 1)
    assert {"daily-days-processed", "daily-archive-days", "daily-summary"} <= _artifact_keys(stack, run.id)
    assert _cog_model_version(stack, NEW_DAY) == _champion_version(stack) == second
    assert _cog_model_version(stack, LAST_SEEDED) == str(first["version"])  # not recomputed
    if stack["database"]:
        _check_postgres_holds_the_state(stack, versions)
    print(f"\nstack test timings ({'postgresql' if stack['database'] else 'sqlite'}): {timings}")


def _check_postgres_holds_the_state(stack, versions: list[int]) -> None:
    """The runs, deployments and model versions are in PostgreSQL, no SQLite file was made, and
    the database password is in none of the stack's files (logs, env, stack.json, artifacts)."""
    database = stack["database"]
    deployments = {r[0] for r in database.execute("SELECT name FROM deployment", "prefect")}
    completed = database.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'", "prefect")[0][0]
    assert {"daily-update", "monthly-retrain", "backfill", "archive-report"} <= deployments
    assert completed >= 3  # two daily runs and a retrain through the worker
    rows = database.execute(f"SELECT version FROM model_versions WHERE name = '{MODEL}'", "mlflow")
    alias = database.execute("SELECT version FROM registered_model_aliases "
                             f"WHERE name = '{MODEL}' AND alias = 'champion'", "mlflow")
    assert sorted(int(r[0]) for r in rows) == versions and str(alias[0][0]) == _champion_version(stack)
    assert not list(stack["state"].rglob("*.db"))
    secret = database.password.encode()
    leaked = [p for p in stack["state"].rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaked, f"the database password is written in {leaked}"


def test_down_stops_everything(stack):
    import psutil

    state = stack["state"]
    pids = {name: int((state / f"{name}.pid").read_text().split()[0]) for name in ("prefect-server", "mlflow-server", "worker")}
    family = set()
    for pid in pids.values():
        proc = psutil.Process(pid)
        family |= {proc.pid, *(c.pid for c in proc.children(recursive=True))}
    t = time.perf_counter()
    stopped = _stack("down", stack["env"], timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    print(f"\nstack down: {time.perf_counter() - t:.1f} s")

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert not [pid for pid in family if alive(pid)]
    assert not list(state.glob("*.pid"))
    again = _stack("down", stack["env"], timeout=120)  # idempotent
    assert again.returncode == 0 and "not running" in again.stdout
    assert _stack("status", stack["env"], timeout=120).returncode != 0
