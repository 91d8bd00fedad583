#!/usr/bin/env python
"""GPU check (not a pytest test: run it by hand on a machine with an NVIDIA GPU).

Runs N random but realistic feature rows (default 2,000,000) through tasks.mapping.onnx_runtime's
OnnxPredictor on CUDA (IO binding, batch from free GPU memory), on CUDA without IO binding, and on
CPU; prints the max |CUDA - CPU| in ppm per output and the throughput (cells/s) of each; exits
non-zero when the difference exceeds --tolerance-ppm (default 0.01). It also times a Sichuan
province day (the cells inside the shipped boundary, 454,727) on the GPU's provider and prints the
floor the FLOP count sets for it on the GPU found (H100/H200: 7.9 TFLOP, 0.12 s at the fp32 peak).

The model is --onnx PATH (an export of models.onnx_export; its scalers give the feature
distribution) or, by default, a ResNet-LSTM built here with onnx.helper in the shape of Table 4
(46 features, Conv1D stem 32, residual blocks 64/128/256/512 at stride 2, LSTM 128 x 2, dense
heads) with random weights and two outputs, 'xco2' and 'xco2_uncertainty'. Needs numpy, onnx and
onnxruntime-gpu; no torch.

    python tests/gpu/gpu_check.py                    # the built model, 2,000,000 rows
    python tests/gpu/gpu_check.py --onnx model.onnx  # a real export

The CPU pass stops after --cpu-budget-s seconds (default 90) and compares the rows it finished;
the output says how many. Exit status: 0 parity holds; 1 parity fails or outputs are not finite;
2 CUDA did not run (no GPU, libraries missing) unless --allow-cpu.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# (mean, std, low, high) of the 46 features of fs1-46 (tasks/covariates/features.py), roughly as in Sichuan:
# raw scales matter, the exported graph standardises them in float32.
_FEATURES = (
    [(2500, 1600, 200, 6500)] * 5 + [(12, 10, 0, 70), (250, 200, 0, 2000)]  # elevation, slope, std
    + [(3.5, 2.0, 0, 10)] * 5  # population log
    + [(0.25, 0.25, 0, 1)] * 17  # land cover fractions
    + [(0.45, 0.2, -0.2, 1)] * 5  # NDVI
    + [(2.5, 1.5, 0, 10), (4, 6, 0, 80), (750, 130, 450, 1020), (70, 15, 10, 100),
       (6, 3.5, 0, 14), (15, 9, -25, 38), (2.2, 1.2, 0, 15)]  # ERA5
    + [(30.2, 2.4, 26.05, 34.32), (100.3, 4.6, 92.35, 108.2), (5.5, 3, 0, 11),
       (0, 0.7, -1, 1), (0, 0.7, -1, 1)]  # lat, lon, years, doy sin/cos
)
assert len(_FEATURES) == 46


def _conv(nodes, inits, name, x, c_in, c_out, k, stride, rng):
    # He initialisation; batch norm folded into the bias.
    w = rng.normal(0, np.sqrt(2.0 / (c_in * k)), (c_out, c_in, k)).astype(np.float32)
    b = rng.normal(0, 0.05, c_out).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name],
                                  kernel_shape=[k], strides=[stride], pads=[k // 2, k // 2]))
    return name


def _lstm(nodes, inits, name, x, n_in, hidden, rng):
    bound = 1 / np.sqrt(hidden)
    for part, shape in (("W", (1, 4 * hidden, n_in)), ("R", (1, 4 * hidden, hidden)),
                        ("B", (1, 8 * hidden))):
        inits.append(numpy_helper.from_array(
            rng.uniform(-bound, bound, shape).astype(np.float32), f"{name}.{part}"))
    nodes.append(helper.make_node("LSTM", [x, f"{name}.W", f"{name}.R", f"{name}.B"],
                                  [f"{name}.Y", f"{name}.Y_h"], hidden_size=hidden))
    return f"{name}.Y", f"{name}.Y_h"


def build_model(path: Path, seed: int = 0) -> Path:
    """A Table-4-shaped ResNet-LSTM with random weights: features [batch, 46] -> xco2 [batch]
    (ppm) and xco2_uncertainty [batch] (ppm)."""
    rng = np.random.default_rng(seed)
    n = len(_FEATURES)
    mean = np.array([f[0] for f in _FEATURES], np.float32)
    std = np.array([f[1] for f in _FEATURES], np.float32)
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    nodes += [
        helper.make_node("Sub", ["features", const("mean", mean)], ["centred"]),
        helper.make_node("Div", ["centred", const("std", std)], ["z"]),
        helper.make_node("Unsqueeze", ["z", const("ax1", [1], np.int64)], ["seq"]),
    ]
    h = _conv(nodes, inits, "stem", "seq", 1, 32, 3, 1, rng)
    nodes.append(helper.make_node("Relu", [h], ["stem.relu"]))
    h, c_in = "stem.relu", 32
    for i, c_out in enumerate((64, 128, 256, 512)):
        a = _conv(nodes, inits, f"b{i}.conv1", h, c_in, c_out, 3, 2, rng)
        nodes.append(helper.make_node("Relu", [a], [f"b{i}.relu1"]))
        a = _conv(nodes, inits, f"b{i}.conv2", f"b{i}.relu1", c_out, c_out, 3, 1, rng)
        s = _conv(nodes, inits, f"b{i}.skip", h, c_in, c_out, 1, 2, rng)
        nodes += [helper.make_node("Add", [a, s], [f"b{i}.add"]),
                  helper.make_node("Relu", [f"b{i}.add"], [f"b{i}.out"])]
        h, c_in = f"b{i}.out", c_out
    nodes.append(helper.make_node("Transpose", [h], ["steps"], perm=[2, 0, 1]))  # [L, batch, C]
    y1, _ = _lstm(nodes, inits, "lstm1", "steps", 512, 128, rng)
    nodes.append(helper.make_node("Squeeze", [y1, const("ax1b", [1], np.int64)], ["lstm1.seq"]))
    _, y_h = _lstm(nodes, inits, "lstm2", "lstm1.seq", 128, 128, rng)
    nodes.append(helper.make_node("Squeeze", [y_h, const("ax0", [0], np.int64)], ["last"]))
    for head in ("mu", "sigma"):
        w = rng.normal(0, 1 / np.sqrt(128), (1, 128)).astype(np.float32)
        nodes.append(helper.make_node("Gemm", ["last", const(f"{head}.w", w),
                                               const(f"{head}.b", [0.1])], [f"{head}.raw"],
                                      transB=1))
        nodes.append(helper.make_node("Squeeze", [f"{head}.raw", const(f"{head}.ax", [1],
                                                                          np.int64)],
                                      [f"{head}.flat"]))
    nodes += [
        helper.make_node("Mul", ["mu.flat", const("target_std", 2.0)], ["mu.ppm"]),
        helper.make_node("Add", ["mu.ppm", const("target_mean", 412.0)], ["xco2"]),
        helper.make_node("Softplus", ["sigma.flat"], ["sigma.pos"]),
        helper.make_node("Add", ["sigma.pos", const("sigma_floor", 0.3)], ["xco2_uncertainty"]),
    ]
    graph = helper.make_graph(
        nodes, "resnet_lstm_check",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("xco2", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("xco2_uncertainty", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _calibrate(model, seed)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _calibrate(model, seed: int) -> None:
    """Scale the xco2 head so the random network spreads its predictions like a trained one
    (std 2 ppm around 412 ppm): a random LSTM's last state is small, and a too-flat output would
    hide numerical differences that a trained network amplifies."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("mu.flat", TensorProto.FLOAT,
                                                            ["batch"]))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    X = feature_rows(2048, None, seed + 7)
    spread = float(np.std(session.run(["mu.flat"], {"features": X})[0]))
    weights = next(t for t in model.graph.initializer if t.name == "mu.w")
    scaled = numpy_helper.to_array(weights) / max(spread, 1e-6)
    weights.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), "mu.w"))


