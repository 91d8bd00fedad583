"""Split protocols for validating XCO2 reconstructions: random, spatial-block and temporal-block.

A random split of samples from the same satellite track scores far better than one that holds out
whole areas or whole days (neighbouring soundings share the answer), so all three are reported:

- `random_holdout(n, fraction, seed)`: the paper's single holdout split (models.evaluation's
  random_split); `random_kfold(n, n_folds, seed)`: the same idea as a K-fold cross-validation.
- `spatial_blocks(latitude, longitude, block_km=50, n_folds=5, seed)`: square blocks at least
  `block_km` on a side, each held out whole.
- `temporal_blocks(days, n_folds=5, seed, block_days=1)`: whole days (or runs of `block_days`
  consecutive days) held out together.

Every protocol returns `(train_idx, test_idx)` pairs of sorted int64 index arrays, deterministic
for a seed. The cross-validations test every sample exactly once; `check_folds` verifies that.

Spatial blocks lie on a fixed global grid (anchored at the equator and the antimeridian, not at
the data), so a sample keeps its block from one retrain to the next. Rows of blocks are
`block_km / 110.574` degrees of latitude high (110.574 km is the shortest degree of latitude on
WGS84, at the equator). Within a row, blocks are at least `block_km / (110.574 cos(phi))` degrees
of longitude wide, phi being the row's poleward edge (widened so a whole number of them tiles
the parallel): the narrowest part of a block is still `block_km` wide, on the WGS84 ellipsoid
and on a 6371 km sphere alike. Near the poles a row is one block around the whole parallel. Blocks (and days) go to
folds in a seeded random order, each to the fold with the fewest samples so far, so the folds'
sample counts differ by at most the size of the largest block (the most even of 16 seeded
random assignments is kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np

from models.evaluation import random_split

__all__ = [
    "KM_PER_DEGREE",
    "PROTOCOLS",
    "Fold",
    "Split",
    "check_folds",
    "day_numbers",
    "group_folds",
    "group_holdout",
    "make_split",
    "random_holdout",
    "random_kfold",
    "spatial_block_ids",
    "spatial_blocks",
    "temporal_block_ids",
    "temporal_blocks",
]

Fold = tuple[np.ndarray, np.ndarray]
"""(train_idx, test_idx): sorted, disjoint int64 sample indices."""

# The shortest degree of latitude on WGS84 (at the equator): converting with it never makes a
# block smaller than asked, on the ellipsoid or on a 6371 km sphere (111.195 km per degree).
KM_PER_DEGREE = 110.574

PROTOCOLS = ("random_holdout", "random_kfold", "spatial_blocks", "temporal_blocks")
"""Protocol names known to make_split (and to models.comparison)."""


# --------------------------------------------------------------------------------------------
# Input checks


def _n_folds(n_folds: int) -> int:
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    return int(n_folds)


# A per-sample column as callers hold it: an array, or a list (of degrees, dates, group labels).
Column = np.ndarray | Sequence[Any]


def _coordinates(latitude: Column, longitude: Column) -> tuple[np.ndarray, np.ndarray]:
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    if lat.ndim != 1 or lon.shape != lat.shape:
        raise ValueError(
            f"latitude and longitude must be 1-D and of equal length, got {lat.shape} and "
            f"{lon.shape}"
        )
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        raise ValueError("latitude/longitude hold non-finite values")
    if (np.abs(lat) > 90).any():
        raise ValueError(f"latitude outside [-90, 90]: {lat.min():.3f}..{lat.max():.3f}")
    if (lon < -180).any() or (lon > 360).any():
        raise ValueError(f"longitude outside [-180, 360]: {lon.min():.3f}..{lon.max():.3f}")
    return lat, lon


def day_numbers(days: Column) -> np.ndarray:
    """Days as int64 day numbers since 1970-01-01.

    Accepts datetime.date / datetime objects, numpy datetime64, pandas timestamps, ISO strings,
    or integers (taken as day numbers already)."""
    values = np.asarray(days)
    if values.ndim != 1:
        raise ValueError(f"days must be 1-D, got shape {values.shape}")
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise ValueError("days given as floats must be whole day numbers")
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.datetime64):
        import pandas as pd

        values = pd.to_datetime(values).to_numpy()
    stamped = values.astype("datetime64[D]")
    if np.isnat(stamped).any():
        raise ValueError(f"days hold {int(np.isnat(stamped).sum())} missing values (NaT)")
    return stamped.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Generic group protocols


def _greedy_assignment(
    counts: np.ndarray, n_folds: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Groups in a random order, each to the currently lightest fold: (fold per group, spread)."""
    load = np.zeros(n_folds, dtype=np.int64)
    fold_of_group = np.empty(len(counts), dtype=np.int64)
    for g in rng.permutation(len(counts)):
        lightest = np.flatnonzero(load == load.min())
        fold = int(lightest[rng.integers(len(lightest))]) if len(lightest) > 1 else int(lightest[0])
        fold_of_group[g] = fold
        load[fold] += counts[g]
    return fold_of_group, int(load.max() - load.min())


