"""The reliability diagram's arithmetic and figure (tasks/analysis/reliability.py, issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.analysis import reliability as rel


def test_a_calibrated_sigma_covers_each_level_nominally():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 3.0, 40_000)  # each value its own sigma, the half-width knows it
    error = rng.normal(0, sigma)
    observed, n = rel.coverage_at_levels(error, sigma * rel.Z68)
    assert n == error.size
    for level, got in zip(rel.LEVELS, observed):
        assert got == pytest.approx(level, abs=0.01)


def test_a_too_narrow_interval_undercovers_at_every_level_and_weights_count():
    rng = np.random.default_rng(1)
    error = rng.normal(0, 2.0, 40_000)
    observed, _ = rel.coverage_at_levels(error, np.full(error.size, 1.0))  # sigma 1 for errors of sd 2
    assert all(got < level - 0.1 for level, got in zip(rel.LEVELS, observed))
    # Weights: values with zero weight, NaN errors and NaN half-widths do not count.
    error = np.array([0.1, 5.0, np.nan, 0.1])
    half = np.array([1.0, 1.0, 1.0, np.nan])
    (c50, c68, c90, c95), n = rel.coverage_at_levels(error, half, np.array([3.0, 1.0, 1.0, 1.0]))
    assert n == 2 and c68 == pytest.approx(0.75) and c95 == pytest.approx(0.75)
    assert rel.coverage_at_levels(np.array([np.nan]), np.array([1.0]))[1] == 0


def test_widening_by_the_noise_restores_a_true_column_interval_against_retrievals():
    rng = np.random.default_rng(2)
    truth_sd, noise_sd = 1.0, 1.5
    error = rng.normal(0, truth_sd, 40_000) + rng.normal(0, noise_sd, 40_000)  # map - retrieval
    true_column = np.full(error.size, truth_sd * rel.Z68)
    narrow = rel.reliability("true column alone", error, true_column)
    widened = rel.reliability("widened", error, rel.combined_half_width(true_column, noise_sd ** 2))
    assert narrow.observed[1] < 0.45
    assert widened.observed == pytest.approx(rel.LEVELS, abs=0.015)


def test_z_and_labels():
    assert rel.z_of(0.6827) == pytest.approx(1.0, abs=1e-3)
    assert rel.z_of(0.95) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        rel.z_of(1.0)
    assert rel.level_label(0.6827) == "68 %"


def test_the_table_and_the_figure(tmp_path):
    curves = [rel.Reliability("retrieval interval, whole days", rel.LEVELS, (0.5, 0.7, 0.88, 0.93), 120),
              rel.Reliability("true column", rel.LEVELS, (np.nan,) * 4, 0)]
    table = rel.markdown_table(curves)
    assert "| retrieval interval, whole days | 50.0% | 70.0% | 88.0% | 93.0% | 120 |" in table
    assert "| true column |  |  |  |  | 0 |" in table
    assert table == rel.markdown_rows([c.to_dict() for c in curves])
    path = rel.reliability_figure(curves, tmp_path / "out" / "reliability.png", "test", note="a note")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["reliability.png"]  # no temp file left
    empty = rel.reliability_figure([], tmp_path / "empty.png", "nothing")
    assert empty.stat().st_size > 0


def _days_with_level_errors(n_days: int, cells: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Errors that share a level per day (sd 1) plus a cell part (sd 0.3), a calibrated 68 % half-width."""
    rng = np.random.default_rng(seed)
    day = np.repeat(np.arange(n_days), cells)
    error = rng.normal(0, 1.0, n_days)[day] + rng.normal(0, 0.3, day.size)
    return error, np.full(day.size, np.hypot(1.0, 0.3) * rel.Z68), day


def test_the_chance_range_counts_days_not_cells():
    # 6 days of 800 cells: the coverage is nearly a day's 0 or 1, six draws; 60 days: much tighter.
    error, half, day = _days_with_level_errors(6, 800, 3)
    few = rel.coverage_range(np.abs(error) <= half, day)
    assert few.groups == 6 and few.unit == "days"
    assert few.high - few.low > 0.4  # what one table of 6 days cannot tell apart
    error, half, day = _days_with_level_errors(60, 80, 4)
    many = rel.coverage_range(np.abs(error) <= half, day)
    assert many.high - many.low < 0.3
    assert many.low <= float(np.mean(np.abs(error) <= half)) <= many.high
    # The same cells treated as independent would give a range a tenth as wide: the days are the unit.
    cells = rel.coverage_range(np.abs(error) <= half, np.arange(error.size))
    assert cells.high - cells.low < (many.high - many.low) / 2
    # Over repeated worlds a calibrated interval's coverage falls inside its range about 90 % of the time.
    inside = 0
    for seed in range(40):
        error, half, day = _days_with_level_errors(30, 50, 100 + seed)
        r = rel.coverage_range(np.abs(error) <= half, day, resamples=500, seed=seed)
        inside += r.low <= 0.6827 <= r.high
    assert inside >= 30


def test_the_chance_range_with_weights_one_group_and_bad_lengths():
    hits = np.array([1.0, 0.0, 1.0, 1.0])
    r = rel.coverage_range(hits, np.array([0, 0, 1, 1]), np.array([1.0, 3.0, 1.0, 1.0]), unit="blocks")
    assert r.groups == 2 and r.unit == "blocks"
    assert 0.25 - 1e-9 <= r.low <= r.high <= 1.0 + 1e-9  # group 0 covers 1/4 by weight, group 1 all
    one = rel.coverage_range(hits, np.zeros(4))
    assert one.groups == 1 and np.isnan(one.low) and "too few" in one.reading()
    assert one.to_dict() == {"low": None, "high": None, "groups": 1, "unit": "days"}
    assert rel.CoverageRange.from_dict(r.to_dict()).reading() == rel.CoverageRange.from_dict(
        {"low": round(r.low, 4), "high": round(r.high, 4), "groups": 2, "unit": "blocks"}).reading()
    assert "too few" in rel.CoverageRange.from_dict(one.to_dict()).reading()
    with pytest.raises(ValueError, match="4 hits, 3 groups"):
        rel.coverage_range(hits, np.zeros(3))


def test_a_reliability_with_groups_carries_the_range():
    error, half, day = _days_with_level_errors(12, 100, 5)
    curve = rel.reliability("true column vs truth, whole days", error, half, groups=day)
    assert curve.range68 is not None and curve.range68.groups == 12
    d = curve.to_dict()
    assert d["range68"]["groups"] == 12 and d["range68"]["low"] <= d["coverage"]["68 %"] <= d["range68"]["high"]
    assert "range68" not in rel.reliability("no groups", error, half).to_dict()
    assert "12 days:" in curve.range68.reading()
