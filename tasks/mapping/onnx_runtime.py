"""The nightly runtime: an exported XCO2 model mapping cells with ONNX Runtime.

No torch here: map-making workers only need onnxruntime and numpy. The plain session, its settings
and the export's metadata are models/onnx_session.py (the contract the export and the registry use).

- `OnnxPredictor`: every output of the model ('xco2', and 'xco2_uncertainty' where the export has
  it), on CUDA with IO binding when a GPU is there, else on CPU (logged, with a WARNING when CUDA
  was wanted), and a batch size derived from free GPU memory (`cells_per_batch`);
- the network-free cut (`network_free_graph`, `check_network_free`, `columns_used`): the background
  alone where the champion's network share is 0;
- the precision choice (`choose_precision`): int8 where the processor has the instructions for it
  and the parity gate passes, else fp32.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from models.onnx_contract import INPUT_NAME, OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME, decode_metadata
from models.onnx_session import (CPU, CPU_CELLS_PER_BATCH, CUDA, gpu_plausibly_present, read_metadata,
                                 session_options)

log = logging.getLogger(__name__)

# CUDA execution provider options of OnnxPredictor (strings, as ONNX Runtime stores them):
# - use_tf32 0: full float32 matmuls/convolutions, so GPU maps match the CPU ones to well under
#   0.01 ppm (TF32 would round inputs to 10 mantissa bits);
# - cudnn_conv_algo_search HEURISTIC: no per-shape benchmarking (a ragged last batch is a new
#   shape) and no exhaustive-search workspace spikes;
# - arena_extend_strategy kSameAsRequested: the arena grows by what a batch needs, not to the next
#   power of two, so the memory budget of cells_per_batch holds.
DEFAULT_CUDA_OPTIONS: dict[str, str] = {
    "use_tf32": "0",
    "cudnn_conv_algo_search": "HEURISTIC",
    "arena_extend_strategy": "kSameAsRequested",
}
# cells_per_batch on CUDA: this share of the free GPU memory, at most this many cells.
GPU_MEMORY_FRACTION = 0.25
MAX_CELLS_PER_BATCH = 1_048_576
MIN_CELLS_PER_BATCH = 1024
# Bytes per cell when the graph's tensor shapes cannot be inferred (generous for Table 4, whose
# estimate with 46 features is ~190 KiB for the reference graph, ~277 KiB for the fast export).
FALLBACK_BYTES_PER_CELL = 320 * 1024
# --- GPU memory and the batch size -----------------------------------------------------------

def _visible_device(device_id: int) -> str:
    """The nvidia-smi id (index or UUID) of CUDA device `device_id` of this process:
    CUDA_VISIBLE_DEVICES renumbers devices for CUDA, but nvidia-smi ignores it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if device_id < len(entries):
            return entries[device_id]
    return str(device_id)


def _free_bytes_nvidia_smi(device_id: int) -> int | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits",
             "-i", _visible_device(device_id)],
            capture_output=True, text=True, timeout=15, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        log.debug("nvidia-smi exit %s: %s", done.returncode, done.stderr.strip()[:200])
        return None
    try:
        return int(float(lines[0].strip())) * 1024 * 1024  # MiB
    except ValueError:  # "[N/A]" (e.g. MIG instances): ask the CUDA runtime instead
        return None


def _free_bytes_cudart(device_id: int) -> int | None:
    """cudaMemGetInfo through the CUDA runtime library (respects CUDA_VISIBLE_DEVICES)."""
    for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            cudart = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaSetDevice(ctypes.c_int(device_id)) != 0:
            return None
        if cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
            return None
        return int(free.value)
    return None


def gpu_free_bytes(device_id: int = 0) -> int | None:
    """Free memory (bytes) of CUDA device `device_id`, from nvidia-smi or else the CUDA runtime;
    None when neither answers."""
    free = _free_bytes_nvidia_smi(device_id)
    return free if free is not None else _free_bytes_cudart(device_id)


