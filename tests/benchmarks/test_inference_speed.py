"""Inference speed, side by side in one run (`make bench`): torch eager, the ONNX graph as exported
before the fast form ("reference"), the fast export; cells/s, % of the CPU's fp32 peak, seconds
per Sichuan province day and box day, peak RSS; the same on CUDA when a GPU is there.

Figures are printed (medians of a few repeats; the machine may be shared, and the load average
at the start is printed with them). The test asserts behaviour only: every engine gives the same
numbers within 0.001 ppm.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.fast_network import flops_per_cell
from models.onnx_export import export_onnx
from models.onnx_session import CPU_CELLS_PER_BATCH, available_cores, gpu_plausibly_present
from models.resnet_lstm import ResNetLSTM
from models.scaling import Scalers
from models.training import TrainedModel
from models.uncertainty import SpreadModel, SpreadNetwork
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.gridding.geometry import Grid
from tasks.mapping.onnx_runtime import OnnxPredictor
from tasks.regions.boundary import region_mask
from tasks.settings import Region

pytestmark = pytest.mark.slow

REPEATS = 3
CELLS_PER_REPEAT = 8192  # one CPU batch: long enough to time, short enough for the reference graph
GPU_CELLS_PER_REPEAT = 262_144


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Highest resident set size (MB) of this process while the block runs, sampled every 10 ms
    (ru_maxrss cannot be reset between engines)."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak of the cores this process may use: cores x SIMD fp32 lanes (16 with AVX-512F,
    8 with AVX2) x 2 FLOP per FMA x 2 FMA pipes per core (Zen 2-4, Skylake-SP Gold/Platinum and
    later) x clock (lscpu's max MHz, else /proc/cpuinfo's current MHz). Returns (GFLOP/s, how)."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    lanes, isa = (16, "AVX-512F") if "avx512f" in flags else (8, "AVX2+FMA") if "fma" in flags else (4, "SSE")
    mhz, source = None, ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
        if found:
            mhz, source = float(found.group(1)), "lscpu max MHz"
    except (OSError, subprocess.SubprocessError):
        pass
    if mhz is None:
        mhz, source = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M).group(1)), "/proc/cpuinfo cpu MHz"
    cores = available_cores()
    peak = cores * lanes * 2 * 2 * mhz / 1000
    return peak, (f"{cores} cores x {lanes} fp32 lanes ({isa}) x 2 FMA pipes x 2 FLOP x {mhz / 1000:.3f} GHz "
                  f"({source})")


def _cells() -> tuple[int, int, str]:
    """(province day cells, box day cells, where the province count comes from) at 0.01 degree."""
    region = Region()
    grid = Grid.for_region(region, 0.01)
    inside = int(region_mask(region, grid).sum())
    how = "cells inside the shipped boundary" if region.boundary is not None else "the default region has no boundary"
    return inside, grid.n_cells, how


@pytest.fixture(scope="module")
def model():
    """Table 4 at the production feature count with a calibrated-uncertainty head; random weights
    (speed does not depend on them) and BatchNorm statistics away from (0, 1) like a trained net."""
    n = len(FEATURE_NAMES)
    torch.manual_seed(0)
    network = ResNetLSTM(n)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.3, 3)
    rng = np.random.default_rng(0)
    scalers = Scalers(tuple(rng.normal(0, 10, n)), tuple(rng.uniform(0.5, 5, n)), 410.0, 2.5)
    spread = SpreadModel(SpreadNetwork(n, 0.8).eval(), scale=1.2)
    return TrainedModel(network.eval(), scalers, tuple(FEATURE_NAMES), FEATURE_SET_VERSION, [{"val_loss": 1.0}], 1,
                        spread=spread)


def _time(run, X: np.ndarray) -> tuple[float, dict[str, np.ndarray], _PeakRss]:
    run(X[:256])  # warm-up: sessions plan their buffers, torch picks its kernels
    rates = []
    with _PeakRss() as rss:
        for _ in range(REPEATS):
            t = time.perf_counter()
            out = run(X)
            rates.append(len(X) / (time.perf_counter() - t))
    return statistics.median(rates), out, rss


def test_inference_speed_side_by_side(model, tmp_path):
    load = os.getloadavg()[0]
    flops = flops_per_cell(model.model)
    peak, how = cpu_peak_gflops()
    province, box, province_how = _cells()
    X = (np.asarray(model.scalers.feature_mean, np.float32) + np.asarray(model.scalers.feature_std, np.float32)
         * np.random.default_rng(1).normal(size=(CELLS_PER_REPEAT, model.n_features)).astype(np.float32))

    torch.set_num_threads(available_cores())
    deployable = model.deployable_with_uncertainty()

    def torch_eager(rows):
        out = {"xco2": np.empty(len(rows), np.float32), "xco2_uncertainty": np.empty(len(rows), np.float32)}
        with torch.inference_mode():
            for start in range(0, len(rows), CPU_CELLS_PER_BATCH):
                xco2, sigma = deployable(torch.from_numpy(rows[start:start + CPU_CELLS_PER_BATCH]))
                out["xco2"][start:start + len(xco2)] = xco2.numpy()
                out["xco2_uncertainty"][start:start + len(sigma)] = sigma.numpy()
        return out

    engines = {"torch eager": torch_eager}
    for form, label in (("reference", "ONNX as exported before"), ("fast", "ONNX fast export")):
        predictor = OnnxPredictor(export_onnx(model, tmp_path / f"{form}.onnx", form=form), prefer_cuda=False)
        engines[label] = lambda rows, p=predictor: p.run(rows, batch_size=CPU_CELLS_PER_BATCH)

    results = {}
    for label, run in engines.items():
        results[label] = _time(run, X)

    print(f"\n[bench] inference on CPU, {model.n_features} features, {flops / 1e6:.2f} MFLOP/cell (layer shapes), "
          f"fp32 peak {peak:.1f} GFLOP/s = {how}")
    print(f"[bench] machine shared with other jobs: load average {load:.1f} at the start on {os.cpu_count()} CPUs; "
          f"medians of {REPEATS} repeats of {CELLS_PER_REPEAT:,} cells, batches of {CPU_CELLS_PER_BATCH:,}, "
          f"{available_cores()} threads; both outputs (XCO2, uncertainty)")
    print(f"[bench] province day = {province:,} cells ({province_how}); box day = {box:,} cells")
    print(f"[bench] {'engine':<26}{'cells/s':>10}{'% peak':>8}{'s/province day':>16}{'s/box day':>11}"
          f"{'peak RSS MB':>13}{'(+ engine)':>12}")
    for label, (rate, _, rss) in results.items():
        print(f"[bench] {label:<26}{rate:>10,.0f}{100 * rate * flops / 1e9 / peak:>7.1f}%{province / rate:>16,.0f}"
              f"{box / rate:>11,.0f}{rss.peak:>13,.0f}{rss.peak - rss.start:>+12,.0f}")
    fast, eager = results["ONNX fast export"][0], results["torch eager"][0]
    print(f"[bench] fast export / torch eager: {fast / eager:.2f}x (goal >= 1.5x); "
          f"fast / ONNX before: {fast / results['ONNX as exported before'][0]:.2f}x")

    expected = results["torch eager"][1]
    for label, (_, out, _) in results.items():
        for name in ("xco2", "xco2_uncertainty"):
            assert np.abs(out[name].astype(np.float64) - expected[name]).max() <= 1e-3, (label, name)

    _gpu(model, tmp_path, flops, province, box)


def _gpu(model, tmp_path, flops, province, box):
    """The fast export on CUDA with ONNX Runtime (and torch when its build has CUDA)."""
    if not gpu_plausibly_present():
        print("[bench] CUDA: skipped (no NVIDIA GPU or no CUDA build of onnxruntime here)")
        return
    X = np.random.default_rng(2).normal(size=(GPU_CELLS_PER_REPEAT, model.n_features)).astype(np.float32)
    predictor = OnnxPredictor(tmp_path / "fast.onnx", prefer_cuda=True)
    if predictor.device != "cuda":
        print(f"[bench] CUDA: skipped (ONNX Runtime could not start CUDA; runs on {predictor.provider})")
        return
    batch = predictor.cells_per_batch(GPU_CELLS_PER_REPEAT)
    rate, _, rss = _time(lambda rows: predictor.run(rows, batch_size=batch), X)
    print(f"[bench] CUDA ONNX fast export, batch {batch:,}: {rate:,.0f} cells/s = {rate * flops / 1e12:.2f} TFLOP/s; "
          f"province day {province / rate:.1f} s, box day {box / rate:.1f} s; peak RSS {rss.peak:,.0f} MB")
    if torch.cuda.is_available():
        deployable = model.deployable_with_uncertainty().cuda()

        def torch_cuda(rows):
            with torch.inference_mode():
                xco2, sigma = deployable(torch.from_numpy(rows).cuda())
                torch.cuda.synchronize()
                return {"xco2": xco2.cpu().numpy(), "xco2_uncertainty": sigma.cpu().numpy()}

        rate, _, _ = _time(torch_cuda, X[:65536])
        print(f"[bench] CUDA torch eager, batch 65,536: {rate:,.0f} cells/s; province day {province / rate:.1f} s")
    else:
        print("[bench] CUDA torch eager: skipped (this torch build has no CUDA)")
