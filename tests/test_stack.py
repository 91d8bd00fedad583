"""The real local stack (deployments/stack.py): Prefect server, MLflow server, process worker.

Slow (a few minutes on two cores), so out of `make test`; run it with
    .venv/bin/python -m pytest -q -m slow tests/test_stack.py
It starts the stack on free loopback ports into a temporary directory. The samples and a first
champion come from the `xco2` command line (`xco2 daily`, `xco2 retrain`, subprocesses as a user
runs them): on SQLite BEFORE `up`, into the data directory's store, which the stack's MLflow
server must then serve (one registry, issue 10 case 9); on PostgreSQL AFTER `up`, where the
command line must find the running stack and record into its servers. Then the daily-update
deployment runs through the worker with that champion (run state, artifacts, the archive's model
version); a second version comes from the retrain deployment and the `champion` alias is moved to
it as an operator would in the MLflow UI; the next run uses it; an `xco2 daily` run after `up`
shows in the stack's Prefect API. With the MLflow server stopped, a daily run fails within a
bounded time naming the tracking URI, and after `up` restarts the server the next run completes.
Finally the stack stops and nothing is left running.

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
START, LAST_SEEDED, NEW_DAY, LAST_DAY = date(2020, 6, 1), date(2020, 6, 6), date(2020, 6, 7), date(2020, 6, 8)
ATTACHED = "flows run on its Prefect server"  # the command line's log line when it uses the stack


def _stack(command: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.stack", command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _xco2(env: dict[str, str], cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """An `xco2` command as a user runs it (its own process, finding the stack by itself)."""
    done = subprocess.run([str(Path(sys.executable).parent / "xco2"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, f"xco2 {' '.join(argv)}: {done.returncode}\n{done.stdout}\n{done.stderr[-6000:]}"
    return done


def _seed_with_the_command_line(env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Samples of START..LAST_SEEDED and a first champion, through `xco2 daily` and `xco2 retrain`."""
    daily = _xco2(env, cwd, "daily", "--start", START.isoformat(), "--end", LAST_SEEDED.isoformat())
    retrain = _xco2(env, cwd, "retrain")
    return {"daily": daily.stderr, "retrain": retrain.stderr}


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
    from demo_world import write_demo_world

    root = tmp_path_factory.mktemp("stack")
    state, data = root / "state", root / "xco2-data"
    write_demo_world(data / "demo", SMALL_REGION, START, LAST_DAY, grid_step=0.01, seed=DemoOptions().seed,
                     dense=True)
    prefect_port, mlflow_port = free_port(), free_port()
    settings = {  # what the worker's flow runs get through the stack's environment
        "XCO2_DATA_DIR": str(data), "XCO2_SOURCE": "demo", "XCO2_ARCHIVE_LOOKBACK_DAYS": "1",
        "XCO2_COMPARISON_PROTOCOLS": "[]",  # no baseline comparison in the retrains: minutes on CPU
        "XCO2_MAX_EPOCHS": "2", "XCO2_MAX_TRAINING_SAMPLES": "2000", "XCO2_MAX_VALIDATION_SAMPLES": "500",
        **{f"XCO2_REGION__{k.upper()}": str(v) for k, v in SMALL_REGION.model_dump().items()},
    }
    env = {**os.environ, **settings, "XCO2_STACK_DIR": str(state), "XCO2_STACK_PREFECT_PORT": str(prefect_port),
           "XCO2_STACK_MLFLOW_PORT": str(mlflow_port), "XCO2_STACK_TIMEOUT": "600"}
    database = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    if database:
        env.update(XCO2_STACK_DATABASE_URL=database.url("prefect", "asyncpg"),
                   XCO2_STACK_MLFLOW_BACKEND_URI=database.url("mlflow", "psycopg"))
    seeded, timings = None, {}
    try:
        if not database:  # `make demo` (here: `xco2 daily` + `xco2 retrain`), then `make up`
            t = time.perf_counter()
            seeded = _seed_with_the_command_line(env, root)
            timings["seed_before_up_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        started = _stack("up", env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ready" in started.stdout
        timings["up_s"] = round(time.perf_counter() - t, 1)
        if database:  # `make up`, then the command line: it must record into the stack
            t = time.perf_counter()
            seeded = _seed_with_the_command_line(env, root)
            timings["seed_after_up_s"] = round(time.perf_counter() - t, 1)
        yield {"env": env, "state": state, "data": data, "root": root, "region": SMALL_REGION, "timings": timings,
               "database": database, "seeded": seeded, "up": started.stdout,
               "api": f"http://127.0.0.1:{prefect_port}/api", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    finally:
        _deliver_events()
        _stack("down", env, timeout=300)


def _deliver_events() -> None:
    """Send this process's queued Prefect events while their server still answers: left queued,
    they are retried at interpreter exit against a stopped server, minutes per event."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=120, at_exit=False)


def _run_deployment(stack, name: str, parameters: dict, completed: bool = True):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        run = run_deployment(name, parameters=parameters, timeout=1200, poll_interval=3)
    assert run.state is not None and run.state.is_completed() == completed, (
        f"{name}: {run.state}\n--- worker log ---\n{tail(stack['state'] / 'logs' / 'worker.log')}")
    return run


def _command_line_runs(stack) -> list:
    """Completed runs of the daily flow that no deployment made: the command line's."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack["api"]}):
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["xco2-daily-update"])))
    return [r for r in runs if r.deployment_id is None and r.state is not None and r.state.is_completed()]


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

    timings = dict(stack["timings"])
    state = stack["state"]
    env_file = (state / "env").read_text()
    assert f"export PREFECT_API_URL={stack['api']}" in env_file
    assert f"export XCO2_MLFLOW_TRACKING_URI={stack['mlflow']}" in env_file
    status = _stack("status", stack["env"], timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr

    # The first champion, made by the command line (before `up` on SQLite, after it on PostgreSQL),
    # is the champion of the stack's MLflow server, read over HTTP.
    client = MlflowClient(tracking_uri=stack["mlflow"])
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 1, f"the stack's registry holds {[v.version for v in versions]}\n{stack['up']}"
    first = {"version": versions[0].version}
    assert _champion_version(stack) == first["version"]
    assert stack["data"].as_uri() + "/mlartifacts/" in client.get_run(versions[0].run_id).info.artifact_uri
    seeded = stack["seeded"]
    if stack["database"]:
        assert ATTACHED in seeded["daily"] and ATTACHED in seeded["retrain"], seeded["daily"][-3000:]
        assert not (stack["data"] / "mlflow.db").exists()  # nothing recorded beside the stack
        assert len(_command_line_runs(stack)) == 1  # `xco2 daily` shows in the stack's Prefect UI
    else:
        assert ATTACHED not in seeded["daily"] + seeded["retrain"]  # no stack yet: the local stores
        assert f"sqlite:///{stack['data'] / 'mlflow.db'}" in stack["up"]  # `up` names the store it serves

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
    assert {"retrain-heldout-scores", "retrain-report"} <= _artifact_keys(stack, retrain.id)
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
    # Not for the promotion: NEW_DAY's samples arrived in LAST_SEEDED's field window (+-15 days), so
    # its map's inputs changed and the run redid it, with the champion of the day (issue 21).
    assert _cog_model_version(stack, LAST_SEEDED) == second

    # `xco2 daily` while the stack runs: it says so, maps with the stack's champion and its run
    # is in the stack's Prefect API.
    t = time.perf_counter()
    before = len(_command_line_runs(stack))
    cli = _xco2(stack["env"], stack["root"], "daily", "--start", LAST_DAY.isoformat(), "--end", LAST_DAY.isoformat())
    timings["daily_cli_s"] = round(time.perf_counter() - t, 1)
    assert ATTACHED in cli.stderr and stack["mlflow"] in cli.stderr, cli.stderr[-3000:]
    assert len(_command_line_runs(stack)) == before + 1
    assert _cog_model_version(stack, LAST_DAY) == second
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


def test_a_daily_run_with_mlflow_down_fails_fast_and_the_next_one_completes(stack):
    """The MLflow server stops: the nightly run fails within a bounded time, its state naming the
    tracking URI; `up` starts the server again (what of the stack is missing) and the next run
    completes."""
    from deployments.stack import StackConfig, _stop

    cfg = StackConfig.from_env(stack["env"])
    assert _stop(cfg, "mlflow-server").startswith("stopped")
    failed = _run_deployment(stack, "xco2-daily-update/daily-update",
                             {"start": LAST_DAY.isoformat(), "end": LAST_DAY.isoformat()}, completed=False)
    assert failed.state.is_failed(), failed.state
    message = failed.state.message or ""
    assert stack["mlflow"] in message and "does not answer" in message, message
    took = (failed.end_time - failed.start_time).total_seconds()
    print(f"\ndaily run with MLflow down: failed after {took:.0f} s: {message}")
    assert took < 240, f"the run took {took:.0f} s to give up"  # MLflow's default retries: ~4 min per call

    restarted = _stack("up", stack["env"])
    assert restarted.returncode == 0 and "mlflow-server: starting" in restarted.stdout, restarted.stdout + restarted.stderr
    run = _run_deployment(stack, "xco2-daily-update/daily-update",
                          {"start": LAST_DAY.isoformat(), "end": LAST_DAY.isoformat()})
    assert "daily-model" in _artifact_keys(stack, run.id)  # the champion was found again


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