def group_folds(groups: Column, n_folds: int = 5, seed: int = 0, attempts: int = 16) -> list[Fold]:
    """K folds over whole groups: each group's samples are all tested in one fold.

    Groups go to folds in a seeded random order, each to the fold holding the fewest samples
    so far (ties broken at random), so fold sizes differ by at most the largest group's size;
    of `attempts` such random assignments the one with the most even fold sizes is kept (the
    first of the best, so the result depends only on the seed)."""
    n_folds = _n_folds(n_folds)
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {groups.shape}")
    labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(labels) < n_folds:
        raise ValueError(
            f"{len(labels)} groups cannot fill {n_folds} folds; use fewer folds or smaller "
            "blocks"
        )
    rng = np.random.default_rng(seed)
    best, best_spread = _greedy_assignment(counts, n_folds, rng)
    for _ in range(max(int(attempts), 1) - 1):
        if best_spread <= 1:
            break
        fold_of_group, spread = _greedy_assignment(counts, n_folds, rng)
        if spread < best_spread:
            best, best_spread = fold_of_group, spread
    fold_of_sample = best[inverse.reshape(-1)]
    return [
        (np.flatnonzero(fold_of_sample != k), np.flatnonzero(fold_of_sample == k))
        for k in range(n_folds)
    ]


def group_holdout(groups: Column, fraction: float, seed: int = 0) -> Fold:
    """One split holding out whole groups, about `fraction` of the samples (at least one group).

    Groups are drawn in a seeded random order until the held-out share reaches `fraction`;
    at least one group stays on the training side."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups = np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {groups.shape}")
    labels, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(labels) < 2:
        raise ValueError(f"need at least 2 groups to hold some out, got {len(labels)}")
    order = np.random.default_rng(seed).permutation(len(labels))
    # Smallest prefix of the shuffled groups reaching the wanted share, leaving one group.
    reached = np.cumsum(counts[order]) >= fraction * groups.shape[0]
    n_out = int(np.argmax(reached)) + 1 if reached.any() else len(labels) - 1
    n_out = min(max(n_out, 1), len(labels) - 1)
    held = np.zeros(len(labels), dtype=bool)
    held[order[:n_out]] = True
    test = held[inverse.reshape(-1)]
    return np.flatnonzero(~test), np.flatnonzero(test)


# --------------------------------------------------------------------------------------------
# The protocols


def random_holdout(n: int, fraction: float = 0.2, seed: int = 0) -> Fold:
    """The paper's holdout: `fraction` of the samples, drawn at random, held out once."""
    train, test = random_split(int(n), fraction, seed)
    return train.astype(np.int64), test.astype(np.int64)


