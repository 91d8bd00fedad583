"""The daily anomaly of one mapped day: the observations around it, as a field added to the model's map.

The champion's graph gives background + network anomaly; what the fused observations of the days
around the mapped day say beyond it is kriged into a field (models/residual_field.py, parameters
fitted at the champion's retrain) and added, and its variance widens or narrows the interval.
This replaces the single offset of tasks/mapping/anchoring.py for champions that carry a field.

Residuals need the model's prediction at every observed cell of up to ±60 days; they depend only on
the champion and the day's samples, so each day's super-observations are cached per champion
version (`<region_dir>/residuals/v<version>/<day>.parquet`, written atomically; a day whose samples
changed since is recomputed: the cache records the sample file's size and mtime).

Each map also gets a leave-its-own-day-out score: the day's own super-observations predicted from
the other days of the window (RMSE, bias, N), so an operator sees how each archived map did against
the observations it was not allowed to see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.background import Background
from models.residual_field import (ResidualField, Superobs, day_number, interval_half_width,
                                   predict_map_with_background, predict_points, superobs, true_column_half_width,
                                   window)
from tasks.io.atomic import atomic_path
from tasks.gridding.geometry import Grid
from tasks.samples.store import day_file, read_samples, stored_days

log = logging.getLogger(__name__)
COLUMNS = ("lon", "lat", "day", "residual", "weight")


@dataclass(frozen=True)
class DailyAnomaly:
    """The field added to one day's map, its 68% half-width, and the day's own check."""

    mean: np.ndarray  # [ny, nx] ppm, NaN outside the region's boundary
    half_width: np.ndarray  # [ny, nx] ppm: the map's 68% interval for a retrieval at the cell
    # [ny, nx] ppm: the 68% interval of the true column at the cell (no retrieval noise); None when
    # the champion predates its calibration (models/residual_field.py::true_column_half_width)
    true_column_half_width: np.ndarray | None
    n_superobs: int
    window_start: date
    window_end: date
    own_day_n: int
    own_day_rmse_ppm: float
    own_day_bias_ppm: float

    def to_tags(self) -> dict[str, str]:
        return {
            "daily_anomaly": "kriged residuals of the fused observations around the day (models/residual_field.py)",
            "daily_anomaly_superobs": str(self.n_superobs),
            "daily_anomaly_window": f"{self.window_start.isoformat()}/{self.window_end.isoformat()}",
            "own_day_superobs": str(self.own_day_n),
            "own_day_rmse_ppm": f"{self.own_day_rmse_ppm:.4f}" if self.own_day_n else "nan",
            "own_day_bias_ppm": f"{self.own_day_bias_ppm:.4f}" if self.own_day_n else "nan",
        }


def field_of(mapping: dict | None) -> ResidualField | None:
    if not mapping or not mapping.get("residual_field"):
        return None
    return ResidualField.from_dict(mapping["residual_field"])


def background_of(mapping: dict | None) -> Background | None:
    """The champion's background (its coefficients' covariance, when kept, widens the true column's
    interval away from the observations and past the training window)."""
    if not mapping or not mapping.get("background"):
        return None
    return Background.from_dict(mapping["background"])


def _cache_file(region_dir: Path, version: int | str, day: date) -> Path:
    return region_dir / "residuals" / f"v{version}" / f"{day.isoformat()}.parquet"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def day_superobs(region_dir: Path, version: int | str, day: date, predict: Callable[[np.ndarray], np.ndarray],
                 feature_names: tuple[str, ...] | list[str], field: ResidualField, max_cells: int) -> Superobs:
    """The day's super-observations of the residual (observed - model), from the cache when current."""
    source = day_file(region_dir, day)
    cache = _cache_file(region_dir, version, day)
    stamp = _stamp(source)
    if cache.is_file():
        try:
            table = pq.read_table(cache)
            meta = json.loads((table.schema.metadata or {}).get(b"xco2", b"{}"))
            if meta.get("samples") == stamp:
                return Superobs(*(table[c].to_numpy().astype(np.float64) for c in COLUMNS))
        except (OSError, ValueError, pa.ArrowException) as exc:  # a damaged cache is only a cache: recompute it
            log.warning("%s: unreadable residual cache (%s); recomputing", cache, exc)
    frame = read_samples(region_dir, day, day)
    if len(frame) > max_cells:
        keep = np.sort(np.random.default_rng(day.toordinal()).choice(len(frame), max_cells, replace=False))
        frame = frame.iloc[keep]
    if frame.empty:
        obs = superobs(np.empty(0), np.empty(0), np.empty(0, dtype="datetime64[D]"), np.empty(0), None, field.superob_deg)
    else:
        predicted = predict(frame[list(feature_names)].to_numpy(np.float32))
        residual = frame["xco2"].to_numpy(np.float64) - predicted
        weight = frame["weight"].to_numpy(np.float64) if "weight" in frame else np.ones(len(frame))
        obs = superobs(frame["longitude"].to_numpy(), frame["latitude"].to_numpy(), frame["day"].to_numpy(), residual,
                       weight, field.superob_deg, field.clip_ppm)
    table = pa.table({c: getattr(obs, c) for c in COLUMNS}).replace_schema_metadata(
        {b"xco2": json.dumps({"samples": stamp}).encode()})
    with atomic_path(cache, verify=lambda tmp: pq.read_table(tmp)) as tmp:
        pq.write_table(table, tmp)
    return obs


def window_superobs(region_dir: Path, version: int | str, day: date, predict: Callable[[np.ndarray], np.ndarray],
                    feature_names: tuple[str, ...] | list[str], field: ResidualField, max_cells: int) -> Superobs:
    first, last = day - timedelta(days=field.window_days), day + timedelta(days=field.window_days)
    parts = [day_superobs(region_dir, version, d, predict, feature_names, field, max_cells)
             for d in stored_days(region_dir) if first <= d <= last]
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = np.empty(0)
        return Superobs(empty, empty, empty, empty, empty)
    return Superobs(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))


def daily_anomaly(region_dir: Path, version: int | str, grid: Grid, day: date,
                  predict: Callable[[np.ndarray], np.ndarray], feature_names: tuple[str, ...] | list[str],
                  field: ResidualField, max_cells: int, inside: np.ndarray | None = None,
                  background: Background | None = None) -> DailyAnomaly:
    """The field for `day` on the grid, its half-widths and the day's leave-own-day-out score.
    background: the champion's (background_of), for the true column's interval."""
    obs = window_superobs(region_dir, version, day, predict, feature_names, field, max_cells)
    lat0 = float(np.mean(grid.lats))
    t = float(day_number(np.array([day], dtype="datetime64[D]"))[0])
    mean, variance, background_variance = predict_map_with_background(field, obs, lat0, grid.lons, grid.lats, t,
                                                                      background, inside)
    true_half = true_column_half_width(field, variance, background_variance)
    own = window(obs, t, 0)
    n, rmse, bias = len(own), float("nan"), float("nan")
    if n:
        others = obs.subset(np.flatnonzero(obs.day != t))
        m, _ = predict_points(field, others, lat0, own.lon, own.lat, own.day)
        error = m - own.residual
        rmse, bias = float(np.sqrt(np.mean(error ** 2))), float(np.mean(error))
    return DailyAnomaly(mean, interval_half_width(field, variance).astype(np.float32),
                        true_half.astype(np.float32) if true_half is not None else None, len(obs),
                        day - timedelta(days=field.window_days), day + timedelta(days=field.window_days), n, rmse, bias)
