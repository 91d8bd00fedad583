"""The ResNet-LSTM, its training, evaluation and ONNX export, on tiny synthetic data (CPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models import training
from models.evaluation import random_split, regression_metrics
from tasks.analysis.training_figures import plot_loss_curves, plot_scatter
from models.onnx_export import OnnxParityError, check_onnx_parity, export_onnx
from models.onnx_session import gpu_plausibly_present, open_session, predict_batched, read_metadata
from models.resnet_lstm import ResNetLSTM
from models.scaling import Scalers
from models.training import EarlyStopping, TrainedModel, TrainingConfig, train_resnet_lstm

N_FEATURES = 20
FEATURES = [f"cov_{i:02d}" for i in range(N_FEATURES)]
FAST = dict(batch_size=64)


def toy_xco2(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Covariates on mixed scales and an XCO2 near 410 ppm that depends on three of them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)) * rng.uniform(0.5, 50, N_FEATURES)
    X[:, 5] = 7.0  # a constant covariate: its std is guarded
    z = X / X.std(axis=0).clip(1e-9)
    y = 410 + 2.0 * z[:, 0] - 1.0 * z[:, 1] + np.sin(z[:, 2]) + rng.normal(scale=0.1, size=n)
    return X, y


@pytest.fixture(scope="module")
def split():
    X, y = toy_xco2(300)
    train_idx, val_idx = random_split(len(y), 0.2, seed=1)
    return X[train_idx], y[train_idx], X[val_idx], y[val_idx]


@pytest.fixture(scope="module")
def trained(split) -> TrainedModel:
    return train_resnet_lstm(*split, FEATURES, "toy-v1", TrainingConfig(max_epochs=6, **FAST))


# --- Table 4 ---------------------------------------------------------------------------------

def test_table4_layer_shapes():
    model = ResNetLSTM(46).eval()
    shapes = {}

    def keep(name):
        return lambda _m, _i, out: shapes.__setitem__(name, tuple(
            (out[0] if isinstance(out, tuple) else out).shape))

    model.stem.register_forward_hook(keep("stem"))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(keep(f"block{i + 1}"))
    model.lstm.register_forward_hook(keep("lstm"))
    out = model(torch.randn(4, 46))

    # Four stride-2 blocks halve 46 -> 23 -> 12 -> 6 -> 3 positions for the LSTM.
    assert shapes == {
        "stem": (4, 32, 46),
        "block1": (4, 64, 23),
        "block2": (4, 128, 12),
        "block3": (4, 256, 6),
        "block4": (4, 512, 3),
        "lstm": (4, 3, 128),
    }
    assert out.shape == (4,)
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        1, 32, (3,), (1,), (1,))
    for block in model.blocks:
        assert block.conv1.kernel_size == (3,) and block.conv1.stride == (2,)
    lstm = model.lstm
    assert (lstm.hidden_size, lstm.num_layers, lstm.dropout) == (128, 2, 0.5) and lstm.batch_first
    assert (model.head.in_features, model.head.out_features) == (128, 1)


# --- training --------------------------------------------------------------------------------

def test_training_learns_and_restores_best_weights(split):
    X_train, y_train, X_val, y_val = split
    seen = []
    model = train_resnet_lstm(
        X_train, y_train, X_val, y_val, FEATURES, "toy-v1",
        TrainingConfig(max_epochs=6, **FAST),
        on_epoch=lambda *args: seen.append(args),
    )
    val = [h["val_loss"] for h in model.history]
    assert len(model.history) == 6 and len(seen) == 6
    assert seen[0] == tuple(model.history[0][k] for k in ("epoch", "train_loss", "val_loss", "lr"))
    baseline_mae = float(np.mean(np.abs(y_val - y_train.mean())))
    assert min(val) < 0.6 * val[0]
    assert min(val) < 0.6 * baseline_mae, "no better than predicting the mean"
    assert model.best_epoch == int(np.argmin(val)) + 1
    # The returned weights are the best epoch's, not the last epoch's.
    restored_mae = float(np.mean(np.abs(model.predict(X_val) - y_val)))
    assert restored_mae == pytest.approx(model.best_val_loss, rel=1e-4)
    assert not model.model.training and next(model.model.parameters()).device.type == "cpu"
    assert (model.n_train, model.n_val) == (240, 60)


def test_same_seed_same_model(split):
    cfg = TrainingConfig(max_epochs=2, **FAST)
    a = train_resnet_lstm(*split, FEATURES, "toy-v1", cfg)
    b = train_resnet_lstm(*split, FEATURES, "toy-v1", cfg)
    c = train_resnet_lstm(*split, FEATURES, "toy-v1", TrainingConfig(max_epochs=2, seed=7, **FAST))
    assert a.history == b.history
    np.testing.assert_array_equal(a.predict(split[2]), b.predict(split[2]))
    assert a.history != c.history


def test_scheduler_and_early_stopping_on_a_plateau(split, monkeypatch):
    # A scripted validation loss makes the schedule exact: one new best at epoch 2, then a plateau.
    scripted = iter([5.0, 4.0] + [4.0] * 50)
    snapshots = []

    def fake_validation(model, X, y, target_std):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(training, "_validation_mae_ppm", fake_validation)
    cfg = TrainingConfig(max_epochs=50, lr_patience=1, lr_factor=0.5, early_stopping_patience=3,
                         **FAST)
    model = train_resnet_lstm(*split, FEATURES, "toy-v1", cfg)

    # Epochs 3, 4, 5 bring no improvement: stop after 5. The LR halves once the plateau outlasts
    # lr_patience=1 (after epoch 4), so epoch 5 runs at 5e-4.
    assert [h["epoch"] for h in model.history] == [1, 2, 3, 4, 5]
    assert [h["lr"] for h in model.history] == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4]
    assert model.best_epoch == 2 and model.stopped_early
    final = model.model.state_dict()
    for key, value in snapshots[1].items():
        torch.testing.assert_close(final[key], value, msg=f"{key} not restored to epoch 2")
    assert any(not torch.equal(final[k], v) for k, v in snapshots[-1].items())


def test_early_stopping_counts_epochs_without_a_new_best():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(1, 3.0) and not stopper.should_stop
    assert not stopper.update(2, 3.0)  # equal is not better
    assert stopper.update(3, 2.5)
    assert not stopper.update(4, 2.6) and not stopper.should_stop
    assert not stopper.update(5, 2.7) and stopper.should_stop
    assert (stopper.best_epoch, stopper.best_loss) == (3, 2.5)


def test_training_rejects_bad_inputs(split):
    X_train, y_train, X_val, y_val = split
    X_bad = X_train.copy()
    X_bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="cov_04"):
        train_resnet_lstm(X_bad, y_train, X_val, y_val, FEATURES, "v", TrainingConfig(max_epochs=1))
    with pytest.raises(ValueError, match="one column per feature"):
        train_resnet_lstm(X_train, y_train, X_val, y_val, FEATURES[:-1], "v")
    with pytest.raises(ValueError, match="lr_factor"):
        TrainingConfig(lr_factor=1.5)
    if torch.cuda.is_available():
        assert training.resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA|cuda"):
            training.resolve_device("cuda")


def test_training_config_defaults_are_table5():
    cfg = TrainingConfig()
    assert (cfg.max_epochs, cfg.batch_size, cfg.learning_rate, cfg.weight_decay) == (
        200, 1024, 1e-3, 1e-4)
    assert (cfg.lr_patience, cfg.lr_factor, cfg.early_stopping_patience) == (5, 0.5, 10)
    assert training.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_scalers_guard_zero_std_and_round_trip():
    X, y = toy_xco2(50)
    scalers = Scalers.fit(X, y)
    assert scalers.feature_std[5] == 1.0  # the constant covariate
    standardised = scalers.transform_features(X)
    assert standardised.dtype == np.float32 and np.all(standardised[:, 5] == 0)
    assert np.isfinite(standardised).all()
    assert Scalers.from_dict(scalers.to_dict()) == scalers
    np.testing.assert_allclose(scalers.transform_target(y) * scalers.target_std + scalers.target_mean, y, atol=1e-3)


# --- evaluation ------------------------------------------------------------------------------

def test_regression_metrics_hand_computed():
    m = regression_metrics([1, 2, 3, 4], [2, 2, 4, 4])
    # errors 1,0,1,0; SS_tot 5; cov(obs,pred) 4 / var 5 -> slope 0.8, intercept 3 - 0.8*2.5.
    assert m["rmse"] == pytest.approx(np.sqrt(0.5))
    assert m["mae"] == pytest.approx(0.5)
    assert m["bias"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(0.6)
    assert m["slope"] == pytest.approx(0.8)
    assert m["intercept"] == pytest.approx(1.0)
    assert m["n"] == 4
    perfect = regression_metrics([400.0, 410.0, 420.0], [400.0, 410.0, 420.0])
    assert (perfect["rmse"], perfect["r2"], perfect["slope"], perfect["intercept"]) == (
        0.0, 1.0, 1.0, 0.0)
    assert np.isnan(regression_metrics([410.0, 410.0], [409.0, 411.0])["slope"])
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics([1, 2], [1, np.nan])


def test_random_split_is_a_reproducible_partition():
    train_idx, val_idx = random_split(101, 0.2, seed=3)
    assert len(val_idx) == 20 and len(train_idx) == 81
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(101))
    again = random_split(101, 0.2, seed=3)
    assert np.array_equal(again[1], val_idx)
    assert not np.array_equal(random_split(101, 0.2, seed=4)[1], val_idx)
    assert len(random_split(3, 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError):
        random_split(10, 1.0, seed=0)


def test_figures_are_written_as_png(trained, split, tmp_path):
    loss_png = plot_loss_curves(trained.history, tmp_path / "fig" / "loss.png")
    scatter_png = plot_scatter(split[3], trained.predict(split[2]), tmp_path / "scatter.png")
    for path in (loss_png, scatter_png):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert not list(tmp_path.rglob("*.tmp"))


# --- ONNX ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    return export_onnx(trained, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_parity_at_two_batch_sizes(trained, exported):
    X, _ = toy_xco2(1003, seed=5)  # 1003: both batch sizes end on a ragged batch
    worst = check_onnx_parity(trained, exported, X, batch_sizes=(7, 1000), tolerance_ppm=1e-3)
    assert worst <= 1e-3


def test_onnx_graph_takes_raw_features_with_a_dynamic_batch(trained, exported):
    session, provider = open_session(exported, prefer_cuda=False)
    assert provider == "CPUExecutionProvider"
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("features", "xco2")
    assert isinstance(inp.shape[0], str) and inp.shape[1] == N_FEATURES  # only batch is dynamic
    assert inp.type == "tensor(float)"
    X, _ = toy_xco2(5, seed=6)
    for n in (1, 5):
        got = session.run(None, {"features": X[:n].astype(np.float32)})[0]
        assert got.shape == (n,)
        np.testing.assert_allclose(got, trained.predict(X[:n]), atol=1e-3)
    with pytest.raises(ValueError, match=r"\[n, 20\]"):
        predict_batched(session, X[:, :5], batch_size=4)


def test_onnx_metadata_round_trip(trained, exported):
    meta = read_metadata(exported)
    assert meta["feature_names"] == FEATURES
    assert meta["feature_set_version"] == "toy-v1"
    assert meta["n_features"] == N_FEATURES and meta["output_units"] == "ppm"
    assert Scalers.from_dict(meta["scalers"]) == trained.scalers


def test_parity_check_fails_loudly_for_a_mismatched_export(trained, exported):
    s = trained.scalers
    shifted = Scalers(s.feature_mean, s.feature_std, s.target_mean + 0.5, s.target_std)
    other = TrainedModel(trained.model, shifted, trained.feature_names, "toy-v1",
                         trained.history, trained.best_epoch)
    with pytest.raises(OnnxParityError, match="do not deploy"):
        check_onnx_parity(other, exported, toy_xco2(20)[0])


def test_export_writes_atomically(trained, tmp_path):
    path = export_onnx(trained, tmp_path / "nested" / "m.onnx")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["m.onnx"]


def test_predict_batched_matches_one_shot(exported):
    session, _ = open_session(exported, prefer_cuda=False)
    X, _ = toy_xco2(257, seed=8)
    whole = predict_batched(session, X, batch_size=1024)
    assert whole.dtype == np.float32 and whole.shape == (257,)
    np.testing.assert_allclose(predict_batched(session, X, batch_size=10), whole, atol=1e-4)
    assert predict_batched(session, X[:0], batch_size=10).shape == (0,)


def test_no_cuda_requested_without_a_gpu(exported, monkeypatch, caplog):
    import models.onnx_session as onnx_session

    monkeypatch.setattr(onnx_session.os.path, "exists", lambda _p: False)
    monkeypatch.setattr(onnx_session.shutil, "which", lambda _p: None)
    assert not gpu_plausibly_present()
    requested = []
    real_session = onnx_session.ort.InferenceSession
    monkeypatch.setattr(onnx_session.ort, "InferenceSession",
                        lambda path, sess_options, providers: requested.append(providers)
                        or real_session(path, sess_options=sess_options, providers=providers))
    with caplog.at_level(logging.INFO, logger="models.onnx_session"):
        _, provider = open_session(exported, prefer_cuda=True)
    assert requested == [["CPUExecutionProvider"]] and provider == "CPUExecutionProvider"
    assert "runs on CPUExecutionProvider" in caplog.text