def feature_rows(n: int, onnx_path: Path | None, seed: int) -> np.ndarray:
    """Rows drawn around the model's own feature means/stds (from its xco2 metadata) when it has
    them, else around the fs1-46 table above; clipped to plausible ranges."""
    rng = np.random.default_rng(seed)
    mean = std = low = high = None
    if onnx_path is not None:
        try:
            from models.onnx_session import read_metadata

            scalers = read_metadata(onnx_path)["scalers"]
            mean = np.asarray(scalers["feature_mean"], np.float64)
            std = np.asarray(scalers["feature_std"], np.float64)
            low, high = mean - 4 * std, mean + 4 * std
        except (ValueError, KeyError, OSError):
            pass
    if mean is None:
        table = np.array(_FEATURES, np.float64)
        mean, std, low, high = table.T
    X = np.empty((n, len(mean)), np.float32)
    step = 250_000
    for start in range(0, n, step):
        rows = min(step, n - start)
        block = mean + std * rng.standard_normal((rows, len(mean)))
        X[start:start + rows] = np.clip(block, low, high)
    return X


def _timed(predictor, X, batch, budget_s=None):
    """(outputs, rows done, seconds) running X in batches, stopping after budget_s."""
    outs, done, t0 = {}, 0, time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, X.shape[0], batch):
        got = predictor.run(X[start:start + batch])
        for name, value in got.items():
            parts.setdefault(name, []).append(value)
        done = min(X.shape[0], start + batch)
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    seconds = time.perf_counter() - t0
    outs = {name: np.concatenate(values) for name, values in parts.items()}
    return outs, done, seconds


