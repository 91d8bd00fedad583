"""Both flows through a real (temporary) Prefect server on a tiny region of the demo world."""

from __future__ import annotations

from datetime import date

import mlflow
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from flows.demo import SMALL_REGION, DemoOptions, run_demo
from flows.daily import daily_update
from models.holdouts import NetworkShare
from registry.champion import load_champion
from tasks.archive.cog import TRUE_COLUMN_BAND, UNCERTAINTY_BAND, band_index
from tasks.archive import collection_path, day_cog_path, validate_stac
from tasks.gridding.geometry import Grid
from tasks.regions.boundary import region_mask


@pytest.fixture(scope="module")
def demo_run(prefect_harness, tracking_uri, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("e2e") / "xco2-data"
    opts = DemoOptions(data_dir=data_dir, start=date(2020, 6, 1), days=6, archive_days=2, max_epochs=3,
                       max_training_samples=4000, small=True,
                       extra={"mlflow_tracking_uri": tracking_uri, "registered_model_name": "e2e-resnet-lstm"})
    return opts, run_demo(opts)


def test_demo_summary(demo_run):
    opts, summary = demo_run
    assert summary["samples"] > 500
    assert summary["archive_days"] == ["2020-06-05", "2020-06-06"]
    assert summary["model"]["version"] == 1 and summary["model"]["alias"] == "champion"
    assert summary["model"]["onnx_parity_max_abs_ppm"] <= 1e-3
    # Whether the maps use the network, in the words `xco2 demo` prints.
    share = summary["model"]["network_share"]
    assert share["reading"].startswith(f"network share {share['share']:.2f}: the maps are background + ")
    v = summary["validation"]
    assert v["n"] > 100 and np.isfinite(v["rmse"])
    acc = summary["truth_accuracy"]
    # The small region crosses Sichuan's border: cells outside the province are not mapped.
    inside = region_mask(SMALL_REGION, Grid.for_region(SMALL_REGION, 0.01))
    assert 0 < inside.sum() < inside.size and acc["all_cells"]["n"] == 2 * inside.sum()
    from tasks.analysis.accuracy import observed_cells

    # Inside the province the small dense world may observe every cell within six days.
    never = inside & ~observed_cells(opts.data_dir / "regions" / SMALL_REGION.name, Grid.for_region(SMALL_REGION, 0.01))
    if never.any():
        assert acc["never_observed_cells"]["n"] == 2 * never.sum()
    else:
        assert acc["never_observed_cells"] is None
    assert abs(acc["all_cells"]["bias"]) < 5  # a 3-epoch model is rough, but in the right place


def test_archive_cogs_are_valid_and_on_the_grid(demo_run):
    opts, summary = demo_run
    grid = Grid.for_region(SMALL_REGION, 0.01)
    inside = region_mask(SMALL_REGION, grid)
    archive = opts.data_dir / "archive"
    for day in summary["archive_days"]:
        path = day_cog_path(archive, SMALL_REGION.name, date.fromisoformat(day))
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 4326
            assert src.transform.almost_equals(grid.transform)
            assert (src.height, src.width) == grid.shape
            assert src.dtypes[0] == "float32"
            tags = src.tags()
            assert tags["units"] == "ppm" and tags["synthetic"] == "true" and tags["model_version"] == "1"
            assert tags["model_name"] == "e2e-resnet-lstm"
            values = src.read(1)
            # Band 2: the calibrated 68% half-width for a retrieval; band 3 (format 2, issue 22) the
            # true column's, narrower by the retrieval noise; found by name as readers should.
            assert src.count == 3 and tags["xco2_format_version"] == "2"
            assert band_index(src, UNCERTAINTY_BAND) == 2 and band_index(src, TRUE_COLUMN_BAND) == 3
            uncertainty = src.read(2)
            true_column = src.read(3)
            # The champion carries a daily-anomaly field: it replaces the anchoring offset on every day.
            assert int(tags["daily_anomaly_superobs"]) > 0 and int(tags["own_day_superobs"]) > 0
            assert "anchor_offset_ppm" not in tags
        assert np.isfinite(values[inside]).all() and np.isnan(values[~inside]).all()  # nodata outside Sichuan
        uncertainty = uncertainty[inside]
        assert np.isfinite(uncertainty).all() and (uncertainty > 0).all() and uncertainty.mean() < 5
        true_column = true_column[inside]
        assert np.isfinite(true_column).all() and (true_column > 0).all() and true_column.mean() < uncertainty.mean()
        assert 395 < values[inside].min() and values[inside].max() < 430
    assert validate_stac(collection_path(archive, SMALL_REGION.name)) == []


def test_registry_has_a_champion_with_an_onnx_matching_torch(demo_run, tracking_uri, tmp_path):
    opts, _ = demo_run
    champion = load_champion(tracking_uri, "e2e-resnet-lstm", tmp_path)
    assert champion.version == 1 and champion.onnx_path.is_file()
    import onnxruntime as ort

    from tasks.covariates.features import FEATURE_NAMES
    from tasks.samples.store import read_samples

    mlflow.set_tracking_uri(tracking_uri)
    # The registered version is the ONNX flavour; the torch model stays with the run.
    torch_uri = mlflow.MlflowClient(tracking_uri, tracking_uri).get_run(champion.run_id).data.tags["torch_model_uri"]
    torch_model = mlflow.pytorch.load_model(torch_uri)
    samples = read_samples(opts.data_dir / "regions" / SMALL_REGION.name)
    import torch

    session = ort.InferenceSession(str(champion.onnx_path), providers=["CPUExecutionProvider"])
    for n in (7, 300):
        x = np.array(samples[list(FEATURE_NAMES)].to_numpy(np.float32)[:n])
        with torch.no_grad():
            expected = torch_model.eval()(torch.from_numpy(x)).numpy()
        got = session.run(None, {"features": x})[0]
        assert np.max(np.abs(got - expected)) <= 1e-3


def test_rerunning_the_daily_flow_is_idempotent(demo_run):
    opts, summary = demo_run
    # Only the data dir and the look-back: region, source, registry and the world's last day (no
    # dates given, as the stack's nightly deployment runs) are the demo's record (issue 20).
    overrides = {"data_dir": str(opts.data_dir), "archive_lookback_days": 2}
    path = day_cog_path(opts.data_dir / "archive", SMALL_REGION.name, date(2020, 6, 6))
    before = path.read_bytes()
    again = daily_update(overrides=overrides)
    assert again["window"][1] == "2020-06-06"
    assert again["new_granules"] == 0 and again["days"] == [] and again["archive_days"] == []
    assert path.read_bytes() == before
    assert not (opts.data_dir / "quarantine").exists() or not any((opts.data_dir / "quarantine").rglob("*.*"))


def test_replaced_meteorology_recomputes_the_days_it_closes(demo_run):
    import os

    opts, summary = demo_run
    overrides = {"data_dir": str(opts.data_dir), "source": "demo", "region": SMALL_REGION.model_dump(),
                 "archive_lookback_days": 2, **opts.extra}
    final = opts.data_dir / "demo" / "remote" / "era5" / "era5_single_levels_20200606.nc"
    os.utime(final, ns=(final.stat().st_atime_ns, final.stat().st_mtime_ns + 10**9))  # a new delivery
    again = daily_update(start="2020-06-01", end="2020-06-06", overrides=overrides)
    assert again["new_granules"] == 1
    assert again["recomputed_days"] == ["2020-06-05", "2020-06-06"]
    assert [d["day"] for d in again["days"]] == ["2020-06-05", "2020-06-06"]
    assert sorted(d["day"] for d in again["archive_days"]) == ["2020-06-05", "2020-06-06"]


def test_retrain_with_the_model_comparison(demo_run, tracking_uri):
    from flows.retrain import monthly_retrain

    opts, _ = demo_run
    overrides = {"data_dir": str(opts.data_dir), "source": "demo", "region": SMALL_REGION.model_dump(),
                 "max_epochs": 2, "max_training_samples": 2000, "max_validation_samples": 500,
                 "comparison_protocols": ["random_holdout", "spatial_blocks", "temporal_blocks"],
                 "comparison_models": ["random_forest", "xgboost"], "comparison_max_train_samples": 800,
                 "comparison_folds": 2,  # a 0.5 degree box holds only four 50 km blocks
                 **opts.extra}
    result = monthly_retrain(overrides=overrides)
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    gate = "scoring halves of held-out blocks and days"
    assert result["promotion_holdout"] == gate
    assert list(result["holdouts"]) == ["spatial blocks", "whole days", "random (optimistic)"]  # headline first
    assert result["spatial_metrics"] == result["holdouts"]["spatial blocks"] and result["spatial_metrics"]["n"] > 0
    assert result["metrics"] == result["holdouts"]["random (optimistic)"]
    assert all(0 < s["coverage68"] <= 1 and "r2_detrended" in s for s in result["holdouts"].values())
    # (a scoring half of one held-out day has no trend to remove: its detrended R2 is NaN)
    assert np.isfinite(result["spatial_metrics"]["r2_detrended"])
    client = MlflowClient(tracking_uri=tracking_uri)
    v = result["version"]
    for version in {v, 1}:
        tags = client.get_model_version("e2e-resnet-lstm", str(version)).tags
        assert tags[f"promotion_v{v}_holdout"].startswith(gate)
    # The registered version says whether its maps use the network, as the retrain's result does.
    registered = client.get_model_version("e2e-resnet-lstm", str(v))
    network = NetworkShare(result["anomaly_scale"], with_field=result["residual_field"] is not None)
    assert result["network_share"] == network.to_dict()
    assert registered.tags["network_share"] == str(round(result["anomaly_scale"], 4))
    assert registered.tags["network_in_map"] == network.in_map and registered.description == network.sentence
    assert set(result["figures"]) == {"loss curves", "heldout scatter", "reliability"}  # issue 22: both intervals
    for uri in result["figures"].values():
        assert Path(uri.removeprefix("file://")).is_file(), uri  # the report links real artifacts
    rows = {(r["model"], r["protocol"]): r for r in result["comparison"]}
    assert set(rows) == {(m, p) for m in ("random_forest", "xgboost")
                         for p in ("random_holdout", "spatial_blocks", "temporal_blocks")}
    assert all(np.isfinite(r["rmse"]) and r["n"] > 0 and np.isfinite(r["truth_rmse"]) for r in rows.values())
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[f"xco2-{SMALL_REGION.name}"], output_format="list")
    assert any(run.data.tags.get("model") == "random_forest" and "spatial_blocks_rmse" in run.data.metrics
               for run in runs)


