"""MLflow tracking, registration, champion/challenger promotion and loading the champion.

The tracking DB is conftest's session-wide `tracking_uri` fixture (one sqlite file per session),
so the registered model names here are unique to this file. The
versions compared in promotion share one tiny trained network and differ only by a target offset
baked into their scalers, so "worse" and "better" are certain rather than a matter of training luck.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
import mlflow.onnx  # noqa: E402
import mlflow.pytorch  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from models.evaluation import regression_metrics  # noqa: E402
from tasks.analysis.training_figures import plot_loss_curves, plot_scatter  # noqa: E402
from models.onnx_export import check_onnx_parity, export_onnx  # noqa: E402
from models.onnx_session import open_session, predict_batched  # noqa: E402
from models.scaling import Scalers  # noqa: E402
from models.training import TrainedModel, TrainingConfig, train_resnet_lstm  # noqa: E402
from registry import promotion as promotion_module  # noqa: E402
from registry.champion import ChampionNotFoundError, load_champion  # noqa: E402
from registry.promotion import promote  # noqa: E402
from registry.redaction import redact_mapping, redact_uri  # noqa: E402
from registry.store import RegistryError, artifact_root_for  # noqa: E402
from registry.tracking import log_training_run  # noqa: E402

N_FEATURES = 20
FEATURES = [f"cov_{i:02d}" for i in range(N_FEATURES)]
MODEL = "test-registry-promotion"


def toy_xco2(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)) * 5
    y = 410 + 0.4 * X[:, 0] - 0.2 * X[:, 1] + rng.normal(scale=0.1, size=n)
    return X, y


@pytest.fixture(scope="session")
def trained() -> TrainedModel:
    X, y = toy_xco2(300, seed=0)
    return train_resnet_lstm(X[:240], y[:240], X[240:], y[240:], FEATURES, "toy-v1",
                             TrainingConfig(max_epochs=3, batch_size=64))


@pytest.fixture(scope="session")
def eval_data() -> tuple[np.ndarray, np.ndarray]:
    return toy_xco2(200, seed=99)


def offset(trained: TrainedModel, ppm: float) -> TrainedModel:
    """The same network predicting `ppm` higher everywhere."""
    s = trained.scalers
    return replace(trained, scalers=Scalers(s.feature_mean, s.feature_std,
                                            s.target_mean + ppm, s.target_std))


def register(tracking_uri, name, model, workdir: Path, eval_data, figures=(), **kwargs):
    X, y = eval_data
    onnx_path = export_onnx(model, workdir / "model.onnx")
    parity = check_onnx_parity(model, onnx_path, X[:50], batch_sizes=(7, 50))
    return log_training_run(
        tracking_uri, "test-registry", name, model, onnx_path,
        metrics=regression_metrics(y, model.predict(X)),
        params=kwargs.pop("params", {"data_days": 3}),
        figures=list(figures),
        tags=kwargs.pop("tags", {"trigger": "test"}),
        onnx_parity_max_abs_ppm=parity,
        **kwargs,
    )


# --- logging one run -------------------------------------------------------------------------

def test_log_training_run_records_everything(tracking_uri, trained, eval_data, tmp_path,
                                            monkeypatch):
    X, y = eval_data
    figures = [plot_loss_curves(trained.history, tmp_path / "loss.png"),
               plot_scatter(y, trained.predict(X), tmp_path / "scatter.png")]
    uri_before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    info = register(
        tracking_uri, "test-registry-logging", trained, tmp_path, eval_data, figures,
        params={"archive": "postgresql://xco2:hunter2@db/xco2", "api_token": "abc123"},
        tags={"trigger": "test", "db_password": "hunter2"},
    )
    # The process-global MLflow URI is left as it was.
    assert mlflow.get_tracking_uri() == uri_before
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert info.version == 1 and info.model_uri == "models:/test-registry-logging/1"

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(info.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    for key, value in TrainingConfig(max_epochs=3, batch_size=64).to_params().items():
        assert params[key] == str(value)
    assert (params["n_train"], params["n_val"], params["n_features"]) == ("240", "60", "20")
    assert params["feature_set_version"] == "toy-v1"
    assert "hunter2" not in json.dumps([params, tags]) and "abc123" not in json.dumps(params)
    assert params["archive"] == "postgresql://xco2:***@db/xco2"
    for key in ("val_rmse", "val_r2", "val_slope", "val_mae", "val_bias", "val_n",
                "onnx_parity_max_abs_ppm", "best_epoch"):
        assert key in metrics
    assert metrics["val_n"] == 200
    history = client.get_metric_history(info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [h["val_loss"] for h in trained.history])
    assert tags["feature_set_version"] == "toy-v1"

    listed = {a.path for a in client.list_artifacts(info.run_id)}
    assert {"onnx", "figures", "scalers.json", "features.json"} <= listed
    assert {a.path for a in client.list_artifacts(info.run_id, "figures")} == {
        "figures/loss.png", "figures/scatter.png"}
    assert [a.path for a in client.list_artifacts(info.run_id, "onnx")] == ["onnx/model.onnx"]
    db_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
    assert run.info.artifact_uri.startswith((db_dir / "mlartifacts").as_uri())
    assert (db_dir / "mlartifacts").is_dir()

    version = client.get_model_version("test-registry-logging", "1")
    assert version.tags["feature_set_version"] == "toy-v1"
    assert float(version.tags["val_rmse"]) == pytest.approx(metrics["val_rmse"], rel=1e-5)
    assert float(version.tags["onnx_parity_max_abs_ppm"]) <= 1e-3
    assert version.tags["model_flavor"] == "onnx"

    # The registered version is the ONNX flavour: raw covariates in, ppm out, no torch needed.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    model_info = mlflow.models.get_model_info("models:/test-registry-logging/1")
    assert "onnx" in model_info.flavors and "pytorch" not in model_info.flavors
    assert [s.name for s in model_info.signature.inputs.inputs] == ["features"]
    assert [s.name for s in model_info.signature.outputs.inputs][0] == "xco2"
    proto = mlflow.onnx.load_model("models:/test-registry-logging/1")
    assert {p.key for p in proto.metadata_props} >= {"xco2.feature_names", "xco2.scalers"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["xco2"], {"features": X[:10].astype(np.float32)})[0]
    np.testing.assert_allclose(got, trained.predict(X[:10]), atol=1e-3)

    # The torch model stays with the run, unregistered, and carries its scalers too.
    assert info.torch_model_uri and info.torch_model_uri.startswith("models:/")
    assert tags["torch_model_uri"] == info.torch_model_uri
    assert version.tags["torch_model_uri"] == info.torch_model_uri
    loaded = mlflow.pytorch.load_model(info.torch_model_uri)
    with torch.no_grad():
        got = loaded(torch.from_numpy(X[:10].astype(np.float32)))
    got = (got[0] if isinstance(got, tuple) else got).numpy()
    np.testing.assert_allclose(got, trained.predict(X[:10]), atol=1e-4)
    # Only the ONNX flavour was registered.
    assert [int(v.version) for v in client.search_model_versions(
        "name='test-registry-logging'")] == [1]


def test_log_training_run_refuses_unverified_or_foreign_onnx(tracking_uri, trained, eval_data,
                                                             tmp_path):
    onnx_path = export_onnx(trained, tmp_path / "model.onnx")
    metrics = regression_metrics(eval_data[1], trained.predict(eval_data[0]))
    with pytest.raises(ValueError, match="check_onnx_parity"):
        log_training_run(tracking_uri, "test-registry", "test-registry-never", trained, onnx_path,
                         metrics, {}, [], {})
    foreign = replace(trained, feature_set_version="other-v9")
    with pytest.raises(ValueError, match="not exported from this trained model"):
        log_training_run(tracking_uri, "test-registry", "test-registry-never", foreign, onnx_path,
                         {**metrics, "onnx_parity_max_abs_ppm": 0.0}, {}, [], {})


# --- promotion -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def promotions(tracking_uri, trained, eval_data, tmp_path_factory):
    """v1 (+8 ppm) first; v2 (+20 ppm) worse; v3 (no offset) better but first held back by a
    huge margin, then promoted."""
    X, y = eval_data
    work = tmp_path_factory.mktemp("promotion")
    decisions = {}
    for version, ppm in ((1, 8.0), (2, 20.0), (3, 0.0)):
        info = register(tracking_uri, MODEL, offset(trained, ppm), work / f"v{version}",
                        eval_data)
        assert info.version == version
        if version == 3:
            decisions["3-margin"] = promote(tracking_uri, MODEL, 3, X, y, margin_ppm=1000.0)
        decisions[version] = promote(tracking_uri, MODEL, version, X, y)
    return decisions


def version_tags(tracking_uri, version):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.get_model_version(MODEL, str(version)).tags


def test_first_version_becomes_champion(promotions, tracking_uri):
    first = promotions[1]
    assert (first.alias, first.champion_version, first.champion_rmse) == ("champion", 1, None)
    assert "first version" in first.reason
    assert version_tags(tracking_uri, 1)["promotion_decision"] == "champion"


def test_worse_version_becomes_challenger_with_tags_on_both(promotions, tracking_uri):
    worse = promotions[2]
    assert (worse.alias, worse.champion_version, worse.previous_champion_version) == (
        "challenger", 1, 1)
    assert worse.challenger_rmse > worse.champion_rmse
    v2 = version_tags(tracking_uri, 2)
    assert v2["promotion_decision"] == "challenger" and v2["promotion_compared_with"] == "v1"
    assert float(v2["promotion_eval_rmse"]) == pytest.approx(worse.challenger_rmse, rel=1e-5)
    assert float(v2["promotion_champion_eval_rmse"]) == pytest.approx(worse.champion_rmse,
                                                                      rel=1e-5)
    v1 = version_tags(tracking_uri, 1)
    assert v1["promotion_vs_v2_outcome"] == "kept"
    assert v1["promotion_vs_v2_eval_data_sha256"] == v2["promotion_eval_data_sha256"]


def test_margin_holds_back_a_slightly_better_version(promotions):
    held = promotions["3-margin"]
    assert held.alias == "challenger" and held.champion_version == 1
    assert held.challenger_rmse < held.champion_rmse


def test_better_version_becomes_champion(promotions, tracking_uri):
    better = promotions[3]
    assert (better.alias, better.champion_version, better.previous_champion_version) == (
        "champion", 3, 1)
    assert better.challenger_rmse < better.champion_rmse
    assert version_tags(tracking_uri, 1)["promotion_vs_v3_outcome"] == "replaced"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert client.get_model_version_by_alias(MODEL, "champion").aliases == ["champion"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == 3


def test_promote_unknown_version_is_a_clear_error(promotions, tracking_uri, eval_data):
    with pytest.raises(RegistryError, match="v42 does not exist"):
        promote(tracking_uri, MODEL, 42, *eval_data)


def test_evaluation_features_are_matched_by_name():
    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, 4.0]})
    got = promotion_module._features_for(frame, ["a", "b"], "m v1", ["a", "b"])
    np.testing.assert_array_equal(got, [[3.0, 1.0], [4.0, 2.0]])
    with pytest.raises(RegistryError, match="DataFrame"):
        promotion_module._features_for(np.zeros((2, 2)), ["a", "c"], "m v1", ["a", "b"])
    with pytest.raises(RegistryError, match="lacks: c"):
        promotion_module._features_for(frame, ["a", "c"], "m v1", ["a", "b"])


# --- loading the champion --------------------------------------------------------------------

def test_load_champion_follows_the_alias(promotions, tracking_uri, trained, eval_data, tmp_path):
    X, _ = eval_data
    champion = load_champion(tracking_uri, MODEL, tmp_path)
    assert (champion.version, champion.feature_set_version) == (3, "toy-v1")
    assert champion.onnx_path == tmp_path / "3" / "model.onnx" and champion.onnx_path.is_file()
    assert champion.model_uri == f"models:/{MODEL}/3" and champion.flavor == "onnx"
    assert "onnx" in (tmp_path / "3" / "MLmodel").read_text()  # the registered flavour's files
    assert champion.feature_names == tuple(FEATURES) and "val_rmse" in champion.metrics
    session, _ = open_session(champion.onnx_path, prefer_cuda=False)
    np.testing.assert_allclose(predict_batched(session, X, 64), trained.predict(X), atol=1e-3)

    # Cached: a second call does not download again.
    stamp = champion.onnx_path.stat().st_mtime_ns
    assert load_champion(tracking_uri, MODEL, tmp_path).onnx_path.stat().st_mtime_ns == stamp

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias(MODEL, "champion", "1")  # a rollback by hand
    try:
        rolled_back = load_champion(tracking_uri, MODEL, tmp_path)
        assert rolled_back.version == 1 and rolled_back.run_id != champion.run_id
        assert rolled_back.onnx_path == tmp_path / "1" / "model.onnx"
        session, _ = open_session(rolled_back.onnx_path, prefer_cuda=False)
        np.testing.assert_allclose(predict_batched(session, X[:5], 64),
                                   trained.predict(X[:5]) + 8.0, atol=1e-3)
    finally:
        client.set_registered_model_alias(MODEL, "champion", "3")


def test_champion_loads_without_torch(promotions, tracking_uri, trained, eval_data, tmp_path):
    """A map-making worker: load_champion + OnnxPredictor, and mlflow.onnx through the alias URI,
    in a fresh interpreter that never imports torch."""
    X, _ = eval_data
    np.save(tmp_path / "X.npy", X[:20].astype(np.float32))
    script = textwrap.dedent(f"""
        import json, os, sys
        import numpy as np
        from registry.champion import load_champion
        from tasks.mapping.onnx_runtime import OnnxPredictor
        champion = load_champion({tracking_uri!r}, {MODEL!r}, {str(tmp_path / "cache")!r})
        predictor = OnnxPredictor(champion.onnx_path, prefer_cuda=False)
        out = predictor.run(np.load({str(tmp_path / "X.npy")!r}))
        os.environ["MLFLOW_TRACKING_URI"] = {tracking_uri!r}
        import mlflow.onnx
        proto = mlflow.onnx.load_model({f"models:/{MODEL}@champion"!r})
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print(json.dumps({{"version": champion.version,
                          "xco2": out["xco2"].tolist(), "nodes": len(proto.graph.node)}}))
    """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == 3
    assert result["nodes"] > 0
    np.testing.assert_allclose(result["xco2"], trained.predict(X[:20]), atol=1e-3)


def test_a_stale_cache_of_another_run_is_replaced(promotions, tracking_uri, tmp_path):
    # A recreated registry reuses version numbers: the cached "3" is someone else's model.
    stale = tmp_path / "3"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"not a model")
    (stale / "source.json").write_text(json.dumps({"run_id": "another-registry"}))
    champion = load_champion(tracking_uri, MODEL, tmp_path)
    assert champion.onnx_path == stale / "model.onnx"
    assert json.loads((stale / "source.json").read_text())["run_id"] == champion.run_id
    assert champion.feature_names == tuple(FEATURES)  # a real export now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3"]  # no staging leftovers


def test_a_version_registered_in_the_pytorch_flavour_is_served_from_its_run(
        tracking_uri, trained, tmp_path):
    """Versions registered before the ONNX flavour (pytorch flavour, ONNX as a run artifact)."""
    name = "test-registry-legacy"
    model = offset(trained, 5.0)
    onnx_path = export_onnx(model, tmp_path / "export" / "model.onnx")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_experiment_by_name("test-registry")
    experiment_id = (experiment.experiment_id if experiment else
                     client.create_experiment("test-registry",
                                              artifact_location=artifact_root_for(tracking_uri)))
    run = client.create_run(experiment_id)
    client.log_artifact(run.info.run_id, str(onnx_path), "onnx")
    legacy = tmp_path / "model"
    legacy.mkdir()
    (legacy / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    client.log_artifacts(run.info.run_id, str(legacy), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")

    champion = load_champion(tracking_uri, name, tmp_path / "cache")
    assert (champion.version, champion.flavor) == (1, "run-artifact")
    X, _ = toy_xco2(10, seed=3)
    session, _ = open_session(champion.onnx_path, prefer_cuda=False)
    np.testing.assert_allclose(predict_batched(session, X, 64), model.predict(X), atol=1e-3)


def test_load_champion_without_one_is_a_clear_error(tracking_uri, tmp_path):
    with pytest.raises(ChampionNotFoundError, match="train and promote a model first"):
        load_champion(tracking_uri, "test-registry-never-trained", tmp_path)


# --- secrets and storage ---------------------------------------------------------------------

def test_credentials_are_redacted():
    assert redact_uri("postgresql://u:pw@host:5432/db") == "postgresql://u:***@host:5432/db"
    assert redact_uri("https://tok@host/x") == "https://tok@host/x"  # no password part
    assert redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    assert redact_mapping({"token": "t", "EARTHDATA_PASSWORD": "p", "n": 3}) == {
        "token": "***", "EARTHDATA_PASSWORD": "***", "n": "3"}


def test_artifacts_go_next_to_the_sqlite_db():
    assert artifact_root_for("sqlite:////srv/x/mlflow.db") == "file:///srv/x/mlartifacts"
    assert artifact_root_for("http://mlflow:5000") is None


# --- the network's share in the maps ---------------------------------------------------------

def test_a_version_says_whether_its_maps_use_the_network(tracking_uri, eval_data, tmp_path):
    from models.background import INPUTS, TERMS, Background
    from models.residual_field import ResidualField

    names = [*INPUTS, "cov_extra"]
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.uniform(0, 5, 300), rng.uniform(-1, 1, 300), rng.uniform(-1, 1, 300),
                         rng.uniform(28, 32, 300), rng.uniform(102, 106, 300), rng.normal(size=300)])
    background = Background((410.0, 2.4) + (0.0,) * (len(TERMS) - 2), 2.5, 30.0, 104.0)
    y = background.evaluate_features(X, names) + 0.3 * X[:, 5]
    network = train_resnet_lstm(X[:240], y[:240], X[240:], y[240:], names, "toy-bg-v1",
                                TrainingConfig(max_epochs=1, batch_size=64), background=background)
    # Share 0 with a daily-anomaly field: what every real box measured so far has chosen.
    model = replace(network, anomaly_scale=0.0,
                    residual_field=ResidualField(0.8, 60.0, 3.0, 0.2, 400.0, 20.0, 0.05, 0.1))
    name = "test-registry-network-share"
    info = register(tracking_uri, name, model, tmp_path, (X, y))

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version(name, str(info.version))
    in_map = "no (share 0.00: maps are background + daily-anomaly field)"
    assert version.tags["network_share"] == "0.0" and version.tags["network_in_map"] == in_map
    assert version.description == ("Network share 0.00: this version's maps are background + daily-anomaly field; "
                                   "its network is not used.")
    run = client.get_run(info.run_id)
    assert run.data.metrics["network_share"] == 0.0 and run.data.tags["network_in_map"] == in_map
    # The champion's reading on the registered model's own page.
    promote(tracking_uri, name, info.version, X, y)
    assert client.get_registered_model(name).tags["champion_network_in_map"] == f"v{info.version}: {in_map}"