# fp32 peaks (TFLOP/s, dense) of the GPUs a session may be lent: (CUDA cores, TF32 tensor cores).
# NVIDIA's data sheets (SXM parts); the H200 has the H100's compute with more, faster memory.
GPU_PEAK_TFLOPS = {"H100": (67.0, 495.0), "H200": (67.0, 495.0), "A100": (19.5, 156.0), "L4": (30.3, 60.0)}


def table4_flops_per_cell(n_features: int = 46) -> int:
    """FLOPs of one cell through Table 4's network, counted like models.fast_network.flops_per_cell
    (every tap over its output positions, padding included; LSTM input and recurrent products at
    every step; the head), without torch: 17,466,240 for 46 features."""
    macs, length, c_in = n_features * 32 * 3, n_features, 32
    for c_out in (64, 128, 256, 512):
        out = (length - 1) // 2 + 1
        macs += out * c_out * c_in * 3 + out * c_out * c_out * 3 + out * c_out * c_in
        length, c_in = out, c_out
    for layer in range(2):
        macs += length * 4 * 128 * ((512 if layer == 0 else 128) + 128)
    return 2 * (macs + 128)


def province_cells() -> int:
    """Cells of the default region (Sichuan) inside its shipped boundary at 0.01 degree: what a
    nightly map predicts for one day."""
    from tasks.gridding.geometry import Grid
    from tasks.regions.boundary import region_mask
    from tasks.settings import Region

    region = Region()
    return int(region_mask(region, Grid.for_region(region, 0.01)).sum())