def test_the_daily_run_publishes_a_quicklook_and_the_champion(demo_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        def latest(key):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert found, f"no artifact {key}"
            return max(found, key=lambda a: a.created)

        quicklook = latest("daily-quicklook")
        assert "data:image/png;base64," in quicklook.data and "2020-06-06" in quicklook.data
        model = latest("daily-model")
        assert "e2e-resnet-lstm v" in str(model.data) and "val_rmse" in str(model.data)


def test_maps_add_the_daily_anomaly_and_score_their_own_day(demo_run, tracking_uri, tmp_path):
    """A map is the champion's graph plus the kriged residuals around the day (cached per champion
    version), and its COG and STAC item carry the leave-its-own-day-out score."""
    from tasks.mapping.onnx_runtime import OnnxPredictor
    from tasks import prefect_tasks
    from tasks.settings import load_settings

    opts, summary = demo_run
    day = date(2020, 6, 6)
    champion = load_champion(tracking_uri, "e2e-resnet-lstm", tmp_path / "models")
    assert champion.mapping and champion.mapping["residual_field"] and champion.mapping["background"]
    grid = Grid.for_region(SMALL_REGION, 0.01)
    maps, rows = {}, {}
    for with_anomaly in (False, True):
        settings = load_settings(data_dir=str(opts.data_dir), source="demo", region=SMALL_REGION.model_dump(),
                                 archive_dir=str(tmp_path / str(with_anomaly)), daily_anomaly=with_anomaly,
                                 **opts.extra)
        rows[with_anomaly] = prefect_tasks.map_day.fn(settings, grid, day, OnnxPredictor(champion.onnx_path), champion)
        with rasterio.open(day_cog_path(settings.archive_root, SMALL_REGION.name, day)) as src:
            maps[with_anomaly] = (src.tags(), src.read(1))
    assert rows[False]["own_day_superobs"] is None and rows[False]["anchor_offset_ppm"] is None  # the graph alone
    cache = settings.region_dir / "residuals" / f"v{champion.version}" / f"{day.isoformat()}.parquet"
    assert cache.is_file()
    tags, mapped = maps[True]
    field = (mapped - maps[False][1])[region_mask(SMALL_REGION, grid)]
    assert np.isfinite(field).all() and np.ptp(field) > 0  # a field, not one offset
    assert int(tags["own_day_superobs"]) == rows[True]["own_day_superobs"] > 0
    assert 0 < float(tags["own_day_rmse_ppm"]) < 5
    item = next((settings.archive_root / SMALL_REGION.name / "2020").glob("*_20200606.json")).read_text()
    assert '"xco2:own_day_rmse_ppm"' in item
