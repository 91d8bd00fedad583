"""Shared test fixtures: one Prefect test server and one MLflow SQLite store per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Prefect reads its home at import: point it at a throwaway folder before anything imports it.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="xco2-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect-home"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.pop("PREFECT_API_URL", None)
for _var in [v for v in os.environ if v.startswith("XCO2_") and v != "XCO2_TEST_OUTPUT"]:
    os.environ.pop(_var)
# The stack's state dir, where commands run without a stack record their Prefect runs: never the
# checkout's ./.xco2-stack.
os.environ["XCO2_STACK_DIR"] = str(_SESSION_TMP / "stack")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary, SQLite-backed) Prefect server for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tracking_uri(session_tmp) -> str:
    """One MLflow SQLite store for the whole session (a fresh file is migrated once, in seconds)."""
    path = session_tmp / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No XCO2_* variable from the caller's environment and no ./xco2.toml from elsewhere: settings
    as a test sets them. (The credential tests define their own `clean_env`, for the credential
    variables.)"""
    for name in list(os.environ):
        if name.upper().startswith("XCO2_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.fixture(scope="session")
def small_world_with_champion(prefect_harness, tracking_uri, tmp_path_factory):
    """Builds a demo world of `days` days from 2020-06-01 over the small region, with a champion
    registered as `model` (one short retrain); returns its folder and the settings overrides that
    run flows on it. The backfill tests map its days in archives of their own."""
    from datetime import date

    from flows.demo import SMALL_REGION, DemoOptions, run_demo

    def build(name: str, days: int, model: str) -> tuple[Path, dict]:
        root = tmp_path_factory.mktemp(name)
        opts = DemoOptions(data_dir=root / "xco2-data", start=date(2020, 6, 1), days=days, archive_days=1,
                           max_epochs=2, max_training_samples=2000, max_validation_samples=500, small=True,
                           extra={"mlflow_tracking_uri": tracking_uri, "registered_model_name": model})
        run_demo(opts)
        # Anchoring stays on, on fewer observed cells: on a 50 x 50 cell region it would otherwise
        # predict ten times more cells than the map itself.
        base = {"data_dir": str(opts.data_dir), "source": "demo", "region": SMALL_REGION.model_dump(),
                "anchor_max_cells_per_day": 200, **opts.extra}
        return root, base

    return build