def expected_day_seconds(gpu_name: str, cells: int, flops_per_cell: int) -> str:
    """The FLOP count's floor for a day on this GPU, at its fp32 and TF32 peaks."""
    for key, (fp32, tf32) in GPU_PEAK_TFLOPS.items():
        if key in gpu_name:
            work = cells * flops_per_cell
            return (f"{cells:,} cells x {flops_per_cell / 1e6:.2f} MFLOP = {work / 1e12:.2f} TFLOP: at least "
                    f"{work / (fp32 * 1e12):.3f} s at the {key}'s fp32 peak ({fp32:g} TFLOP/s), "
                    f"{work / (tf32 * 1e12):.3f} s at its TF32 tensor peak ({tf32:g}); expect 3-10x these "
                    "(small GEMMs, the LSTM's steps, host-device copies)")
    return f"no peak on record for {gpu_name!r}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="an exported model (default: build one)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--tolerance-ppm", type=float, default=0.01)
    parser.add_argument("--cpu-budget-s", type=float, default=90.0)
    parser.add_argument("--cpu-batch", type=int, default=65536)
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--cuda-option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a CUDA provider option, e.g. use_tf32=1")
    parser.add_argument("--allow-cpu", action="store_true", help="exit 0 without a GPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime as ort

    from models.onnx_session import CUDA
    from tasks.mapping.onnx_runtime import OnnxPredictor, gpu_free_bytes

    if hasattr(ort, "preload_dlls") and shutil.which("nvidia-smi"):
        # CUDA/cuDNN from nvidia-* wheels, when they are there.
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001
            print(f"note: onnxruntime.preload_dlls failed: {exc}")
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,memory.free,"
                              "driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        print("GPU:", smi.stdout.strip() or smi.stderr.strip())

    cuda_options = dict(kv.split("=", 1) for kv in args.cuda_option)
    with tempfile.TemporaryDirectory(prefix="xco2-gpu-check-") as tmp:
        path = args.onnx or build_model(Path(tmp) / "resnet_lstm_check.onnx", seed=args.seed)
        t = time.perf_counter()
        X = feature_rows(args.rows, path, args.seed + 1)
        print(f"model {path.name}; {X.shape[0]:,} rows x {X.shape[1]} features "
              f"({X.nbytes / 2**20:,.0f} MiB) made in {time.perf_counter() - t:.1f} s")

        gpu = OnnxPredictor(path, prefer_cuda=True, device_id=args.device_id,
                            cuda_options=cuda_options)
        results: dict = {"rows": int(X.shape[0]), "provider": gpu.provider,
                         "outputs": gpu.output_names, "tolerance_ppm": args.tolerance_ppm}
        if gpu.provider != CUDA:
            print(f"CUDA did not run (provider {gpu.provider}); see the warning above")
            if not args.allow_cpu:
                return 2
        batch = gpu.cells_per_batch(args.cpu_batch)
        free = gpu_free_bytes(args.device_id)
        results.update(batch=batch, bytes_per_cell=gpu.bytes_per_cell, gpu_free_bytes=free)
        print(f"provider {gpu.provider}; batch {batch:,} cells; estimate "
              f"{gpu.bytes_per_cell / 1024:.0f} KiB per cell")

        gpu.run(X[:batch])  # warm-up: CUDA context, cuDNN handles, arena
        gpu_out, _, gpu_s = _timed(gpu, X, batch)
        results["cuda_iobinding_cells_per_s"] = X.shape[0] / gpu_s
        mode = "IO binding" if gpu.use_io_binding else "plain run"
        print(f"{gpu.provider} ({mode}): {X.shape[0]:,} rows in {gpu_s:.2f} s = "
              f"{X.shape[0] / gpu_s:,.0f} cells/s")

        cells = province_cells()
        if gpu.provider == CUDA and cells <= X.shape[0]:  # on a CPU a province day is make bench's
            day_X = np.ascontiguousarray(X[:cells])
            _, _, day_s = _timed(gpu, day_X, batch)
            results.update(province_day_cells=cells, province_day_s=day_s)
            print(f"{gpu.provider}: a Sichuan province day ({cells:,} cells inside the boundary) in {day_s:.2f} s "
                  f"of inference")
        gpu_name = ""
        if shutil.which("nvidia-smi"):
            gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i",
                                       str(args.device_id)], capture_output=True, text=True, timeout=30,
                                      check=False).stdout.strip()
        expectation = expected_day_seconds(gpu_name, cells, table4_flops_per_cell(X.shape[1]))
        results["province_day_expected"] = expectation
        print("expected from the FLOP count:", expectation)

        if gpu.provider == CUDA:
            plain = OnnxPredictor(path, prefer_cuda=True, device_id=args.device_id,
                                  use_io_binding=False, cuda_options=cuda_options)
            plain.run(X[:batch])
            plain_out, _, plain_s = _timed(plain, X, batch)
            results["cuda_plain_cells_per_s"] = X.shape[0] / plain_s
            same = max(float(np.max(np.abs(plain_out[k] - gpu_out[k]))) for k in gpu_out)
            results["cuda_iobinding_vs_plain_max_abs"] = same
            print(f"{plain.provider} (plain run): {X.shape[0] / plain_s:,.0f} cells/s; "
                  f"max |IO binding - plain| {same:.3g}")
            del plain

        cpu = OnnxPredictor(path, prefer_cuda=False)
        cpu.run(X[:1024])
        cpu_out, done, cpu_s = _timed(cpu, X, args.cpu_batch, budget_s=args.cpu_budget_s)
        results.update(cpu_rows_compared=done, cpu_cells_per_s=done / cpu_s)
        print(f"CPUExecutionProvider: {done:,} rows in {cpu_s:.1f} s = {done / cpu_s:,.0f} "
              f"cells/s" + ("" if done == X.shape[0] else
                            f" (stopped at the {args.cpu_budget_s:.0f} s budget)"))

    failed = False
    for name in gpu_out:
        a = gpu_out[name][:done].astype(np.float64)
        b = cpu_out[name][:done].astype(np.float64)
        finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
        diff = float(np.max(np.abs(a - b))) if done else float("nan")
        results[f"max_abs_diff_ppm.{name}"] = diff
        ok = finite and diff <= args.tolerance_ppm
        failed |= not ok
        print(f"{name}: max |CUDA - CPU| = {diff:.3g} ppm over {done:,} rows "
              f"(mean |diff| {float(np.mean(np.abs(a - b))):.2g}; range {a.min():.2f}.."
              f"{a.max():.2f} ppm){'' if finite else ' NON-FINITE VALUES'} -> "
              f"{'OK' if ok else 'FAIL'} (tolerance {args.tolerance_ppm} ppm)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    print("RESULT:", "FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