def estimate_bytes_per_cell(onnx_path: str | Path) -> int:
    """Device memory one cell (one row of the batch) needs, estimated from the graph:

        bytes_per_cell = sum over the input, the outputs and every intermediate tensor of
                         (elements per row) x (bytes per element)

    with the shapes inferred by ONNX shape inference at batch 1. That is every activation alive at
    once, an upper bound on ONNX Runtime's peak (it frees and reuses buffers), which leaves room
    for cuDNN workspaces; weights are not per cell and are left out. For the Table 4 network with
    46 features: ~48 000 floats, ~190 KiB per cell for the reference graph, ~70 700 floats, ~277 KiB
    for the fast export (its convolution, Add and ReLU outputs are separate tensors until ORT fuses
    them). FALLBACK_BYTES_PER_CELL when shapes cannot be inferred."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
        for value in list(model.graph.input) + list(model.graph.output):
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):  # the symbolic batch axis
                    dim.Clear()
                    dim.dim_value = 1
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "no estimate", not a crash
        log.warning("cannot infer tensor shapes of %s (%s); assuming %d KiB per cell",
                    Path(onnx_path).name, exc, FALLBACK_BYTES_PER_CELL // 1024)
        return FALLBACK_BYTES_PER_CELL
    initializers = {t.name for t in inferred.graph.initializer}
    total, unknown = 0, 0
    values = (list(inferred.graph.input) + list(inferred.graph.value_info)
              + list(inferred.graph.output))
    for value in values:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value for d in tensor.shape.dim if d.HasField("dim_value")]
        if not tensor.HasField("shape") or len(dims) < len(tensor.shape.dim):
            unknown += 1
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        total += int(np.prod(dims, dtype=np.int64)) * itemsize
    if total == 0:
        return FALLBACK_BYTES_PER_CELL
    if unknown:
        log.debug("%s: %d tensors of unknown shape left out of the per-cell estimate",
                  Path(onnx_path).name, unknown)
    return int(total)


def cells_for_memory(free_bytes: int, bytes_per_cell: int,
                     fraction: float = GPU_MEMORY_FRACTION,
                     cap: int = MAX_CELLS_PER_BATCH, floor: int = MIN_CELLS_PER_BATCH) -> int:
    """floor <= fraction x free_bytes / bytes_per_cell <= cap."""
    if bytes_per_cell <= 0:
        raise ValueError(f"bytes_per_cell must be > 0, got {bytes_per_cell}")
    return int(max(floor, min(cap, int(free_bytes * fraction) // bytes_per_cell)))


# --- OnnxPredictor ---------------------------------------------------------------------------

class OnnxPredictor:
    """An exported XCO2 model ready to map cells: every output, CUDA when possible.

    `prefer_cuda`: None runs on CUDA when a GPU is there and on CPU otherwise (a CPU machine is
    not a fallback); True wants CUDA and logs a WARNING when it runs on CPU instead; False runs on
    CPU. `.provider` is the provider that actually runs; it is logged at INFO.

    `use_io_binding` (default: on CUDA only): inputs are copied to the device once per batch into
    a reused device buffer, outputs are written to pre-allocated device buffers and copied back
    once; on CPU the same binding wraps the caller's arrays without copies. Results are identical
    to plain `session.run`.

    `intra_op_threads`: ONNX Runtime's CPU threads (default: every core this process may use;
    see session_options).

    Not thread-safe (device buffers are reused between calls): one predictor per thread."""

    def __init__(
        self,
        onnx_path: str | Path,
        prefer_cuda: bool | None = None,
        *,
        device_id: int = 0,
        use_io_binding: bool | None = None,
        cuda_options: Mapping[str, Any] | None = None,
        memory_fraction: float = GPU_MEMORY_FRACTION,
        max_cells_per_batch: int = MAX_CELLS_PER_BATCH,
        intra_op_threads: int | None = None,
        graph: bytes | None = None,
        network_pass: bool = True,
        precision: str = "fp32",
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.intra_op_threads = intra_op_threads
        # `graph`: a serialised graph derived from the file at onnx_path (the network-free cut, a
        # quantized network), run instead of the file itself; the file stays the champion's name.
        self._graph = graph
        self.network_pass = network_pass
        self.path = FULL_NETWORK if network_pass else NETWORK_FREE
        self.precision = precision
        self.columns: tuple[int, ...] | None = None  # the feature columns the graph reads (None: all)
        self._network_free: dict[bool, OnnxPredictor | None] = {}
        self._for_mapping: OnnxPredictor | None = None
        self._prefer_cuda = prefer_cuda
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.onnx_path}")
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        self.device_id = int(device_id)
        self.memory_fraction = float(memory_fraction)
        self.max_cells_per_batch = int(max_cells_per_batch)
        self.cuda_options = {**DEFAULT_CUDA_OPTIONS,
                             **{str(k): str(v) for k, v in (cuda_options or {}).items()}}
        self._gpu_cells: int | None = None
        self._bytes_per_cell: int | None = None
        self._buffers: OrderedDict[int, tuple[ort.OrtValue | None, dict[str, ort.OrtValue]]] = OrderedDict()

        wanted = bool(prefer_cuda)
        if prefer_cuda is None:
            attempt = gpu_plausibly_present()
            wanted = attempt  # a GPU is there: failing to use it is a fallback
        elif prefer_cuda:
            attempt = gpu_plausibly_present()
        else:
            attempt = False
        self.session, why_not = self._start(attempt)
        self.provider: str = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self.use_io_binding = (self.device == "cuda") if use_io_binding is None else bool(
            use_io_binding)

        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if INPUT_NAME not in names:
            raise ValueError(f"{self.onnx_path} has no input {INPUT_NAME!r} (inputs: {names})")
        features = inputs[names.index(INPUT_NAME)]
        self.n_features: int | None = (features.shape[1] if len(features.shape) == 2
                                       and isinstance(features.shape[1], int) else None)
        outputs = self.session.get_outputs()
        self.output_names: list[str] = [o.name for o in outputs]
        # Per output, the shape after the batch axis when concrete and float32, else None (then
        # ONNX Runtime allocates it and we copy it back).
        self._tails: dict[str, tuple[int, ...] | None] = {}
        for out in outputs:
            tail = tuple(out.shape[1:])
            concrete = all(isinstance(d, int) and d >= 0 for d in tail)
            self._tails[out.name] = tail if concrete and out.type == "tensor(float)" else None

        if wanted and self.provider != CUDA:
            log.warning(
                "CUDA was wanted for %s but is not available (%s): CPU fallback, running on %s",
                self.onnx_path.name, why_not or "CUDA provider did not start", self.provider)
        where = (f"GPU {self.device_id}" if self.device == "cuda" else "CPU")
        log.info("ONNX Runtime runs %s on %s (%s, %s; outputs %s; %s, %s)", self.onnx_path.name,
                 self.provider, where, "IO binding" if self.use_io_binding else "plain run",
                 ", ".join(self.output_names), self.path, self.precision)

    def _start(self, attempt_cuda: bool) -> tuple[ort.InferenceSession, str | None]:
        options = session_options(self.intra_op_threads)
        source: str | bytes = self._graph if self._graph is not None else str(self.onnx_path)
        why_not = None
        if attempt_cuda:
            # Our provider options first; should this onnxruntime reject one, CUDA with its
            # defaults rather than CPU.
            for extra in (self.cuda_options, {}):
                providers = [(CUDA, {"device_id": str(self.device_id), **extra}), CPU]
                try:
                    session = ort.InferenceSession(source, sess_options=options, providers=providers)
                except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/RuntimeError
                    why_not = f"session with CUDA failed: {exc}"
                    log.warning("ONNX Runtime session with CUDA options %s failed: %s", extra, exc)
                    continue
                if extra != self.cuda_options:
                    self.cuda_options = {}
                return session, None
        elif CUDA not in ort.get_available_providers():
            why_not = "this onnxruntime build has no CUDA provider"
        else:
            why_not = "no NVIDIA GPU found (no /dev/nvidia0, no nvidia-smi)"
        session = ort.InferenceSession(source, sess_options=options, providers=[CPU])
        return session, why_not

    # -- no network pass --

    def without_network(self, keep_uncertainty: bool = False) -> "OnnxPredictor | None":
        """A predictor over the background alone, cut from this graph (network_free_graph), when
        the champion's network share is 0; None otherwise (a share above 0, no background, a graph
        of another shape, or a cut that fails its check: each logged). Its 'xco2' is bit for bit
        this graph's wherever the network's output is finite. `keep_uncertainty`: keep the
        uncertainty output too (its spread network reads every covariate); without it the cut reads
        only the background's columns (`.columns`). Built once per predictor and kept."""
        if not self.network_pass:
            return self
        keep = keep_uncertainty and UNCERTAINTY_OUTPUT_NAME in self.output_names
        if keep not in self._network_free:
            self._network_free[keep] = self._cut(keep)
        return self._network_free[keep]

    def _cut(self, keep_uncertainty: bool) -> "OnnxPredictor | None":
        metadata = read_metadata(self.onnx_path)
        share = network_share(metadata)
        if share != 0.0:
            return None
        model = onnx.load(str(self.onnx_path), load_external_data=False)
        cut = network_free_graph(model, (UNCERTAINTY_OUTPUT_NAME,) if keep_uncertainty else ())
        if cut is None:
            log.warning("%s: network share 0 but no background term found in the graph; the network runs",
                        self.onnx_path.name)
            return None
        # On the CPU even beside a GPU: eight terms per cell are not worth a transfer.
        predictor = OnnxPredictor(self.onnx_path, False, intra_op_threads=self.intra_op_threads,
                                  graph=cut.SerializeToString(), network_pass=False)
        try:
            worst = check_network_free(predictor.session, metadata)
        except ValueError as exc:
            log.warning("%s: %s; the network runs", self.onnx_path.name, exc)
            return None
        predictor.columns = columns_used(cut)
        log.info("%s: network share 0: %s (reads feature columns %s; check %.1e ppm)", self.onnx_path.name,
                 NETWORK_FREE, "all" if predictor.columns is None else list(predictor.columns), worst)
        return predictor

    def for_mapping(self, keep_uncertainty: bool = False) -> "OnnxPredictor":
        """What a day's mapping should run: the network-free cut when the network's share is 0
        (without_network), else this graph in the precision the processor supports
        (choose_precision: int8-dynamic behind the parity gate, or fp32). Chosen once and kept."""
        free = self.without_network(keep_uncertainty)
        if free is not None:
            return free
        if self._for_mapping is None:
            self._for_mapping = choose_precision(self)
        return self._for_mapping

    # -- batch size --

    @property
    def bytes_per_cell(self) -> int:
        """estimate_bytes_per_cell of this model (computed once)."""
        if self._bytes_per_cell is None:
            self._bytes_per_cell = estimate_bytes_per_cell(self.onnx_path)
        return self._bytes_per_cell

    def cells_per_batch(self, requested: int) -> int:
        """How many cells to run per batch. On CPU: `requested`. On CUDA: memory_fraction of the
        GPU's free memory divided by bytes_per_cell, between MIN_CELLS_PER_BATCH and
        max_cells_per_batch, measured once (before the first batch fills ONNX Runtime's arena);
        `requested` when free memory cannot be read."""
        requested = int(requested)
        if requested < 1:
            raise ValueError(f"requested must be >= 1, got {requested}")
        if self.device != "cuda":
            return requested
        if self._gpu_cells is None:
            free = gpu_free_bytes(self.device_id)
            if free is None:
                log.warning("cannot read free memory of GPU %d (nvidia-smi, libcudart): using the "
                            "configured batch of %d cells", self.device_id, requested)
                return requested
            self._gpu_cells = cells_for_memory(free, self.bytes_per_cell, self.memory_fraction,
                                               self.max_cells_per_batch)
            log.info("batch of %d cells on GPU %d: %.0f%% of %.1f GiB free / %.0f KiB per cell "
                     "(estimate)", self._gpu_cells, self.device_id, 100 * self.memory_fraction,
                     free / 2**30, self.bytes_per_cell / 1024)
        return self._gpu_cells

    # -- running --

    def run(self, features: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """features [n, n_features] raw covariates -> {output name: float32 [n]} for every output
        of the model ('xco2' first). `batch_size`: rows per ONNX Runtime call (default: all);
        pass cells_per_batch(...) for large inputs."""
        if getattr(features, "ndim", None) != 2 or (
                self.n_features is not None and features.shape[1] != self.n_features):
            raise ValueError(f"expected features of shape [n, {self.n_features}], got "
                             f"{tuple(np.shape(features))}")
        n = int(features.shape[0])
        step = n if batch_size is None else int(batch_size)
        if step < 1 and n > 0:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: dict[str, np.ndarray] = {}
        for name, tail in self._tails.items():
            if tail is not None:
                out[name] = np.empty((n, *tail), dtype=np.float32)
        for start in range(0, n, max(step, 1)):
            # Only the current slice is converted: features may be float64 or memory-mapped.
            chunk = np.ascontiguousarray(features[start:start + step], dtype=np.float32)
            stop = start + chunk.shape[0]
            if self.use_io_binding:
                got = self._run_bound(chunk, out, start, stop)
            else:
                got = dict(zip(self.output_names,
                               self.session.run(self.output_names, {INPUT_NAME: chunk})))
            for name, value in got.items():
                value = np.asarray(value, dtype=np.float32)
                if name not in out:
                    out[name] = np.empty((n, *value.shape[1:]), dtype=np.float32)
                out[name][start:stop] = value
        for name in self.output_names:  # an empty input, or a shape only known from a result
            if name not in out:
                out[name] = np.empty((n, *(self._tails[name] or ())), dtype=np.float32)
        return {name: out[name] for name in self.output_names}

    def _device_buffers(self, rows: int) -> tuple[ort.OrtValue | None, dict[str, ort.OrtValue]]:
        """Reused device input/output buffers for batches of `rows` (the full and the ragged
        last batch: two entries at most)."""
        if rows in self._buffers:
            self._buffers.move_to_end(rows)
            return self._buffers[rows]
        dev = (self.device, self.device_id)
        x = ort.OrtValue.ortvalue_from_shape_and_type([rows, self.n_features or 0], np.float32,
                                                      *dev) if self.n_features else None
        outs = {name: ort.OrtValue.ortvalue_from_shape_and_type([rows, *tail], np.float32, *dev)
                for name, tail in self._tails.items() if tail is not None}
        self._buffers[rows] = (x, outs)
        while len(self._buffers) > 2:
            self._buffers.popitem(last=False)
        return x, outs

    def _run_bound(self, chunk: np.ndarray, out: dict[str, np.ndarray], start: int,
                   stop: int) -> dict[str, np.ndarray]:
        """One batch through IO binding; returns the outputs not already written into `out`."""
        rows = chunk.shape[0]
        binding = self.session.io_binding()
        in_place: set[str] = set()
        if self.device == "cpu":
            # Zero-copy: the input OrtValue wraps `chunk`, the outputs wrap slices of `out`.
            binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(chunk))
            for name in self.output_names:
                if self._tails[name] is None:
                    binding.bind_output(name, "cpu", 0)
                else:
                    binding.bind_ortvalue_output(
                        name, ort.OrtValue.ortvalue_from_numpy(out[name][start:stop]))
                    in_place.add(name)
        else:
            x, outs = self._device_buffers(rows)
            if x is not None and hasattr(x, "update_inplace"):
                x.update_inplace(chunk)  # one host -> device copy into the reused buffer
            else:
                x = ort.OrtValue.ortvalue_from_numpy(chunk, self.device, self.device_id)
            binding.bind_ortvalue_input(INPUT_NAME, x)
            for name in self.output_names:
                if name in outs:
                    binding.bind_ortvalue_output(name, outs[name])
                else:
                    binding.bind_output(name, self.device, self.device_id)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if len(in_place) == len(self.output_names):
            return {}
        # One device -> host copy per output, in the order they were bound.
        values = binding.copy_outputs_to_cpu()
        return {name: value for name, value in zip(self.output_names, values)
                if name not in in_place}


