"""Bilinear interpolation from a north-up RasterGrid to grids or points (edges clamped)."""

from __future__ import annotations

import numpy as np

from demo_world.layout import RasterGrid


def _weights(coord: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.clip(coord, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(f).astype(np.int64), max(n - 2, 0))
    return i0, (f - i0).astype(np.float32)


def _row_col(src: RasterGrid, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ((src.north - np.asarray(lat)) / src.res - 0.5,
            (np.asarray(lon) - src.west) / src.res - 0.5)


def to_grid(values: np.ndarray, src: RasterGrid, lats: np.ndarray, lons: np.ndarray
            ) -> np.ndarray:
    """values (..., src.height, src.width) -> (..., len(lats), len(lons)), separably."""
    fr, fc = _row_col(src, lats, lons)
    r0, wr = _weights(fr, src.height)
    c0, wc = _weights(fc, src.width)
    v = values.astype(np.float32, copy=False)
    if src.width > 1:
        cols = v[..., c0] * (1 - wc) + v[..., np.minimum(c0 + 1, src.width - 1)] * wc
    else:
        cols = np.repeat(v, len(lons), axis=-1)
    if src.height > 1:
        r1 = np.minimum(r0 + 1, src.height - 1)
        return cols[..., r0, :] * (1 - wr)[:, None] + cols[..., r1, :] * wr[:, None]
    return np.repeat(cols, len(lats), axis=-2)


def to_points(values: np.ndarray, src: RasterGrid, lat: np.ndarray, lon: np.ndarray
              ) -> np.ndarray:
    """values (src.height, src.width) at scattered points."""
    fr, fc = _row_col(src, lat, lon)
    r0, wr = _weights(fr, src.height)
    c0, wc = _weights(fc, src.width)
    r1 = np.minimum(r0 + 1, src.height - 1)
    c1 = np.minimum(c0 + 1, src.width - 1)
    top = values[r0, c0] * (1 - wc) + values[r0, c1] * wc
    bottom = values[r1, c0] * (1 - wc) + values[r1, c1] * wc
    return top * (1 - wr) + bottom * wr
