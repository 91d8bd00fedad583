"""Running an exported XCO2 model with ONNX Runtime: session, batched prediction, metadata.

No torch here: map-making workers only need onnxruntime and numpy.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from models.onnx_contract import INPUT_NAME, OUTPUT_NAME, decode_metadata

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def gpu_plausibly_present() -> bool:
    """onnxruntime-gpu lists CUDA even on machines without a GPU, and asking for it there
    prints a loud library-load error; so also require a device node or the NVIDIA driver tool."""
    if CUDA not in ort.get_available_providers():
        return False
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def open_session(
    onnx_path: str | Path, prefer_cuda: bool = True
) -> tuple[ort.InferenceSession, str]:
    """An inference session and the provider that actually runs it ('CUDAExecutionProvider' or
    'CPUExecutionProvider'); a requested GPU that fails to load is logged, not hidden."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    want_cuda = prefer_cuda and gpu_plausibly_present()
    providers = [CUDA, CPU] if want_cuda else [CPU]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    running = session.get_providers()[0]
    if want_cuda and running != CUDA:
        log.warning(
            "ONNX Runtime could not start CUDA for %s (CUDA/cuDNN libraries missing?); "
            "running on %s", onnx_path.name, running,
        )
    log.info("ONNX Runtime session for %s runs on %s", onnx_path.name, running)
    return session, running


def predict_batched(
    session: ort.InferenceSession, X: np.ndarray, batch_size: int = 65536
) -> np.ndarray:
    """Raw covariates [n, n_features] -> XCO2 ppm [n] float32, one batch in memory at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    expected = session.get_inputs()[0].shape[1]
    if getattr(X, "ndim", None) != 2 or (isinstance(expected, int) and X.shape[1] != expected):
        raise ValueError(
            f"expected features of shape [n, {expected}], got {tuple(np.shape(X))}"
        )
    out = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], batch_size):
        # Only the current slice is converted: X may be a float64 or memory-mapped array.
        chunk = np.ascontiguousarray(X[start : start + batch_size], dtype=np.float32)
        out[start : start + len(chunk)] = session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0]
    return out


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """{feature_names, feature_set_version, scalers, output_units, n_features} of an export."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return decode_metadata(props, source=str(onnx_path))