# --- One predictor per worker thread ---------------------------------------------------------

_thread_held = threading.local()


def predictor_for_thread(onnx_path: str | Path) -> OnnxPredictor:
    """The champion's predictor for the calling thread: opened on its first day, kept for the next
    ones while the file at `onnx_path` is unchanged (path, size, mtime, inode).

    Why: the thread and Dask runners make every day its own task, and opening the graph, cutting the
    network out (share 0) and choosing the precision (a timed parity check where the processor has
    int8 instructions) are the same work each day. A predictor is neither thread-safe (its
    IO-binding buffers) nor picklable, so each thread holds its own, and only the last file's: a new
    champion replaces it rather than piling up beside it.
    """
    path = Path(onnx_path)
    st = path.stat()  # FileNotFoundError names the path
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    held: tuple[tuple[str, int, int, int], OnnxPredictor] | None = getattr(_thread_held, "predictor", None)
    if held is None or held[0] != key:
        held = (key, OnnxPredictor(path))
        _thread_held.predictor = held
    return held[1]


# --- No network pass where the map does not use it (network share 0) ------------------------
#
# The exported graph is background(features) + share x network(features) (models/deployable.py).
# With a share of 0 the map is the background (+ the daily-anomaly field, added where maps are
# made): the network's term is exactly 0 for every finite network output, and the graph's Add
# returns its other operand unchanged, so the background's own subgraph, cut out of the very graph
# the champion ships, gives the same float32 bits without running the ResNet-LSTM. Cut from the
# graph at load time, so champions exported before this need no re-export.

