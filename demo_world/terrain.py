"""Synthetic elevation: generic fractal relief anywhere, with a Sichuan-like template built in.

Around 92-108E 26-34N the template gives what the paper describes: a plateau of ~3500-4500 m in
the west ending at a steep escarpment near 103E, a basin of ~300-600 m around 104-107E
28.5-31.5N, and mountains in the south-west. Outside it, the template weights fade to zero and
the generic relief remains, so any bounding box on Earth has plausible terrain.
"""

from __future__ import annotations

import numpy as np

from demo_world.noise import Sampler, stream_key


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def plateau_weight(s: Sampler, seed: int) -> np.ndarray:
    """1 on the (Tibet-like) plateau, 0 off it; the eastern edge wanders around 103E."""
    wobble = 0.35 * s.noise(1.5, stream_key(seed, "terrain.edge")) + 0.15 * s.noise(
        0.4, stream_key(seed, "terrain.edge2"))
    # The edge runs SW-NE like the Longmen Shan: ~102.9E at 30N, ~105E at 33N.
    edge = 102.9 + 0.7 * np.clip(s.lat - 30.0, 0.0, 4.5) + wobble
    w = _sigmoid((edge - s.lon) / 0.12)
    w = w * _sigmoid((s.lat - 27.6) / 0.5) * _sigmoid((38.0 - s.lat) / 0.8)
    return (w * _sigmoid((s.lon - 80.0) / 1.5)).astype(np.float32)


def basin_weight(s: Sampler) -> np.ndarray:
    """1 on the floor of the (Sichuan-like) basin, fading over its rim."""
    # A rhombus-like floor elongated SW-NE (Yibin to Guangyuan), Chengdu on its western side.
    dx = s.lon - 105.5
    dy = s.lat - 30.25
    along = dx * 0.819 + dy * 0.574
    across = -dx * 0.574 + dy * 0.819
    r2 = (along / 2.4) ** 2 + (across / 1.6) ** 2
    return np.exp(-(r2 ** 3)).astype(np.float32)


def southwest_mountains_weight(s: Sampler) -> np.ndarray:
    w = _sigmoid((s.lat - 23.0) / 0.6) * _sigmoid((28.6 - s.lat) / 0.4)
    return (w * _sigmoid((s.lon - 91.0) / 0.6) * _sigmoid((103.9 - s.lon) / 0.35)).astype(
        np.float32)


def macro_elevation_m(s: Sampler, seed: int) -> np.ndarray:
    """The large-scale relief (features wider than ~20 km), smooth enough for coarse grids."""
    generic = 650.0 + 900.0 * s.fractal(6.0, 0.75, 0.6, stream_key(seed, "terrain.generic"))
    generic = np.maximum(generic, 20.0)
    mountains = 2300.0 + 700.0 * s.fractal(1.2, 0.3, 0.6, stream_key(seed, "terrain.sw"))
    plateau = 4050.0 + 450.0 * s.fractal(2.0, 0.25, 0.6, stream_key(seed, "terrain.plateau"))
    floor = 430.0 + 110.0 * s.fractal(0.8, 0.2, 0.6, stream_key(seed, "terrain.basin"))
    m = southwest_mountains_weight(s)
    p = plateau_weight(s, seed)
    b = basin_weight(s)
    z = generic * (1 - m) + mountains * m
    z = z * (1 - p) + plateau * p
    z = z * (1 - b) + floor * b
    return z.astype(np.float32)


def ruggedness_m(s: Sampler, seed: int, macro: np.ndarray) -> np.ndarray:
    """Amplitude of the fine relief: large on the escarpment and in mountains, small on the
    basin floor."""
    p = plateau_weight(s, seed)
    escarpment = 4.0 * p * (1.0 - p)
    b = basin_weight(s)
    high = np.clip((macro - 800.0) / 2000.0, 0.0, 1.0)
    r = 100.0 + 420.0 * high + 900.0 * escarpment
    return (r * (1.0 - 0.8 * b)).astype(np.float32)


def elevation_m(s: Sampler, seed: int) -> np.ndarray:
    """Metres above sea level, >= 0; octaves finer than the sampler resolution are omitted so a
    coarse raster approximates the area mean of a fine one."""
    macro = macro_elevation_m(s, seed)
    detail = s.fractal(0.32, 0.005, 0.62, stream_key(seed, "terrain.detail"))
    # Ridges: folding the noise gives sharp crests and V-shaped valleys in the mountains.
    ridged = 1.0 - 2.0 * np.abs(s.fractal(0.5, 0.02, 0.55, stream_key(seed, "terrain.ridge")))
    z = macro + ruggedness_m(s, seed, macro) * (2.2 * detail + 0.5 * ridged)
    return np.maximum(z, 0.0).astype(np.float32)