def random_kfold(n: int, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """K-fold cross-validation over individual samples in a seeded random order."""
    n_folds = _n_folds(n_folds)
    n = int(n)
    if n < n_folds:
        raise ValueError(f"{n} samples cannot fill {n_folds} folds")
    fold_of_sample = np.empty(n, dtype=np.int64)
    fold_of_sample[np.random.default_rng(seed).permutation(n)] = np.arange(n) % n_folds
    return [
        (np.flatnonzero(fold_of_sample != k), np.flatnonzero(fold_of_sample == k))
        for k in range(n_folds)
    ]


@overload
def spatial_block_ids(
    latitude: Column, longitude: Column, block_km: float = ..., *, return_bounds: Literal[False] = ...
) -> np.ndarray: ...


@overload
def spatial_block_ids(
    latitude: Column, longitude: Column, block_km: float = ..., *, return_bounds: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...


def spatial_block_ids(
    latitude: Column, longitude: Column, block_km: float = 50.0, *, return_bounds: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Block label (0..n_blocks-1) of every sample; see the module doc for the block grid.

    With return_bounds, also [n_blocks, 4] float64 bounds of each block: south, north, west,
    east (degrees; the block, not the samples' extent)."""
    if not block_km > 0:
        raise ValueError(f"block_km must be > 0, got {block_km}")
    lat, lon = _coordinates(latitude, longitude)
    lon = np.where(lon >= 180, lon - 360, lon)
    dlat = block_km / KM_PER_DEGREE
    row = np.floor(lat / dlat).astype(np.int64)
    south, north = row * dlat, (row + 1) * dlat
    poleward = np.minimum(np.maximum(np.abs(south), np.abs(north)), 90.0)
    # A whole number of blocks per parallel, so the columns tile the circle with no sliver at
    # the antimeridian: the narrowest width >= the minimum that divides 360 degrees.
    km_per_deg_lon = KM_PER_DEGREE * np.cos(np.radians(poleward))
    per_circle = np.floor(360.0 * km_per_deg_lon / block_km)
    dlon = 360.0 / np.maximum(per_circle, 1.0)
    col = np.minimum(np.floor((lon + 180.0) / dlon), np.maximum(per_circle, 1.0) - 1)
    col = col.astype(np.int64)
    if row.shape[0] == 0:
        labels = np.zeros(0, dtype=np.int64)
        return (labels, np.zeros((0, 4))) if return_bounds else labels
    # One int64 key per (row, col): rows fit in 21 bits with room, columns in 32.
    _, first, inverse = np.unique((row << 32) + col, return_index=True, return_inverse=True)
    labels = inverse.reshape(-1).astype(np.int64)
    if not return_bounds:
        return labels
    w = col[first] * dlon[first] - 180.0
    bounds = np.stack([south[first], north[first], w, w + dlon[first]], axis=1)
    return labels, bounds


def spatial_blocks(
    latitude: Column,
    longitude: Column,
    block_km: float = 50.0,
    n_folds: int = 5,
    seed: int = 0,
) -> list[Fold]:
    """K-fold cross-validation over square spatial blocks >= `block_km` on a side."""
    return group_folds(spatial_block_ids(latitude, longitude, block_km), n_folds, seed)


def temporal_block_ids(days: Column, block_days: int = 1) -> np.ndarray:
    """Block label of every sample: its day, or its run of `block_days` consecutive days
    (runs counted from 1970-01-01, so they do not depend on the data)."""
    if int(block_days) != block_days or block_days < 1:
        raise ValueError(f"block_days must be an integer >= 1, got {block_days!r}")
    return np.floor_divide(day_numbers(days), int(block_days))


def temporal_blocks(
    days: Column, n_folds: int = 5, seed: int = 0, block_days: int = 1
) -> list[Fold]:
    """K-fold cross-validation over whole days (or runs of `block_days` consecutive days)."""
    return group_folds(temporal_block_ids(days, block_days), n_folds, seed)


def check_folds(folds: Sequence[Fold], n: int, groups: Column | None = None,
                exhaustive: bool = True) -> None:
    """Raise ValueError unless the folds are sound: indices in range, sorted and unique, no
    sample on both sides of a fold, no group (block/day) split across a fold's train and test,
    and (exhaustive) every sample tested exactly once across the folds."""
    tested = np.zeros(int(n), dtype=np.int64)
    labels = None if groups is None else np.asarray(groups)
    for k, (train, test) in enumerate(folds):
        for name, idx in (("train", train), ("test", test)):
            idx = np.asarray(idx)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"fold {k}: {name} indices outside 0..{n - 1}")
            if idx.size > 1 and (np.diff(idx) <= 0).any():
                raise ValueError(f"fold {k}: {name} indices not sorted and unique")
        if len(test) == 0 or len(train) == 0:
            raise ValueError(f"fold {k}: empty train or test side")
        if np.intersect1d(train, test).size:
            raise ValueError(f"fold {k}: samples on both the train and the test side")
        if labels is not None:
            split_groups = np.intersect1d(labels[train], labels[test])
            if split_groups.size:
                raise ValueError(
                    f"fold {k}: {split_groups.size} groups on both sides, e.g. {split_groups[:3]}"
                )
        tested[test] += 1
    if exhaustive and not (tested == 1).all():
        raise ValueError(
            f"{int((tested == 0).sum())} samples never tested, "
            f"{int((tested > 1).sum())} tested more than once"
        )


# --------------------------------------------------------------------------------------------
# By name


@dataclass(frozen=True)
class Split:
    """A protocol's folds, the group label of every sample (for inner validation splits that
    respect the same grouping) and the parameters that made them."""

    protocol: str
    folds: list[Fold]
    groups: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cross_validated(self) -> bool:
        """True when every sample is tested exactly once (all but random_holdout)."""
        return self.protocol != "random_holdout"


def make_split(
    protocol: str,
    *,
    n: int | None = None,
    latitude: Column | None = None,
    longitude: Column | None = None,
    days: Column | None = None,
    seed: int = 0,
    n_folds: int = 5,
    block_km: float = 50.0,
    holdout_fraction: float = 0.2,
    block_days: int = 1,
) -> Split:
    """The folds of a protocol by name (see PROTOCOLS); checked with check_folds."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if n is None:
        for values in (latitude, days):
            if values is not None:
                n = len(values)
                break
        else:
            raise ValueError("give n, latitude/longitude or days")
    if protocol == "random_holdout":
        folds = [random_holdout(n, holdout_fraction, seed)]
        groups = np.arange(n)
        params = {"holdout_fraction": holdout_fraction}
    elif protocol == "random_kfold":
        folds = random_kfold(n, n_folds, seed)
        groups = np.arange(n)
        params = {"n_folds": n_folds}
    elif protocol == "spatial_blocks":
        if latitude is None or longitude is None:
            raise ValueError("spatial_blocks needs latitude and longitude")
        groups = spatial_block_ids(latitude, longitude, block_km)
        folds = group_folds(groups, n_folds, seed)
        params = {"n_folds": n_folds, "block_km": block_km,
                  "n_blocks": int(groups.max()) + 1 if groups.size else 0}
    else:
        if days is None:
            raise ValueError("temporal_blocks needs days")
        groups = temporal_block_ids(days, block_days)
        folds = group_folds(groups, n_folds, seed)
        params = {"n_folds": n_folds, "block_days": block_days,
                  "n_blocks": int(np.unique(groups).size)}
    if len(groups) != n:
        raise ValueError(f"{protocol}: {len(groups)} coordinates/days for {n} samples")
    check_folds(folds, n, groups, exhaustive=protocol != "random_holdout")
    return Split(protocol=protocol, folds=folds, groups=groups, params=params)