NETWORK_FREE = "background only (network share 0: no network pass)"
FULL_NETWORK = "full graph (network pass)"
# The cut graph is checked at load against the background evaluated in numpy (float64) from the
# champion's own metadata: a cut at the wrong tensor is off by the network's whole anomaly.
NETWORK_FREE_CHECK_PPM = 1e-3
NETWORK_FREE_CHECK_ROWS = 64


def network_share(metadata: Mapping[str, Any]) -> float | None:
    """The share of the network's anomaly in the map (models/holdouts.py), from an export's
    metadata (read_metadata); None for exports without a background, whose graph is all network."""
    mapping = metadata.get("mapping") or {}
    if "anomaly_scale" not in mapping or not mapping.get("background"):
        return None
    return float(mapping["anomaly_scale"])


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return np.asarray(onnx.numpy_helper.to_array(init))
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return np.asarray(onnx.numpy_helper.to_array(attr.t))
    return None


def background_tensor(model: onnx.ModelProto, share: float = 0.0) -> str | None:
    """The name of the background's tensor in an exported graph: the operand of the output's final
    Add whose other operand is Mul(share, network). None when the graph has another shape (a model
    without a background, or a future export): then the full graph runs."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    final = producers.get(OUTPUT_NAME)
    if final is None or final.op_type != "Add" or len(final.input) != 2:
        return None
    for i, operand in enumerate(final.input):
        scaled = producers.get(operand)
        if scaled is None or scaled.op_type != "Mul":
            continue
        for factor in scaled.input:
            value = _constant_value(graph, factor)
            if value is not None and value.size == 1 and float(value.reshape(())) == share:
                return final.input[1 - i]
    return None


def network_free_graph(model: onnx.ModelProto, keep: tuple[str, ...] = (),
                       share: float = 0.0) -> onnx.ModelProto | None:
    """The subgraph of `model` from its input to the background's tensor, which it outputs as
    OUTPUT_NAME, plus the outputs named in `keep` (e.g. the uncertainty's, which needs its own
    spread network but no ResNet-LSTM); None when background_tensor finds no background."""
    source = background_tensor(model, share)
    if source is None:
        return None
    missing = [name for name in keep if name not in {o.name for o in model.graph.output}]
    if missing:
        raise ValueError(f"the graph has no output {missing}")
    # The extractor wants every tensor's type, which the export records only for inputs and outputs.
    cut = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([INPUT_NAME], [source, *keep])
    # The extracted graph names its output after the inner tensor; consumers want OUTPUT_NAME.
    cut.graph.node.append(onnx.helper.make_node("Identity", [source], [OUTPUT_NAME]))
    renamed = onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch"])
    outputs = [renamed, *(o for o in cut.graph.output if o.name != source)]
    del cut.graph.output[:]
    cut.graph.output.extend(outputs)
    del cut.metadata_props[:]
    cut.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(cut)
    return cut


def columns_used(model: onnx.ModelProto) -> tuple[int, ...] | None:
    """The feature columns a graph reads, when it reads the input only through Gathers of constant
    columns (the background's five); None when it reads the whole row (the network)."""
    graph = model.graph
    used: set[int] = set()
    for node in graph.node:
        if INPUT_NAME not in node.input:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        index = _constant_value(graph, node.input[1]) if node.op_type == "Gather" and len(node.input) == 2 else None
        if node.input[0] != INPUT_NAME or axis != 1 or index is None:
            return None
        used.update(int(i) for i in np.atleast_1d(index))
    return tuple(sorted(used))


def _probe_rows(metadata: Mapping[str, Any], rows: int, seed: int = 20240601) -> np.ndarray:
    scalers = metadata["scalers"]
    mean = np.asarray(scalers["feature_mean"], np.float64)
    std = np.asarray(scalers["feature_std"], np.float64)
    rng = np.random.default_rng(seed)
    return (mean + std * rng.standard_normal((rows, len(mean)))).astype(np.float32)


def check_network_free(session: ort.InferenceSession, metadata: Mapping[str, Any]) -> float:
    """Max |cut graph - background| (ppm) on probe rows, the background evaluated in numpy from the
    metadata; raises ValueError above NETWORK_FREE_CHECK_PPM."""
    from models.background import Background

    background = Background.from_dict(metadata["mapping"]["background"])
    X = _probe_rows(metadata, NETWORK_FREE_CHECK_ROWS)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: X})[0].astype(np.float64)
    worst = float(np.max(np.abs(got - background.evaluate_features(X, metadata["feature_names"]))))
    if not np.isfinite(worst) or worst > NETWORK_FREE_CHECK_PPM:
        raise ValueError(f"the background cut out of the graph differs from the champion's background by "
                         f"{worst:.3g} ppm (tolerance {NETWORK_FREE_CHECK_PPM:g})")
    return worst


