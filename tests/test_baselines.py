"""Baselines (Random Forest, XGBoost), the models x protocols comparison, its figure, MLflow runs."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from models.baselines import MODELS, Budget, fit_random_forest, fit_xgboost, get_model
from models.comparison import (
    TABLE_COLUMNS,
    metrics_by_protocol,
    run_comparison,
    table_markdown,
)
from tasks.analysis.training_figures import comparison_figure

N = 3000
FEATURES = ["latitude", "longitude", "day", "elevation", "noise_a", "noise_b"]
PROTOCOLS = ["random_holdout", "spatial_blocks", "temporal_blocks"]
# One thread: OpenMP/joblib workers spin badly when the 2 cores are shared with other work.
TREES = Budget(rf_n_estimators=40, xgb_n_estimators=40, n_jobs=1)


def synthetic(seed: int = 0):
    """y = 410 + f(lat, lon) + g(day) + noise on a 2 x 2 degree box over 20 days.

    f varies on 50-120 km wavelengths, so a 50 km hole (half a wave) cannot be interpolated from
    its edges; g has a trend and a random offset per day (weather), which no other day reveals.
    `elevation` is loosely related to f, as real covariates are."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(30, 32, N)
    lon = rng.uniform(103, 105, N)
    day = rng.integers(0, 20, N)
    f = (3.0 * np.sin(2 * np.pi * lat / 0.9) * np.cos(2 * np.pi * lon / 1.1)
         + 1.0 * np.sin(2 * np.pi * lon / 0.5))
    g = 0.05 * day + rng.normal(0, 0.5, 20)[day]
    truth = 410 + f + g
    y = truth + rng.normal(0, 0.3, N)
    elevation = 1000 + 300 * np.sin(2 * np.pi * lat / 0.8) + rng.normal(0, 30, N)
    X = np.column_stack([lat, lon, day, elevation, rng.normal(size=N), rng.normal(size=N)])
    days = np.datetime64("2020-06-01") + day.astype("timedelta64[D]")
    return X.astype(np.float32), y, lat, lon, days, truth


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def result(data):
    X, y, lat, lon, days, truth = data
    return run_comparison(["random_forest", "xgboost"], PROTOCOLS, X, y, lat, lon, days, seed=1,
                          budget=TREES, truth=lambda cells, _days: truth[cells],
                          cells=np.arange(N), feature_names=FEATURES)


def test_baselines_fit_predict_ppm_deterministically(data):
    X, y = data[0], data[1]
    for fit in (fit_random_forest, fit_xgboost):
        a = fit(X[:1000], y[:1000], seed=3, n_estimators=20, n_jobs=1, feature_names=FEATURES)
        b = fit(X[:1000], y[:1000], seed=3, n_estimators=20, n_jobs=1, feature_names=FEATURES)
        pred = a.predict(X[1000:1100])
        assert pred.shape == (100,) and pred.dtype == np.float64
        # With n_jobs > 1 the trees are summed in any order: compare to the last bits only.
        np.testing.assert_allclose(pred, b.predict(X[1000:1100]), rtol=0, atol=1e-9)
        assert 400 < pred.mean() < 420
        assert a.params["n_estimators"] == 20 and a.n_train == 1000
        with pytest.raises(ValueError, match="expected features"):
            a.predict(X[:5, :3])


def test_model_registry_has_one_fit_signature(data):
    X, y = data[0], data[1]
    assert set(MODELS) == {"resnet_lstm", "random_forest", "xgboost"}
    budget = Budget.smoke(n_jobs=1, max_train_samples=300)
    for name in ("random_forest", "xgboost"):
        spec = get_model(name)
        predictor = spec.fit(X[:800], y[:800], X[800:900], y[800:900], FEATURES, 0, budget)
        assert predictor.n_train == 300  # the budget's cap, applied by the spec
        assert predictor.predict(X[900:910]).shape == (10,)
        assert spec.params(budget)["n_estimators"] == 50
    with pytest.raises(ValueError, match="unknown model"):
        get_model("linear")
    with pytest.raises(ValueError, match="invalid Budget"):
        Budget(max_epochs=0)


