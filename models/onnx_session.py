"""The exported model's session contract: how any holder of an XCO2 ONNX file opens and runs it.

No torch here. The export's parity probe (models/onnx_export.py) and the registry (promotion,
champion, tracking) use these; the nightly mapping runs its own predictor on top of them
(tasks/mapping/onnx_runtime.py: every output, CUDA with IO binding, the network-free cut, the
precision choice).

- `session_options` / `open_session`: ONNX Runtime's settings for mapping and a plain session on
  CUDA or the CPU, the provider that runs it logged;
- `predict_batched`: the first output ('xco2') in batches;
- `read_metadata`: the feature names, scalers and mapping an export carries.
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
# Cells per ONNX Runtime call on CPU. The fast export's convolutions are already wide at a few
# thousand cells (the cells are the image's width): 2048, 4096 and 8192 measured the same within
# noise on the 2-core machine, 16384 no faster, while the session's planned buffers grow with the
# batch (peak memory about 190, 280 and 460 MB), so 4096 (docs/inference-speed.md).
CPU_CELLS_PER_BATCH = 4096


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime settings for mapping, measured (docs/inference-speed.md):

    - every graph optimisation (it fuses the fast export's MatMul + Add + Relu into one Gemm);
    - intra-op threads: `intra_op_threads`, else every core this process may use; one worker
      process per core passes 1;
    - no spin-waiting between operators: spinning keeps idle threads busy on a core that another
      worker, the reader or the writer could use, and was no faster here;
    - the CPU memory arena and memory pattern on (the defaults): batches repeat the same shapes,
      so buffers are planned once and reused."""
    threads = available_cores() if intra_op_threads is None else int(intra_op_threads)
    if threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def gpu_plausibly_present() -> bool:
    """onnxruntime-gpu lists CUDA even on machines without a GPU, and asking for it there
    prints a loud library-load error; so also require a device node or the NVIDIA driver tool."""
    if CUDA not in ort.get_available_providers():
        return False
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None


def open_session(
    onnx_path: str | Path, prefer_cuda: bool = True, intra_op_threads: int | None = None
) -> tuple[ort.InferenceSession, str]:
    """An inference session and the provider that actually runs it ('CUDAExecutionProvider' or
    'CPUExecutionProvider'); a requested GPU that fails to load is logged, not hidden.
    `intra_op_threads`: see session_options."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    want_cuda = prefer_cuda and gpu_plausibly_present()
    providers = [CUDA, CPU] if want_cuda else [CPU]
    options = session_options(intra_op_threads)
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
    session: ort.InferenceSession, X: np.ndarray, batch_size: int = CPU_CELLS_PER_BATCH
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