# --- Reduced precision where the processor has it ---------------------------------------------
#
# ONNX Runtime's CPU provider has int8 kernels (dynamic quantization: int8 weights, activations
# quantized per call) that use AMX-INT8, AVX-512 VNNI or AVX-VNNI where the processor has them; it
# has no bf16 convolution or GEMM kernels on x86, so a processor with AVX-512 BF16 or AMX-BF16 (all
# of which also have VNNI) gets the int8 path too. Without these instructions int8 runs on plain
# AVX2 integer multiplies, no faster than fp32: fp32 stays.

REDUCED_PRECISION_FLAGS = ("amx_int8", "amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni")
INT8_DYNAMIC = "int8-dynamic"
FP32 = "fp32"
# The parity gate: a reduced-precision network is used only when it stays within this of fp32 on
# every output, on probe rows of the champion's own feature distribution.
REDUCED_PRECISION_TOLERANCE_PPM = 0.05
PRECISION_PROBE_ROWS = 2048
# The quantized operators: the fast export's convolutions and its LSTM/head GEMMs.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def reduced_precision_support(cpuinfo: str) -> str | None:
    """The flag that makes a reduced-precision network worth trying on this processor (the first of
    REDUCED_PRECISION_FLAGS it has), or None: fp32. A pure function of the cpuinfo text."""
    flags = cpu_flags(cpuinfo)
    return next((flag for flag in REDUCED_PRECISION_FLAGS if flag in flags), None)


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def precision_gate(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                   tolerance_ppm: float = REDUCED_PRECISION_TOLERANCE_PPM) -> tuple[bool, float]:
    """(passes, worst |candidate - reference| in ppm over every output of the reference)."""
    worst = 0.0
    for name, expected in reference.items():
        if name not in candidate:
            return False, float("inf")
        diff = np.abs(np.asarray(candidate[name], np.float64) - np.asarray(expected, np.float64))
        largest = float(np.max(diff)) if diff.size else 0.0
        if not np.isfinite(largest):  # a NaN would slip through max()
            return False, float("inf")
        worst = max(worst, largest)
    return worst <= tolerance_ppm, worst


