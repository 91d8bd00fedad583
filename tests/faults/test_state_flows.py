"""Issue 10, case 13 through the flows: the next daily run, and the retrain, heal a truncated
sample file before they read the store (and the daily run clears dead writers' temp files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.demo import SMALL_REGION
from tasks.samples.store import day_file, read_samples

# The store builder lives with the plain tests; importable whether or not tests/ is a package.
sys.path.insert(0, str(Path(__file__).parent))
from test_state_check import DAMAGED_DAY, END, START, build_store, settings_for, truncate  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("state-flows") / "xco2-data"
    build_store(data_dir)
    return data_dir


def _copy(pristine: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "xco2-data"
    shutil.copytree(pristine, data_dir)
    return data_dir


def _overrides(data_dir: Path, tracking_uri: str, model: str) -> dict:
    return {"data_dir": str(data_dir), "source": "demo", "region": SMALL_REGION.model_dump(),
            "mlflow_tracking_uri": tracking_uri, "registered_model_name": model, "archive_lookback_days": 1}


def test_the_next_daily_run_heals_a_truncated_sample_file(prefect_harness, tracking_uri, pristine, tmp_path):
    from flows.daily import daily_update

    data_dir = _copy(pristine, tmp_path)
    region_dir = settings_for(data_dir).region_dir
    path = day_file(region_dir, DAMAGED_DAY)
    original = truncate(path)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    temp = data_dir / "raw" / "gosat" / f".granule.nc.{dead}.0a1b2c3d.tmp"
    temp.write_bytes(b"partial")
    live = data_dir / "raw" / "gosat" / f".granule.nc.{os.getpid()}.0a1b2c3d.tmp"
    live.write_bytes(b"partial")

    result = daily_update(start=START.isoformat(), end=END.isoformat(),
                          overrides=_overrides(data_dir, tracking_uri, "state-daily-model"))
    found = {f["path"]: f for f in result["state_findings"]}
    assert set(found) == {str(path), str(temp)}
    assert found[str(path)]["kind"] == "samples" and "sampled again" in found[str(path)]["action"]
    assert path.read_bytes() == original and not temp.exists() and live.exists()
    assert len(read_samples(region_dir)) > 1000


@pytest.mark.slow
def test_the_retrain_heals_a_truncated_sample_file_before_training(prefect_harness, tracking_uri, pristine,
                                                                   tmp_path):
    from flows.retrain import monthly_retrain

    data_dir = _copy(pristine, tmp_path)
    path = day_file(settings_for(data_dir).region_dir, DAMAGED_DAY)
    original = truncate(path)
    result = monthly_retrain(overrides={**_overrides(data_dir, tracking_uri, "state-retrain-model"), "max_epochs": 1,
                                        "max_training_samples": 1000, "max_validation_samples": 500,
                                        "comparison_protocols": []})
    assert result["version"] >= 1 and result["metrics"]["n"] > 0
    assert path.read_bytes() == original
