"""Split protocols: random holdout/K-fold, spatial blocks (>= 50 km), temporal blocks (whole days)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from models.validation import (
    PROTOCOLS,
    check_folds,
    day_numbers,
    group_folds,
    group_holdout,
    make_split,
    random_holdout,
    random_kfold,
    spatial_block_ids,
    spatial_blocks,
    temporal_block_ids,
    temporal_blocks,
)

N = 3000


@pytest.fixture(scope="module")
def samples():
    """3000 samples on a 2 x 2 degree box (30-32 N, 103-105 E) over 20 days."""
    rng = np.random.default_rng(7)
    lat = rng.uniform(30, 32, N)
    lon = rng.uniform(103, 105, N)
    days = np.datetime64("2020-06-01") + rng.integers(0, 20, N).astype("timedelta64[D]")
    return lat, lon, days


def haversine_km(lat1, lon1, lat2, lon2, radius=6371.0):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * radius * np.arcsin(np.sqrt(a))


def assert_partition(folds, n, groups=None):
    tested = np.zeros(n, dtype=int)
    for train, test in folds:
        assert np.intersect1d(train, test).size == 0
        assert len(train) + len(test) == n
        if groups is not None:
            assert np.intersect1d(groups[train], groups[test]).size == 0
        tested[test] += 1
    assert (tested == 1).all()


def test_random_holdout_is_disjoint_complete_and_seeded():
    train, test = random_holdout(N, 0.2, seed=3)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(N))
    assert len(test) == 600
    again = random_holdout(N, 0.2, seed=3)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(random_holdout(N, 0.2, seed=4)[1], test)


def test_random_kfold_tests_every_sample_once():
    folds = random_kfold(N, 5, seed=1)
    assert len(folds) == 5
    assert_partition(folds, N)
    assert {len(t) for _, t in folds} == {600}


def test_spatial_blocks_hold_out_whole_blocks_of_at_least_50_km(samples):
    lat, lon, _ = samples
    ids, bounds = spatial_block_ids(lat, lon, 50, return_bounds=True)
    folds = spatial_blocks(lat, lon, block_km=50, n_folds=5, seed=11)
    assert len(folds) == 5
    assert_partition(folds, N, ids)
    check_folds(folds, N, ids)
    # Every sample lies inside its block.
    s, n, w, e = bounds[ids].T
    assert ((lat >= s) & (lat < n) & (lon >= w) & (lon < e)).all()
    # Each block is >= 50 km on a side, measured on a sphere independently of the conversion;
    # east-west at the poleward edge, where the block is narrowest.
    south, north, west, east = bounds.T
    assert (haversine_km(south, west, north, west) >= 50).all()
    poleward = np.where(np.abs(north) > np.abs(south), north, south)
    assert (haversine_km(poleward, west, poleward, east) >= 50).all()
    # Blocks are not much larger than asked (a 2 x 2 degree box holds ~20 of them).
    assert 12 <= len(bounds) <= 30
    # Balanced: fold sizes differ by at most the largest block.
    sizes = np.array([len(t) for _, t in folds])
    assert sizes.max() - sizes.min() <= np.bincount(ids).max()


def test_spatial_blocks_are_seeded_and_bigger_blocks_are_fewer(samples):
    lat, lon, _ = samples
    a = spatial_blocks(lat, lon, 50, 5, seed=2)
    b = spatial_blocks(lat, lon, 50, 5, seed=2)
    c = spatial_blocks(lat, lon, 50, 5, seed=3)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))
    assert spatial_block_ids(lat, lon, 100).max() < spatial_block_ids(lat, lon, 50).max()
    with pytest.raises(ValueError, match="groups cannot fill"):
        spatial_blocks(lat, lon, block_km=500, n_folds=5)


def test_spatial_blocks_tile_the_antimeridian_without_slivers():
    lat = np.array([60.1, 60.1, 60.1, 0.1])
    lon = np.array([179.99, -179.99, 359.0, 180.0])
    ids, bounds = spatial_block_ids(lat, lon, 50, return_bounds=True)
    width = haversine_km(bounds[:, 1], bounds[:, 2], bounds[:, 1], bounds[:, 3])
    assert (width >= 50).all()
    assert ids[3] != ids[0]


def test_temporal_blocks_hold_out_whole_days(samples):
    _, _, days = samples
    folds = temporal_blocks(days, n_folds=5, seed=5)
    day_ids = temporal_block_ids(days)
    assert_partition(folds, N, day_ids)
    # 20 days in 5 folds: each fold holds out whole days, about 4 of them.
    assert all(1 <= np.unique(day_ids[t]).size <= 7 for _, t in folds)
    sizes = np.array([len(t) for _, t in folds])
    assert sizes.max() - sizes.min() <= np.bincount(day_ids - day_ids.min()).max()
    again = temporal_blocks(days, n_folds=5, seed=5)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(folds, again))


def test_temporal_blocks_of_several_days_and_day_formats():
    first = date(2021, 3, 1)
    as_dates = np.array([first + timedelta(days=i % 12) for i in range(120)], dtype=object)
    numbers = day_numbers(as_dates)
    assert np.array_equal(numbers, day_numbers(as_dates.astype("datetime64[D]")))
    assert np.array_equal(numbers, day_numbers([d.isoformat() for d in as_dates]))
    assert np.array_equal(numbers, day_numbers(numbers))
    folds = temporal_blocks(as_dates, n_folds=2, seed=0, block_days=3)
    runs = temporal_block_ids(as_dates, 3)
    assert_partition(folds, 120, runs)
    assert np.unique(runs).size in (4, 5)  # 12 consecutive days in runs of 3
    # No consecutive-day run is split: a run's days are all on one side.
    for _, test in folds:
        assert np.isin(runs, runs[test]).sum() == len(test)


def test_group_holdout_keeps_groups_whole():
    groups = np.repeat(np.arange(10), 30)
    train, test = group_holdout(groups, 0.25, seed=1)
    assert np.intersect1d(groups[train], groups[test]).size == 0
    assert len(train) + len(test) == 300
    assert 60 <= len(test) <= 90
    assert len(group_folds(groups, 3, seed=0)) == 3


def test_make_split_by_name(samples):
    lat, lon, days = samples
    for protocol in PROTOCOLS:
        split = make_split(protocol, latitude=lat, longitude=lon, days=days, seed=1)
        assert len(split.groups) == N
        assert split.cross_validated == (protocol != "random_holdout")
        assert len(split.folds) == (1 if protocol == "random_holdout" else 5)
    with pytest.raises(ValueError, match="unknown protocol"):
        make_split("leave_one_out", n=10)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        spatial_blocks(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        spatial_blocks(np.array([np.nan, 1.0]), np.zeros(2))
    with pytest.raises(ValueError, match="n_folds"):
        random_kfold(10, 1)
    with pytest.raises(ValueError, match="tested more than once"):
        check_folds([(np.array([1]), np.array([0])), (np.array([1]), np.array([0]))], 2)
    with pytest.raises(ValueError, match="groups on both sides"):
        check_folds([(np.array([0]), np.array([1]))], 2, groups=np.array([7, 7]),
                    exhaustive=False)