def int8_dynamic_graph(onnx_path: str | Path) -> bytes:
    """The graph with int8 dynamic quantization of its convolutions and GEMMs (onnxruntime.quantization)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(onnx_path), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="xco2-int8-") as scratch:
        out = Path(scratch) / "int8.onnx"
        quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=background_nodes(model))
        return out.read_bytes()


def background_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes that compute the background term (none without one). They stay fp32:
    one int8 scale over coefficients of 400 ppm and of 0.1 ppm per degree would erase the latter."""
    graph = model.graph
    share = network_share({"mapping": _mapping_of(model)})
    source = background_tensor(model, share) if share is not None else None
    if source is None:
        return []
    producers = {out: node for node in graph.node for out in node.output}
    names: list[str] = []
    todo, seen = [source], set()
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.name)
        todo.extend(node.input)
    return names


def _mapping_of(model: onnx.ModelProto) -> dict[str, Any] | None:
    props = {p.key: p.value for p in model.metadata_props}
    try:
        return decode_metadata(props, source="graph").get("mapping")
    except ValueError:
        return None


def _rate(predictor: "OnnxPredictor", X: np.ndarray, repeats: int = 3) -> float:
    """Cells/s, the best of `repeats` runs after a warm-up (the machine may be shared)."""
    import time

    predictor.run(X[:256])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.run(X, batch_size=CPU_CELLS_PER_BATCH)
        best = min(best, time.perf_counter() - start)
    return len(X) / best


