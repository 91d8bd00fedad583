"""deployments/prefect.yaml, the serve table built from it, and the docker compose file (fast, offline)."""

from __future__ import annotations

import inspect
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from stack_support import service_env

from flows.serve import PREFECT_YAML, deployment_specs, entrypoint_module, load_flow, to_deployment_kwargs

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deployments" / "docker-compose.yml"
POOL = "xco2-process"

EXPECTED = {
    # name: (entrypoint, cron or None, tags, parameters the flow must take)
    "daily-update": ("flows/daily.py:daily_update", "30 2 * * *", {"xco2", "daily"}, {"start", "end", "overrides"}),
    "monthly-retrain": ("flows/retrain.py:monthly_retrain", "0 4 1 * *", {"xco2", "retrain"}, {"overrides"}),
    "backfill": ("flows/backfill.py:backfill", None, {"xco2", "backfill"}, {"start", "end"}),
    "archive-report": ("flows/report.py:archive_report", None, {"xco2", "report"}, {"start", "end"}),
}


@pytest.fixture(scope="module")
def specs() -> dict[str, dict]:
    return {s["name"]: s for s in deployment_specs()}


def test_prefect_yaml_is_valid_for_prefect_deploy():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    assert [d.name for d in model.deployments] == list(EXPECTED)
    # Flow runs start in the repository, wherever the worker runs.
    (step,) = model.pull
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $XCO2_REPO }}"}}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_deployment_settings(specs, name):
    entrypoint, cron, tags, _ = EXPECTED[name]
    spec = specs[name]
    assert spec["entrypoint"] == entrypoint
    assert set(spec["tags"]) == tags
    assert spec["work_pool"]["name"] == POOL
    assert spec["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    schedules = spec.get("schedules") or []
    if cron is None:
        assert schedules == []  # manual only
    else:
        assert schedules == [{"cron": cron, "timezone": "UTC"}]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_entrypoint_resolves_to_a_flow(specs, name):
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    entrypoint, _, _, params = EXPECTED[name]
    assert (REPO / entrypoint.partition(":")[0]).is_file(), entrypoint
    by_path = load_flow_from_entrypoint(str(REPO / entrypoint))  # what `prefect deploy` does
    assert isinstance(by_path, Flow)
    by_module = load_flow(entrypoint)  # what `xco2 serve` does
    assert isinstance(by_module, Flow) and by_module.name == by_path.name
    assert params <= set(inspect.signature(by_module.fn).parameters)
    # Deployment parameters must be parameters of the flow.
    assert set(specs[name].get("parameters") or {}) <= set(inspect.signature(by_module.fn).parameters)


def test_entrypoint_module():
    assert entrypoint_module("flows/daily.py:daily_update") == ("flows.daily", "daily_update")
    with pytest.raises(ValueError):
        entrypoint_module("flows.daily.daily_update")


def test_serve_table_agrees_with_prefect_yaml(specs):
    """`xco2 serve` builds its deployments from prefect.yaml: same names, schedules, tags,
    parameters, descriptions and concurrency."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import EntrypointType

    for name, spec in specs.items():
        path = REPO / spec["entrypoint"].partition(":")[0]
        assert path.is_file(), f"deployment {name}: entrypoint {spec['entrypoint']} does not exist"
        kwargs = to_deployment_kwargs(spec)
        flow = load_flow(spec["entrypoint"])
        d = flow.to_deployment(entrypoint_type=EntrypointType.MODULE_PATH, **kwargs)
        assert d.name == name
        assert set(d.tags) == set(spec["tags"])
        assert d.description == spec["description"]
        assert d.parameters == (spec.get("parameters") or {})
        assert d.concurrency_limit == 1
        assert isinstance(kwargs["concurrency_limit"], ConcurrencyLimitConfig)
        assert d.concurrency_options.collision_strategy.value == spec["concurrency_limit"]["collision_strategy"]
        got = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]
        assert got == [(s["cron"], s["timezone"]) for s in spec.get("schedules") or []]
        module, func = entrypoint_module(spec["entrypoint"])
        assert d.entrypoint == f"{module}.{func}"


def test_cli_serve_serves_every_deployment_of_prefect_yaml(monkeypatch, tmp_path):
    import prefect

    from flows.cli import build_parser

    served = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments, **kw: served.append((deployments, kw)))
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["serve", "--limit", "3"])
    assert args.func(args) == 0
    [(deployments, kw)] = served
    assert [d.name for d in deployments] == list(EXPECTED)
    assert [d.entrypoint for d in deployments] == [
        "{}.{}".format(*entrypoint_module(entrypoint)) for entrypoint, *_ in EXPECTED.values()]
    assert kw == {"limit": 3}


# --- docker compose ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_and_healthchecks(compose):
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "worker"} <= set(services)
    for name in ("postgres", "prefect-server", "mlflow", "worker"):
        check = services[name].get("healthcheck")
        assert check and check["test"], f"{name} has no healthcheck"
    # Start order: servers wait for a healthy database, the worker for healthy servers.
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for dep in ("prefect-server", "mlflow"):
        assert services["worker"]["depends_on"][dep]["condition"] == "service_healthy"
    build = services["worker"]["build"]
    dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == REPO / "deployments" / "Dockerfile" and dockerfile.is_file()


def test_compose_environment_is_consistent(compose):
    services = compose["services"]
    pg = service_env(services["postgres"])
    user, password = pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"]

    prefect_db = urlsplit(service_env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert prefect_db.scheme == "postgresql+asyncpg"
    assert (prefect_db.hostname, prefect_db.port, prefect_db.username, prefect_db.password) == \
        ("postgres", 5432, user, password)

    mlflow_cmd = services["mlflow"]["command"]
    mlflow_cmd = mlflow_cmd if isinstance(mlflow_cmd, list) else mlflow_cmd.split()
    # The database URL (with its password) goes in the environment, not on the command line.
    assert "--backend-store-uri" not in mlflow_cmd and not any("@" in str(a) for a in mlflow_cmd)
    backend = urlsplit(service_env(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme.startswith("postgresql")
    assert (backend.hostname, backend.username, backend.password) == ("postgres", user, password)
    assert backend.path != prefect_db.path  # one database each: both keep an alembic_version table
    assert "--artifacts-destination" in mlflow_cmd
    mlflow_port = int(mlflow_cmd[mlflow_cmd.index("--port") + 1])

    worker = service_env(services["worker"])
    api = urlsplit(worker["PREFECT_API_URL"])
    assert api.hostname == "prefect-server" and api.path == "/api"
    assert str(api.port) in " ".join(services["prefect-server"]["healthcheck"]["test"])
    tracking = urlsplit(worker["XCO2_MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == ("mlflow", mlflow_port)
    assert worker["XCO2_REPO"] == "/app" and worker["XCO2_DATA_DIR"]
    command = services["worker"]["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert f"--pool {POOL}" in command and "deployments.stack deploy" in command
    # Every named volume a service mounts is declared.
    declared = set(compose.get("volumes") or {})
    for service in services.values():
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            assert source.startswith((".", "/")) or source in declared, source
