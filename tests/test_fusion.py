"""Steps 1-2 of the paper's fusion on small hand-built cell tables."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.fusion.merge import (
    FUSED_COLUMNS,
    GosatFit,
    collocations,
    fit_gosat_to_oco,
    fuse_day,
    merge_oco,
)

FUSED_DTYPES = ["int64", "float64", "float64", "int32", "float64", "str", "str"]


def cells(cell, xco2, sigma=0.5, n=1, weight=0.25) -> pd.DataFrame:
    k = len(cell)
    return pd.DataFrame({
        "cell": np.asarray(cell, dtype=np.int64),
        "xco2": np.asarray(xco2, dtype=np.float64) * np.ones(k),
        "xco2_uncertainty": np.asarray(sigma, dtype=np.float64) * np.ones(k),
        "n_soundings": (np.asarray(n) * np.ones(k)).astype(np.int32),
        "weight": np.asarray(weight, dtype=np.float64) * np.ones(k),
    })


def footprints(soundings: dict[int, tuple[list[int], float]], sigma=1.5) -> pd.DataFrame:
    """GOSAT footprints {sounding: (cells, xco2)}: each cell holds 1 / (the sounding's cells)."""
    rows = [(s, c, x, sigma, 1.0 / len(cs)) for s, (cs, x) in soundings.items() for c in cs]
    return pd.DataFrame(rows, columns=["sounding", "cell", "xco2", "xco2_uncertainty", "weight"])


def test_merge_oco_averages_where_both_observe():
    oco2 = cells([1, 2, 5], [400.0, 402.0, 404.0], sigma=0.6, n=2)
    oco3 = cells([2, 3], [406.0, 408.0], sigma=0.8, n=3)
    out = merge_oco(oco2, oco3)
    assert list(out.columns) == FUSED_COLUMNS
    assert out.dtypes.astype(str).tolist() == FUSED_DTYPES
    assert out["cell"].tolist() == [1, 2, 3, 5]
    assert out["source"].tolist() == ["oco2", "oco2+oco3", "oco3", "oco2"]
    assert out["xco2"].tolist() == pytest.approx([400.0, 404.0, 408.0, 404.0])
    assert out["xco2_uncertainty"].tolist() == pytest.approx([0.6, 0.5, 0.8, 0.6])
    assert out["n_soundings"].tolist() == [2, 5, 3, 2]
    assert out["weight"].tolist() == pytest.approx([0.25, 0.5, 0.25, 0.25])  # different soundings add
    assert set(out["fit_id"]) == {""}


def test_merge_oco_with_an_empty_side():
    oco2 = cells([4, 1], [400.0, 401.0])
    only2 = merge_oco(oco2, cells([], []))
    assert only2["cell"].tolist() == [1, 4] and set(only2["source"]) == {"oco2"}
    only3 = merge_oco(None, oco2)
    assert set(only3["source"]) == {"oco3"}
    nothing = merge_oco(cells([], []), None)
    assert len(nothing) == 0 and list(nothing.columns) == FUSED_COLUMNS
    assert nothing.dtypes.astype(str).tolist() == FUSED_DTYPES


def test_merge_oco_refuses_duplicate_cells():
    with pytest.raises(ValueError, match="duplicate"):
        merge_oco(cells([1, 1], [400.0, 401.0]), None)


def test_a_sounding_collocates_with_the_days_oco_cells_nearby():
    """With the grid, OCO cells within the radius of a footprint count (each once per sounding);
    beyond it, or on another day, none; at radius 0 only the cells inside, as without the grid."""
    from tasks.gridding.geometry import Grid

    grid = Grid(west=104.0, south=30.0, east=106.0, north=32.0, step=0.01)
    at = lambda row, col: int(grid.cell_id(row, col))  # noqa: E731
    footprint = [at(100, 100), at(100, 101), at(101, 100), at(101, 101)]  # 2 x 2 cells
    near = [at(100, 140), at(130, 101)]   # 0.39 and 0.29 degree of latitude from its edge
    far = [at(100, 170)]                  # 0.69 degree of longitude (0.59 at 31 N)
    d1, d2 = date(2021, 3, 1), date(2021, 3, 2)
    oco_days = {d1: cells(footprint[:1] + near + far, [401.0, 403.0, 405.0, 430.0], sigma=0.5, weight=1.0),
                d2: cells([at(100, 102)], [499.0])}
    gosat_days = {d1: footprints({7: (footprint, 404.0)}), d2: footprints({3: ([at(150, 150)], 400.0)})}
    out = collocations(oco_days, gosat_days, grid, radius_deg=0.5)
    assert out["sounding"].tolist() == [7] and out["day"].tolist() == [d1]
    assert out["oco_cells"].tolist() == [3]  # the one inside and the two near; not the far one
    assert out["oco"].iloc[0] == pytest.approx(403.0)
    assert out["oco_weight"].iloc[0] == pytest.approx(3.0) and out["weight"].iloc[0] == pytest.approx(1.0)
    inside = collocations(oco_days, gosat_days, grid, radius_deg=0.0)
    assert inside["oco_cells"].tolist() == [1] and inside["oco"].iloc[0] == pytest.approx(401.0)
    assert collocations(oco_days, gosat_days).equals(inside)


def test_one_gosat_sounding_is_one_collocation():
    """An 80-cell GOSAT footprint over OCO cells is one collocation against their weighted mean."""
    d1, d2, d3 = date(2021, 3, 1), date(2021, 3, 2), date(2021, 3, 3)
    disc = list(range(100, 180))  # one sounding's ~80 cells
    oco_days = {
        # Three OCO cells inside sounding 0's footprint, one inside sounding 1's, one outside both.
        d1: cells([100, 101, 150, 200, 900], [400.0, 402.0, 404.0, 406.0, 420.0], sigma=[0.5, 0.5, 1.0, 0.5, 0.5],
                  weight=[1 / 3, 1 / 3, 1 / 3, 1.0, 1.0]),
        d2: cells([7], [410.0]),
        d3: cells([9], [411.0]),
    }
    gosat_days = {d1: footprints({0: (disc, 405.0), 1: ([200, 201], 407.0), 2: ([300], 399.0)}),
                  d2: footprints({0: ([8], 409.0)})}
    out = collocations(oco_days, gosat_days)
    assert list(out.columns) == ["day", "sounding", "gosat", "gosat_uncertainty", "oco", "oco_uncertainty",
                                 "oco_weight", "oco_cells", "weight"]
    assert out["day"].tolist() == [d1, d1] and out["sounding"].tolist() == [0, 1]
    assert out["gosat"].tolist() == [405.0, 407.0]
    inverse_variance = np.array([4.0, 4.0, 1.0])
    assert out["oco"].iloc[0] == pytest.approx((inverse_variance * [400.0, 402.0, 404.0]).sum() / 9.0)
    assert out["oco"].iloc[1] == pytest.approx(406.0)
    assert out["oco_weight"].tolist() == pytest.approx([1.0, 1.0])  # one OCO sounding's worth each
    assert out["oco_cells"].tolist() == [3, 1]
    assert out["weight"].tolist() == pytest.approx([1.0, 1.0])  # whole footprints
    assert out["oco_uncertainty"].iloc[0] == pytest.approx(math.sqrt((0.25 + 0.25 + 1.0) / 3))
    assert len(collocations({}, gosat_days)) == 0


def known_bias(n: int, seed: int = 1, gosat_sigma: float = 1.5, oco_sigma: float = 0.5,
               spread: float = 3.0) -> pd.DataFrame:
    """n collocated GOSAT soundings: gosat = 5 + 0.985 * truth, both sides measured with noise.

    The true values spread like a region's seasonal cycle and trend (a few ppm), comparable to
    GOSAT's own errors: the regime where least squares of OCO on GOSAT flattens the slope."""
    rng = np.random.default_rng(seed)
    truth = 412.0 + rng.normal(0.0, spread, n)
    oco = truth + rng.normal(0.0, oco_sigma, n)
    gosat = 5.0 + 0.985 * truth + rng.normal(0.0, gosat_sigma, n)
    start = date(2021, 1, 1)
    return pd.DataFrame({
        "day": [start + timedelta(days=int(i % 40)) for i in range(n)],
        "sounding": np.arange(n, dtype=np.int64),
        "gosat": gosat,
        "gosat_uncertainty": np.full(n, gosat_sigma),
        "oco": oco,
        "oco_uncertainty": np.full(n, oco_sigma),
        "oco_weight": np.ones(n),
        "oco_cells": np.full(n, 3, dtype=np.int64),
        "weight": np.ones(n),
    })


def test_deming_recovers_a_known_line_where_least_squares_attenuates():
    data = known_bias(4000, seed=3)
    fit = fit_gosat_to_oco(data)
    assert fit.method == "deming"
    assert fit.n_collocations == 4000 and fit.n_independent == pytest.approx(4000.0)
    # The true map inverts the bias: oco = (gosat - 5) / 0.985.
    assert fit.slope == pytest.approx(1 / 0.985, abs=0.03)
    for gosat_value in (405.0, 412.0, 420.0):
        assert fit.apply(gosat_value) == pytest.approx((gosat_value - 5.0) / 0.985, abs=0.15)
    # The standard errors are honest: the truth lies within a few of them.
    assert abs(fit.slope - 1 / 0.985) < 4 * fit.slope_se and 0 < fit.slope_se < 0.05
    assert abs(fit.intercept - (-5.0 / 0.985)) < 4 * fit.intercept_se
    assert fit.error_ratio == pytest.approx((0.5 / 1.5) ** 2)
    assert fit.fitted_days == (date(2021, 1, 1), date(2021, 2, 9))
    # Least squares of OCO on GOSAT on the same data: slope attenuated by var(truth) / var(gosat).
    g, o = data["gosat"].to_numpy(), data["oco"].to_numpy()
    ols = np.cov(g, o)[0, 1] / np.var(g, ddof=1)
    assert ols < 0.85 and abs(ols - 1 / 0.985) > 5 * fit.slope_se


def test_jackknife_standard_errors_match_the_scatter_over_repeats():
    slopes, ses = [], []
    for seed in range(30):
        fit = fit_gosat_to_oco(known_bias(200, seed=seed))
        slopes.append(fit.slope)
        ses.append(fit.slope_se)
    assert np.std(slopes) == pytest.approx(np.mean(ses), rel=0.35)


def test_fit_falls_back_to_an_offset_with_few_collocations():
    data = known_bias(10)
    fit = fit_gosat_to_oco(data, min_soundings=20)
    assert fit.method == "offset" and fit.slope == 1.0 and fit.slope_se == 0.0
    difference = (data["oco"] - data["gosat"]).to_numpy()
    assert fit.intercept == pytest.approx(float(difference.mean()))
    assert fit.intercept_se == pytest.approx(float(difference.std(ddof=1) / math.sqrt(10)))
    assert fit.n_collocations == 10


def test_minimum_counts_are_in_independent_soundings():
    # 30 collocations, but each GOSAT footprint only a tenth inside the region: 3 soundings' worth.
    data = known_bias(30)
    data["weight"] = 0.1
    assert fit_gosat_to_oco(data, min_soundings=20).method == "offset"
    data["weight"] = 0.09
    assert fit_gosat_to_oco(data).method == "identity"


def test_fit_is_the_identity_below_three_collocations():
    for n in (0, 2):
        fit = fit_gosat_to_oco(known_bias(n))
        assert (fit.method, fit.intercept, fit.slope, fit.n_collocations) == ("identity", 0, 1, n)
    assert math.isnan(fit_gosat_to_oco(known_bias(0)).rmse)
    assert fit_gosat_to_oco(known_bias(0)).fitted_days is None


def test_fit_guards_against_degenerate_gosat_variance():
    data = known_bias(100)
    data["gosat"] = 410.0
    fit = fit_gosat_to_oco(data)
    assert fit.method == "offset"
    assert fit.intercept == pytest.approx(float(data["oco"].mean()) - 410.0)
    assert math.isfinite(fit.rmse)
    # GOSAT spread no larger than its own errors: the slope would be noise.
    assert fit_gosat_to_oco(known_bias(100, spread=0.5)).method == "offset"


def test_fit_refuses_a_noise_dominated_slope():
    # OCO unrelated to GOSAT: the slope is ~0, which would flatten every mapped GOSAT cell.
    rng = np.random.default_rng(3)
    data = known_bias(200)
    data["oco"] = rng.normal(410.0, 1.0, 200)
    assert fit_gosat_to_oco(data).method == "offset"
    assert fit_gosat_to_oco(data, slope_bounds=None).method == "deming"


def test_fit_id_is_stable_and_changes_with_the_fit():
    data = known_bias(100)
    fit = fit_gosat_to_oco(data)
    assert len(fit.fit_id) == 12
    assert fit_gosat_to_oco(data.copy()).fit_id == fit.fit_id  # same collocations, same id
    assert GosatFit.from_dict(json.loads(json.dumps(fit.to_dict()))).fit_id == fit.fit_id
    more = fit_gosat_to_oco(known_bias(101))
    assert more.fit_id != fit.fit_id  # one more collocation
    changed = data.copy()
    changed.loc[0, "oco"] += 0.5
    assert fit_gosat_to_oco(changed).fit_id != fit.fit_id  # same soundings, another value
    assert fit_gosat_to_oco(data, min_soundings=200).fit_id != fit.fit_id  # another method
    assert GosatFit.identity().fit_id == GosatFit.identity().fit_id
    edited = {**fit.to_dict(), "slope": fit.slope + 0.1}
    with pytest.raises(ValueError, match="fit_id"):
        GosatFit.from_dict(edited)


def test_fit_round_trips_through_json():
    fit = fit_gosat_to_oco(known_bias(100))
    back = GosatFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert back == fit
    identity = GosatFit.identity()
    again = GosatFit.from_dict(json.loads(json.dumps(identity.to_dict())))
    assert again.method == "identity" and math.isnan(again.rmse) and again.fitted_days is None
    with pytest.raises(ValueError, match="method"):
        GosatFit(0.0, 1.0, 0, math.nan, math.nan, "magic")


def test_fuse_day_prefers_oco_and_maps_gosat_elsewhere():
    oco = merge_oco(cells([1, 2], [400.0, 401.0], sigma=0.5), cells([2, 3], [403.0, 404.0]))
    gosat = cells([2, 3, 10, 11], [420.0, 421.0, 410.0, 412.0], sigma=1.5, n=1)
    fit = GosatFit(-5.0, 1.02, 100, 0.5, 0.9, "deming", (date(2021, 1, 1), date(2021, 1, 31)))
    out = fuse_day(oco, gosat, fit)
    assert list(out.columns) == FUSED_COLUMNS
    assert out.dtypes.astype(str).tolist() == FUSED_DTYPES
    assert out["cell"].tolist() == [1, 2, 3, 10, 11]
    assert out["source"].tolist() == ["oco2", "oco2+oco3", "oco3", "gosat", "gosat"]
    assert out["xco2"].tolist() == pytest.approx(
        [400.0, 402.0, 404.0, -5.0 + 1.02 * 410.0, -5.0 + 1.02 * 412.0]
    )
    assert out["xco2_uncertainty"].tolist()[3:] == pytest.approx([1.5 * 1.02, 1.5 * 1.02])
    assert out["fit_id"].tolist() == ["", "", "", fit.fit_id, fit.fit_id]
    assert out["weight"].tolist() == pytest.approx([0.25, 0.5, 0.25, 0.25, 0.25])  # GOSAT keeps its weight


def test_fuse_day_with_missing_sides():
    fit = GosatFit.identity()
    gosat_only = fuse_day(None, cells([5, 4], [410.0, 411.0]), fit)
    assert gosat_only["cell"].tolist() == [4, 5] and set(gosat_only["source"]) == {"gosat"}
    oco_only = fuse_day(merge_oco(cells([1], [400.0]), None), cells([], []), fit)
    assert oco_only["source"].tolist() == ["oco2"]
    nothing = fuse_day(None, None, fit)
    assert len(nothing) == 0 and nothing.dtypes.astype(str).tolist() == FUSED_DTYPES
