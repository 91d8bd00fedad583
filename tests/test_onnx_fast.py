"""The fast ONNX export (models/fast_network.py, export_onnx form "fast"): same numbers as the torch
model within 0.001 ppm on both outputs, checked at export; BatchNorm folded, the LSTM unrolled, the
convolutions over the batch as one image (2-D kernels (k, 1)); CPU session
settings. Random-weight networks (BatchNorm statistics randomised so the folding is exercised)
and a network trained for one epoch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import models.onnx_export as onnx_export
from models.fast_network import fast_form
from models.onnx_export import OnnxParityError, check_onnx_parity, export_onnx
from models.onnx_session import open_session, session_options
from models.resnet_lstm import ResNetLSTM
from models.scaling import Scalers
from models.training import TrainedModel, TrainingConfig, train_resnet_lstm
from models.uncertainty import SpreadNetwork, SpreadModel


def random_network(n_features: int, seed: int, **shape) -> ResNetLSTM:
    torch.manual_seed(seed)
    network = ResNetLSTM(n_features, **shape)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.3, 3)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return network.eval()


def random_trained(n_features: int, seed: int, with_spread: bool) -> TrainedModel:
    rng = np.random.default_rng(seed)
    scalers = Scalers(tuple(rng.normal(0, 50, n_features)), tuple(rng.uniform(0.1, 20, n_features)), 410.0, 3.0)
    spread = None
    if with_spread:
        torch.manual_seed(seed + 1)
        spread = SpreadModel(SpreadNetwork(n_features, 0.8).eval(), scale=1.3)
    return TrainedModel(random_network(n_features, seed), scalers, tuple(f"f{i}" for i in range(n_features)),
                        "test-v1", [{"val_loss": 1.0}], 1, spread=spread)


def raw_rows(trained: TrainedModel, n: int, seed: int) -> np.ndarray:
    mean, std = trained.scalers.feature_arrays()
    return (mean + std * np.random.default_rng(seed).normal(0, 1.5, (n, trained.n_features))).astype(np.float32)


@pytest.mark.parametrize("n_features, shape", [
    (46, {}),  # Table 4 at the production feature count
    (13, {"stem_channels": 8, "block_channels": (16, 24, 32), "lstm_hidden": 16, "lstm_layers": 3}),  # odd lengths
    (6, {"stem_channels": 4, "block_channels": (8,), "lstm_hidden": 8, "lstm_layers": 1}),
])
def test_fast_form_computes_the_same_function(n_features, shape):
    network = random_network(n_features, seed=n_features, **shape)
    fast = fast_form(network)
    x = torch.randn(300, n_features) * 2
    with torch.no_grad():
        expected, got = network(x), fast(x)
    assert got.shape == expected.shape == (300,)
    assert float((got - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))
    assert not any(isinstance(m, (torch.nn.Conv1d, torch.nn.LSTM, torch.nn.BatchNorm1d)) for m in fast.modules())


def test_fast_form_refuses_what_it_cannot_fold():
    with pytest.raises(TypeError, match="ResNetLSTM"):
        fast_form(torch.nn.Linear(3, 1))
    with pytest.raises(ValueError, match="eval mode"):
        fast_form(ResNetLSTM(8).train())
    # A skip projection that no longer strides like the convolutions: the residual add cannot line up.
    network = ResNetLSTM(8, stem_channels=4, block_channels=(8,), lstm_hidden=4, lstm_layers=1).eval()
    network.blocks[0].skip[0].stride = (1,)
    with pytest.raises(ValueError, match="the convolutions give 4 positions, the skip projection 8"):
        fast_form(network)
    network.blocks[0].skip[0].stride = (2,)
    network.blocks[0].conv2.dilation = (2,)
    with pytest.raises(ValueError, match="dilation=1"):
        fast_form(network)


def _op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _conv_kernels(path) -> list[list[int]]:
    return [list(attr.ints) for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"
            for attr in node.attribute if attr.name == "kernel_shape"]


def test_fast_export_matches_torch_on_both_outputs_and_has_no_lstm_or_batchnorm(tmp_path):
    trained = random_trained(46, seed=3, with_spread=True)
    path = export_onnx(trained, tmp_path / "fast.onnx")
    assert not _op_types(path) & {"LSTM", "BatchNormalization"}
    # Stem + 3 per residual block, each sliding along the positions only (the cells are the width).
    kernels = _conv_kernels(path)
    assert len(kernels) == 1 + 3 * 4 and all(k in ([3, 1], [1, 1]) for k in kernels)
    X = raw_rows(trained, 600, seed=4)
    assert check_onnx_parity(trained, path, X, batch_sizes=(7, 600)) <= 1e-3
    session, _ = open_session(path, prefer_cuda=False)
    xco2, sigma = session.run(["xco2", "xco2_uncertainty"], {"features": X})
    assert np.abs(xco2 - trained.predict(X)).max() <= 1e-3
    assert np.abs(sigma - trained.predict_uncertainty(X)).max() <= 1e-3
    # The trained model is untouched: the swap happened on a copy.
    assert isinstance(trained.model, ResNetLSTM) and isinstance(trained.deployable().network, ResNetLSTM)


def test_reference_form_is_the_old_graph_and_gives_the_same_numbers(tmp_path):
    trained = random_trained(46, seed=5, with_spread=False)
    reference = export_onnx(trained, tmp_path / "reference.onnx", form="reference")
    fast = export_onnx(trained, tmp_path / "fast.onnx")
    assert {"Conv", "LSTM"} <= _op_types(reference)
    X = raw_rows(trained, 200, seed=6)
    a = open_session(reference, prefer_cuda=False)[0].run(["xco2"], {"features": X})[0]
    b = open_session(fast, prefer_cuda=False)[0].run(["xco2"], {"features": X})[0]
    assert np.abs(a - b).max() <= 1e-3
    with pytest.raises(ValueError, match="unknown ONNX export form 'bf16'"):
        export_onnx(trained, tmp_path / "x.onnx", form="bf16")


def test_export_refuses_a_graph_that_differs_and_publishes_nothing(tmp_path, monkeypatch):
    trained = random_trained(13, seed=7, with_spread=False)

    class Shifted(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 0.01  # 0.01 standardised = 0.03 ppm at target_std 3

    real = onnx_export.fast_form
    monkeypatch.setattr(onnx_export, "fast_form", lambda network: Shifted(real(network)))
    with pytest.raises(OnnxParityError, match=r"'xco2' differs from the torch model by 0\.03 ppm"):
        export_onnx(trained, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def trained_tiny():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(320, 46)).astype(np.float32) * 5 + 100
    y = 410 + (X[:, 0] - 100) / 5 + rng.normal(0, 0.3, 320)
    return train_resnet_lstm(X[:256], y[:256], X[256:], y[256:], [f"f{i}" for i in range(46)], "test-v1",
                             TrainingConfig(max_epochs=1, batch_size=128))


def test_fast_export_of_a_trained_network_matches_torch(trained_tiny, tmp_path):
    # Training moves BatchNorm's running statistics away from (0, 1): the folding must follow them.
    bn = trained_tiny.model.stem[1]
    assert float(bn.running_mean.abs().max()) > 0
    path = export_onnx(trained_tiny, tmp_path / "trained.onnx")
    X = raw_rows(trained_tiny, 500, seed=8)
    assert check_onnx_parity(trained_tiny, path, X, batch_sizes=(7, 500)) <= 1e-3


def test_session_options_use_the_cores_without_spinning():
    options = session_options(1)
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().intra_op_num_threads >= 1
    with pytest.raises(ValueError, match="intra_op_threads"):
        session_options(0)


def test_gpu_check_counts_the_flops_of_table_4_like_the_model():
    """tests/gpu/gpu_check.py runs without torch, so it counts Table 4's FLOPs itself: the same
    figure as models.fast_network.flops_per_cell, and its province-day floor uses it."""
    import importlib.util
    from pathlib import Path

    from models.fast_network import flops_per_cell
    from models.resnet_lstm import ResNetLSTM

    path = Path(__file__).parent / "gpu" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.table4_flops_per_cell(46) == flops_per_cell(ResNetLSTM(46))
    assert gpu_check.table4_flops_per_cell(13) == flops_per_cell(ResNetLSTM(13))
    line = gpu_check.expected_day_seconds("NVIDIA H200", 454_727, flops_per_cell(ResNetLSTM(46)))
    assert "7.94 TFLOP" in line and "0.119 s" in line
