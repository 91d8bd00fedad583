"""Benchmarks (`make bench`): print throughput and memory figures; they assert behaviour only.

Targets they inform: gridding a day of soundings well under a second; a day's COG in under 2 s.
Inference speed (torch, ONNX before and after the fast export, CPU and CUDA): test_inference_speed.py.
"""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pytest
import torch

from models.training import TrainingConfig, train_resnet_lstm
from tasks.archive import write_day_cog
from demo_world.fixtures import tiny_soundings
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION
from tasks.gridding.geometry import Grid
from tasks.gridding.cells import grid_soundings
from tasks.settings import Region
from tasks.gridding.soundings import usable_soundings

pytestmark = pytest.mark.slow
SICHUAN = Grid.for_region(Region(), 0.01)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2048, len(FEATURE_NAMES))).astype(np.float32)
    y = 410 + X[:, 0] + rng.normal(0, 0.3, 2048)
    return train_resnet_lstm(X[:1536], y[:1536], X[1536:], y[1536:], list(FEATURE_NAMES), FEATURE_SET_VERSION,
                             TrainingConfig(max_epochs=1))


def test_training_throughput(trained):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8192, len(FEATURE_NAMES))).astype(np.float32)
    y = 410 + rng.normal(size=8192)
    t = time.perf_counter()
    train_resnet_lstm(X, y, X[:1024], y[:1024], list(FEATURE_NAMES), FEATURE_SET_VERSION, TrainingConfig(max_epochs=1))
    dt = time.perf_counter() - t
    print(f"\n[bench] training: {8192 / dt:,.0f} samples/s per epoch (batch 1024, {torch.get_num_threads()} threads)")


def test_gridding_throughput():
    frames = [tiny_soundings("oco2", date(2020, 6, 1), n=2000, seed=s, center=(27 + s * 0.5, 95 + s)) for s in range(10)]
    import pandas as pd

    soundings = usable_soundings(pd.concat(frames, ignore_index=True), SICHUAN)
    t = time.perf_counter()
    cells = grid_soundings(soundings, SICHUAN)
    dt = time.perf_counter() - t
    assert len(cells) > len(soundings) // 2
    print(f"\n[bench] gridding {len(soundings):,} OCO soundings -> {len(cells):,} cells in {dt * 1000:.0f} ms")


def test_cog_write_time(tmp_path):
    xco2 = (410 + np.random.default_rng(3).normal(size=SICHUAN.shape)).astype(np.float32)
    t = time.perf_counter()
    path = write_day_cog(tmp_path / "day.tif", xco2, SICHUAN, {"units": "ppm"})
    dt = time.perf_counter() - t
    print(f"\n[bench] COG for a Sichuan day: {dt:.2f} s, {path.stat().st_size / 1e6:.1f} MB")