def test_comparison_table_rows_and_columns(result):
    table = result.table
    assert len(table) == 2 * len(PROTOCOLS)
    assert set(TABLE_COLUMNS) <= set(table.columns)
    assert {"truth_rmse", "truth_r2", "truth_n"} <= set(table.columns)
    assert set(zip(table["model"], table["protocol"])) == {
        (m, p) for m in ("random_forest", "xgboost") for p in PROTOCOLS}
    cv = table[table["protocol"] != "random_holdout"]
    assert (cv["n"] == N).all() and (cv["n_folds"] == 5).all()  # pooled out-of-fold
    assert (table.loc[table["protocol"] == "random_holdout", "n"] == 600).all()
    assert (table["fit_seconds"] > 0).all()
    assert table[["rmse", "r2", "slope", "mae", "bias"]].notna().all().all()
    assert "| random_forest | spatial_blocks |" in table_markdown(table)


def test_every_model_sees_the_same_splits(result):
    for protocol in PROTOCOLS:
        rf_idx, _ = result.predictions[("random_forest", protocol)]
        xgb_idx, _ = result.predictions[("xgboost", protocol)]
        assert np.array_equal(rf_idx, xgb_idx)
    folds = result.folds
    pivot = folds.pivot_table(index=["protocol", "fold"], columns="model", values="n_train")
    assert (pivot["random_forest"] == pivot["xgboost"]).all()


def test_block_protocols_are_harder_than_random_holdout(result):
    table = result.table.set_index(["model", "protocol"])
    for model in ("random_forest", "xgboost"):
        random = table.loc[(model, "random_holdout"), "rmse"]
        # A model that memorises location cannot fill a 50 km hole (seen >= 1.6x on 4 seeds).
        assert table.loc[(model, "spatial_blocks"), "rmse"] > 1.3 * random
        # Nor guess a held-out day's offset (>= 1.16x).
        assert table.loc[(model, "temporal_blocks"), "rmse"] > random
    # Scored against the noise-free truth, the same predictions lose the 0.3 ppm noise.
    rf = table.loc[("random_forest", "random_holdout")]
    assert rf["truth_rmse"] < rf["rmse"]


def test_resnet_lstm_runs_under_a_tiny_budget(data):
    X, y, lat, lon, days, _ = data
    budget = Budget.smoke(n_jobs=1, device="cpu", rf_n_estimators=20)
    res = run_comparison(["resnet_lstm", "random_forest"], ["random_holdout"], X, y, lat, lon,
                         days, seed=0, budget=budget, feature_names=FEATURES)
    row = res.table.set_index("model").loc["resnet_lstm"]
    assert row["n"] == 600 and row["n_train"] == 500 and np.isfinite(row["rmse"])
    assert np.array_equal(res.predictions[("resnet_lstm", "random_holdout")][0],
                          res.predictions[("random_forest", "random_holdout")][0])


def test_comparison_figure_is_a_png(result, tmp_path):
    path = comparison_figure(result.table, tmp_path / "fig7.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    with pytest.raises(ValueError):
        comparison_figure(result.table.iloc[0:0], tmp_path / "empty.png")


def test_mlflow_baseline_and_comparison_runs(result, tracking_uri, tmp_path):
    from mlflow import MlflowClient

    from registry.comparison_runs import log_baseline_run, log_comparison

    experiment = f"baselines-{uuid.uuid4().hex[:8]}"
    figure = comparison_figure(result.table, tmp_path / "comparison.png")
    run_id = log_baseline_run(
        tracking_uri, experiment, "random_forest",
        {**get_model("random_forest").params(TREES), "db_password": "hunter2"},
        metrics_by_protocol(result.table, "random_forest"), [figure], {"region": "box"})
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["n_estimators"] == "40"
    assert run.data.params["db_password"] == "***"
    assert run.data.tags["model"] == "random_forest" and run.data.tags["region"] == "box"
    for protocol in PROTOCOLS:
        assert run.data.metrics[f"{protocol}_rmse"] > 0
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == [
        "figures/comparison.png"]

    comparison_id = log_comparison(tracking_uri, experiment, result.table, figure)
    comparison = client.get_run(comparison_id)
    assert comparison.data.metrics["xgboost.spatial_blocks_rmse"] > 0
    names = {a.path for a in client.list_artifacts(comparison_id, "comparison")}
    assert names == {"comparison/comparison.csv", "comparison/comparison.md"}
    # Into an existing run: the baseline's.
    assert log_comparison(tracking_uri, experiment, result.table, None, run_id=run_id) == run_id
    assert "random_forest.temporal_blocks_r2" in client.get_run(run_id).data.metrics
