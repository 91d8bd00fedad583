"""`xco2 serve`: the deployments of deployments/prefect.yaml served from one process, no worker.

The names, schedules, tags, parameters, descriptions and concurrency limits are read from
deployments/prefect.yaml, so the served deployments and the work-pool ones cannot drift apart.
Flows are imported only when serving (the backfill and report flows are not needed otherwise).
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # Prefect and the flows are imported only when serving
    from prefect import Flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO_ROOT / "deployments" / "prefect.yaml"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The `deployments:` entries of prefect.yaml, as written."""
    import yaml

    with open(path) as f:
        return list(yaml.safe_load(f).get("deployments") or [])


def entrypoint_module(entrypoint: str) -> tuple[str, str]:
    """'flows/daily.py:daily_update' -> ('flows.daily', 'daily_update')."""
    path, _, func = entrypoint.partition(":")
    if not path.endswith(".py") or not func:
        raise ValueError(f"entrypoint {entrypoint!r} is not 'path/to/file.py:function'")
    return ".".join(Path(path[: -len(".py")]).parts), func


def load_flow(entrypoint: str) -> Flow[..., Any]:
    module, func = entrypoint_module(entrypoint)
    return getattr(importlib.import_module(module), func)


def _schedule(item: dict[str, Any]) -> Schedule:
    from prefect.schedules import Cron, Interval, RRule

    extra = {k: item[k] for k in ("timezone", "active", "parameters", "slug") if item.get(k) is not None}
    if item.get("cron"):
        return Cron(item["cron"], day_or=item.get("day_or", True), **extra)
    if item.get("interval") is not None:
        return Interval(timedelta(seconds=float(item["interval"])), **extra)
    if item.get("rrule"):
        return RRule(item["rrule"], **extra)
    raise ValueError(f"schedule {item!r} has no cron, interval or rrule")


def _concurrency(value: Any) -> int | ConcurrencyLimitConfig | None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if value is None or isinstance(value, int):
        return value
    return ConcurrencyLimitConfig(**{k: v for k, v in value.items() if v is not None})


def to_deployment_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """The arguments of `flow.to_deployment` equivalent to one prefect.yaml entry."""
    return {
        "name": spec["name"],
        "description": spec.get("description"),
        "tags": list(spec.get("tags") or []),
        "parameters": dict(spec.get("parameters") or {}),
        "schedules": [_schedule(s) for s in spec.get("schedules") or []],
        "concurrency_limit": _concurrency(spec.get("concurrency_limit")),
    }


def build_deployments(specs: list[dict[str, Any]] | None = None) -> list[RunnerDeployment]:
    """One RunnerDeployment per prefect.yaml entry. Entrypoints are module paths, so the served
    runs find the flows whatever the current directory is."""
    from prefect.deployments.runner import EntrypointType

    out: list[RunnerDeployment] = []
    for spec in deployment_specs() if specs is None else specs:
        flow = load_flow(spec["entrypoint"])
        # Called outside an event loop, Prefect's async-dispatching method returns the deployment itself.
        out.append(cast("RunnerDeployment", flow.to_deployment(entrypoint_type=EntrypointType.MODULE_PATH,
                                                               **to_deployment_kwargs(spec))))
    return out


def serve_all(limit: int | None = None) -> None:
    """Serve every deployment of prefect.yaml from this process until interrupted."""
    from prefect import serve

    serve(*build_deployments(), limit=limit)
