"""tasks.mapping.onnx_runtime.OnnxPredictor on tiny hand-built ONNX graphs (no torch, CPU).

The graphs follow the export contract (input 'features' [batch, k]; output 'xco2' [batch], and
'xco2_uncertainty' [batch] in the two-output form), so one- and two-output models are both covered.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tasks.mapping.onnx_runtime as onnx_runtime
from models.onnx_session import CPU, open_session, predict_batched
from tasks.mapping.onnx_runtime import (
    OnnxPredictor,
    cells_for_memory,
    estimate_bytes_per_cell,
    gpu_free_bytes,
    predictor_for_thread,
)

K = 3
W_MU = np.array([[0.5], [-1.0], [0.25]], np.float32)
W_SIGMA = np.array([[0.1], [0.2], [0.3]], np.float32)


def expected(X: np.ndarray) -> dict[str, np.ndarray]:
    X = X.astype(np.float32)
    return {"xco2": (X @ W_MU)[:, 0] + np.float32(410.0),
            "xco2_uncertainty": (np.abs(X) @ W_SIGMA)[:, 0] + np.float32(0.5)}


def build(path: Path, outputs: tuple[str, ...] = ("xco2", "xco2_uncertainty"),
          aux: bool = False) -> Path:
    """MatMul + Add heads squeezed to [batch]; `aux` adds an output 'aux' [batch, n] whose
    second axis is symbolic (so it cannot be pre-allocated)."""
    inits = [numpy_helper.from_array(W_MU, "w_mu"), numpy_helper.from_array(W_SIGMA, "w_sigma"),
             numpy_helper.from_array(np.array(410.0, np.float32), "b_mu"),
             numpy_helper.from_array(np.array(0.5, np.float32), "b_sigma"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("MatMul", ["features", "w_mu"], ["mu_col"]),
             helper.make_node("Squeeze", ["mu_col", "axis1"], ["mu"]),
             helper.make_node("Add", ["mu", "b_mu"], ["xco2"])]
    graph_outputs = [helper.make_tensor_value_info("xco2", TensorProto.FLOAT, ["batch"])]
    if "xco2_uncertainty" in outputs:
        nodes += [helper.make_node("Abs", ["features"], ["abs"]),
                  helper.make_node("MatMul", ["abs", "w_sigma"], ["sigma_col"]),
                  helper.make_node("Squeeze", ["sigma_col", "axis1"], ["sigma"]),
                  helper.make_node("Add", ["sigma", "b_sigma"], ["xco2_uncertainty"])]
        graph_outputs.append(helper.make_tensor_value_info("xco2_uncertainty", TensorProto.FLOAT,
                                                           ["batch"]))
    if aux:
        nodes.append(helper.make_node("Neg", ["features"], ["aux"]))
        graph_outputs.append(helper.make_tensor_value_info("aux", TensorProto.FLOAT,
                                                           ["batch", "n"]))
    graph = helper.make_graph(
        nodes, "tiny_xco2",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", K])],
        graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("onnx") / "two.onnx")


@pytest.fixture(scope="module")
def one_output(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("onnx") / "one.onnx", outputs=("xco2",))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(onnx_runtime, "gpu_plausibly_present", lambda: False)


def features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 50, (n, K))  # float64, as callers may pass


# --- provider and logging --------------------------------------------------------------------

def test_without_a_gpu_it_runs_on_cpu_and_says_so(two_outputs, no_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="tasks.mapping.onnx_runtime"):
        predictor = OnnxPredictor(two_outputs)  # auto: CPU is not a fallback without a GPU
    assert predictor.provider == CPU == "CPUExecutionProvider"
    assert not predictor.use_io_binding
    assert "runs two.onnx on CPUExecutionProvider" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_wanting_cuda_without_a_gpu_warns_of_the_cpu_fallback(two_outputs, no_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="tasks.mapping.onnx_runtime"):
        predictor = OnnxPredictor(two_outputs, prefer_cuda=True)
    assert predictor.provider == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CPU fallback" in warnings[0].getMessage()
    assert "CUDA was wanted" in warnings[0].getMessage()


def test_a_cuda_session_that_fails_falls_back_to_cpu(two_outputs, monkeypatch, caplog):
    monkeypatch.setattr(onnx_runtime, "gpu_plausibly_present", lambda: True)
    real = onnx_runtime.ort.InferenceSession
    tried = []

    def session(path, sess_options=None, providers=None):
        tried.append(providers)
        if any(isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" for p in providers):
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", session)
    with caplog.at_level(logging.INFO, logger="tasks.mapping.onnx_runtime"):
        predictor = OnnxPredictor(two_outputs)  # auto, and a GPU is "there"
    assert predictor.provider == CPU
    # Our CUDA options, then CUDA with its defaults, then CPU.
    assert [p[0][1] for p in tried[:2]] == [
        {"device_id": "0", **onnx_runtime.DEFAULT_CUDA_OPTIONS}, {"device_id": "0"}]
    assert tried[2] == [CPU]
    assert "CPU fallback" in caplog.text and "libcudnn" in caplog.text


def test_cpu_when_asked(two_outputs):
    assert OnnxPredictor(two_outputs, prefer_cuda=False).provider == CPU


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxPredictor(tmp_path / "nope.onnx")


# --- running ---------------------------------------------------------------------------------

def test_run_returns_every_output(two_outputs, no_gpu):
    predictor = OnnxPredictor(two_outputs)
    assert predictor.output_names == ["xco2", "xco2_uncertainty"]
    X = features(50)
    got = predictor.run(X)
    assert list(got) == ["xco2", "xco2_uncertainty"]
    for name, want in expected(X).items():
        assert got[name].dtype == np.float32 and got[name].shape == (50,)
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-4)
    in_batches = predictor.run(X, batch_size=7)  # ragged last batch
    for name in got:
        np.testing.assert_array_equal(in_batches[name], got[name])
    empty = predictor.run(X[:0])
    assert {k: v.shape for k, v in empty.items()} == {"xco2": (0,), "xco2_uncertainty": (0,)}


def test_one_output_models_still_work(one_output, two_outputs, no_gpu):
    predictor = OnnxPredictor(one_output)
    X = features(20, seed=1)
    got = predictor.run(X)
    assert predictor.output_names == ["xco2"] and list(got) == ["xco2"]
    np.testing.assert_allclose(got["xco2"], expected(X)["xco2"], atol=1e-4)
    # predict_batched keeps returning the first output, 'xco2', for either model.
    for path in (one_output, two_outputs):
        session, _ = open_session(path, prefer_cuda=False)
        np.testing.assert_allclose(predict_batched(session, X, batch_size=6), got["xco2"],
                                   atol=1e-5)


def test_wrong_feature_count_is_refused(two_outputs, no_gpu):
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        OnnxPredictor(two_outputs).run(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        OnnxPredictor(two_outputs).run(np.zeros(3, np.float32))


@pytest.mark.parametrize("batch_size", [None, 1, 8, 33])
def test_io_binding_gives_the_same_results_as_plain_run(two_outputs, no_gpu, batch_size):
    X = features(101, seed=2)
    plain = OnnxPredictor(two_outputs, use_io_binding=False)
    bound = OnnxPredictor(two_outputs, use_io_binding=True)
    assert (plain.provider, bound.provider) == (CPU, CPU) and bound.use_io_binding
    want, got = plain.run(X, batch_size), bound.run(X, batch_size)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want[name])


def test_io_binding_with_an_output_of_unknown_shape(tmp_path, no_gpu):
    path = build(tmp_path / "aux.onnx", aux=True)
    X = features(30, seed=3)
    plain = OnnxPredictor(path, use_io_binding=False).run(X, batch_size=8)
    bound = OnnxPredictor(path, use_io_binding=True).run(X, batch_size=8)
    assert list(bound) == ["xco2", "xco2_uncertainty", "aux"]
    assert bound["aux"].shape == (30, K)
    for name in plain:
        np.testing.assert_array_equal(bound[name], plain[name])
    np.testing.assert_allclose(bound["aux"], -X.astype(np.float32))


def test_io_binding_reuses_device_buffers_per_batch_length(two_outputs, no_gpu):
    # The device path (CUDA) keeps at most two buffer sets: the full and the ragged batch.
    predictor = OnnxPredictor(two_outputs, use_io_binding=True)
    for rows in (8, 3, 8, 5):
        predictor._device_buffers(rows)
    assert list(predictor._buffers) == [8, 5]


# --- batch size ------------------------------------------------------------------------------

def test_cells_per_batch_on_cpu_is_the_request(two_outputs, no_gpu):
    predictor = OnnxPredictor(two_outputs)
    assert predictor.cells_per_batch(8192) == 8192
    assert predictor.cells_per_batch(1) == 1
    with pytest.raises(ValueError):
        predictor.cells_per_batch(0)


def test_cells_per_batch_on_cuda_comes_from_free_memory(two_outputs, no_gpu, monkeypatch):
    predictor = OnnxPredictor(two_outputs)
    predictor.device = "cuda"  # as if CUDA ran: only the arithmetic is tested here
    calls = []
    monkeypatch.setattr(onnx_runtime, "gpu_free_bytes",
                        lambda device_id: calls.append(device_id) or 64 * 2**30)
    cells = predictor.cells_per_batch(8192)
    assert cells == cells_for_memory(64 * 2**30, predictor.bytes_per_cell)
    assert cells == onnx_runtime.MAX_CELLS_PER_BATCH  # a tiny model: the cap
    assert predictor.cells_per_batch(8192) == cells and calls == [0]  # measured once

    other = OnnxPredictor(two_outputs)
    other.device = "cuda"
    monkeypatch.setattr(onnx_runtime, "gpu_free_bytes", lambda device_id: None)
    assert other.cells_per_batch(4096) == 4096  # memory unknown: the configured batch


def test_cells_for_memory_bounds():
    assert cells_for_memory(140 * 2**30, 190_000) == int(140 * 2**30 * 0.25) // 190_000
    assert cells_for_memory(10**15, 4) == onnx_runtime.MAX_CELLS_PER_BATCH
    assert cells_for_memory(10, 190_000) == onnx_runtime.MIN_CELLS_PER_BATCH
    assert cells_for_memory(10**9, 1000, fraction=0.5, cap=10**9, floor=1) == 500_000
    with pytest.raises(ValueError):
        cells_for_memory(10**9, 0)


def test_bytes_per_cell_counts_every_tensor_of_a_row(two_outputs, tmp_path):
    # features 3; mu_col 1, mu 1, xco2 1; abs 3, sigma_col 1, sigma 1, xco2_uncertainty 1
    assert estimate_bytes_per_cell(two_outputs) == 4 * (3 + 3 + 3 + 3)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert estimate_bytes_per_cell(broken) == onnx_runtime.FALLBACK_BYTES_PER_CELL


def _fake_nvidia_smi(directory: Path, answer: str) -> Path:
    script = directory / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > "{directory}/args"\necho "{answer}"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory / "args"


def test_free_gpu_memory_from_nvidia_smi(tmp_path, monkeypatch):
    args = _fake_nvidia_smi(tmp_path, "40960")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_free_bytes(1) == 40960 * 2**20
    assert args.read_text().split() == [
        "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    gpu_free_bytes(0)
    assert args.read_text().split()[-2:] == ["-i", "0"]


def test_unreadable_free_memory_is_none(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "[N/A]")  # e.g. a MIG instance
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(onnx_runtime, "_free_bytes_cudart", lambda device_id: None)
    assert gpu_free_bytes(0) is None


# --- on a GPU (pytest -m gpu) ----------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_matches_cpu(two_outputs):
    gpu = OnnxPredictor(two_outputs, prefer_cuda=True)
    # Selected with -m gpu on a GPU machine: CUDA not starting there is a failure, not a skip.
    assert gpu.provider == "CUDAExecutionProvider", f"CUDA did not run ({gpu.provider})"
    assert gpu.use_io_binding and gpu.cells_per_batch(8192) >= onnx_runtime.MIN_CELLS_PER_BATCH
    X = features(10_000, seed=4)
    want = OnnxPredictor(two_outputs, prefer_cuda=False).run(X)
    got = gpu.run(X, batch_size=4096)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-3)


def test_a_thread_keeps_its_predictor_while_the_file_is_unchanged(tmp_path, no_gpu):
    # The thread and Dask runners map each day as its own task: the graph is opened (and cut, and
    # its precision chosen) once per worker thread, not once per day.
    path = build(tmp_path / "champion.onnx")
    first = predictor_for_thread(path)
    assert predictor_for_thread(path) is first
    other: list[OnnxPredictor] = []
    worker = threading.Thread(target=lambda: other.append(predictor_for_thread(path)))
    worker.start()
    worker.join()
    assert other and other[0] is not first  # not thread-safe: each thread its own
    X = features(64)
    np.testing.assert_array_equal(first.run(X)["xco2"], other[0].run(X)["xco2"])


def test_a_replaced_champion_file_is_opened_again(tmp_path, no_gpu):
    path = build(tmp_path / "champion.onnx")
    first = predictor_for_thread(path)
    replacement = build(tmp_path / "next.onnx", outputs=("xco2",))
    os.replace(replacement, path)
    again = predictor_for_thread(path)
    assert again is not first
    assert again.output_names == ["xco2"]


def test_a_missing_champion_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.onnx"):
        predictor_for_thread(tmp_path / "gone.onnx")