def choose_precision(predictor: "OnnxPredictor", cpuinfo: str | None = None,
                     tolerance_ppm: float = REDUCED_PRECISION_TOLERANCE_PPM,
                     require_faster: bool = True, probe_rows: int = PRECISION_PROBE_ROWS) -> "OnnxPredictor":
    """`predictor` (fp32) or, on a processor with reduced-precision instructions
    (reduced_precision_support), its int8-dynamic form (QUANTIZED_OPS, the background kept fp32)
    when it passes the parity gate against fp32 on probe rows of the champion's feature
    distribution on every output and (`require_faster`) runs faster than fp32 there; the choice and
    its figures are logged. CPU only: a GPU runs fp32."""
    if predictor.device != "cpu" or not predictor.network_pass:
        return predictor
    name = predictor.onnx_path.name
    flag = reduced_precision_support(read_cpuinfo() if cpuinfo is None else cpuinfo)
    if flag is None:
        log.info("%s: fp32 network (this processor has none of %s)", name, ", ".join(REDUCED_PRECISION_FLAGS))
        return predictor
    try:
        candidate = OnnxPredictor(predictor.onnx_path, False, intra_op_threads=predictor.intra_op_threads,
                                  graph=int8_dynamic_graph(predictor.onnx_path), precision=INT8_DYNAMIC)
    except Exception as exc:  # noqa: BLE001 - any failure to quantize keeps fp32, logged
        log.warning("%s: int8 dynamic quantization failed (%s); fp32 network", name, exc)
        return predictor
    X = _probe_rows(read_metadata(predictor.onnx_path), probe_rows)
    passes, worst = precision_gate(predictor.run(X), candidate.run(X), tolerance_ppm)
    if not passes:
        log.info("%s: %s (processor has %s) differs from fp32 by %.3g ppm > %g: fp32 network", name,
                 INT8_DYNAMIC, flag, worst, tolerance_ppm)
        return predictor
    if require_faster:
        fp32_rate, int8_rate = _rate(predictor, X), _rate(candidate, X)
        if int8_rate <= fp32_rate:
            log.info("%s: %s within %.3g ppm of fp32 but not faster here (%.0f vs %.0f cells/s): fp32 network",
                     name, INT8_DYNAMIC, worst, int8_rate, fp32_rate)
            return predictor
        log.info("%s: %s network (processor has %s; within %.3g ppm of fp32, gate %g; %.0f vs %.0f cells/s)",
                 name, INT8_DYNAMIC, flag, worst, tolerance_ppm, int8_rate, fp32_rate)
    else:
        log.info("%s: %s network (processor has %s; within %.3g ppm of fp32, gate %g)", name, INT8_DYNAMIC,
                 flag, worst, tolerance_ppm)
    return candidate
