"""Steps 1-2 of the paper's fusion on small hand-built cell tables."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.fusion import (
    FUSED_COLUMNS,
    GosatFit,
    collocations,
    fit_gosat_to_oco,
    fuse_day,
    merge_oco,
)

FUSED_DTYPES = ["int64", "float64", "float64", "int32", "str"]


def cells(cell, xco2, sigma=0.5, n=1) -> pd.DataFrame:
    k = len(cell)
    return pd.DataFrame({
        "cell": np.asarray(cell, dtype=np.int64),
        "xco2": np.asarray(xco2, dtype=np.float64) * np.ones(k),
        "xco2_uncertainty": np.asarray(sigma, dtype=np.float64) * np.ones(k),
        "n_soundings": (np.asarray(n) * np.ones(k)).astype(np.int32),
    })


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


def test_collocations_are_the_cell_days_both_observe():
    d1, d2, d3 = date(2021, 3, 1), date(2021, 3, 2), date(2021, 3, 3)
    oco_days = {d1: cells([1, 2, 3], [400.0, 401.0, 402.0]), d2: cells([7], [410.0]),
                d3: cells([9], [411.0])}
    gosat_days = {d1: cells([2, 3, 4], [405.0, 406.0, 407.0]), d2: cells([8], [409.0])}
    out = collocations(oco_days, gosat_days)
    assert list(out.columns) == ["day", "cell", "gosat", "oco"]
    assert out["day"].tolist() == [d1, d1]
    assert out["cell"].tolist() == [2, 3]
    assert out["gosat"].tolist() == [405.0, 406.0]
    assert out["oco"].tolist() == [401.0, 402.0]
    assert len(collocations({}, gosat_days)) == 0


def known_bias(n: int, seed: int = 1) -> pd.DataFrame:
    """Collocations with gosat = 5 + 0.985 * oco + noise over n cell-days."""
    rng = np.random.default_rng(seed)
    oco = rng.uniform(395.0, 430.0, n)
    gosat = 5.0 + 0.985 * oco + rng.normal(0.0, 0.3, n)
    start = date(2021, 1, 1)
    return pd.DataFrame({
        "day": [start + timedelta(days=int(i % 40)) for i in range(n)],
        "cell": np.arange(n, dtype=np.int64),
        "gosat": gosat,
        "oco": oco,
    })


def test_fit_recovers_a_known_linear_bias():
    data = known_bias(2000)
    fit = fit_gosat_to_oco(data)
    assert fit.method == "ols"
    assert fit.n_collocations == 2000
    # OCO regressed on GOSAT inverts the bias: oco = (gosat - 5) / 0.985.
    assert fit.slope == pytest.approx(1 / 0.985, abs=0.005)
    for gosat_value in (400.0, 415.0, 430.0):
        assert fit.apply(gosat_value) == pytest.approx((gosat_value - 5.0) / 0.985, abs=0.05)
    assert fit.rmse == pytest.approx(0.3 / 0.985, rel=0.1)
    assert fit.r2 > 0.99
    assert fit.fitted_days == (date(2021, 1, 1), date(2021, 2, 9))


def test_fit_falls_back_to_an_offset_with_few_collocations():
    data = known_bias(10)
    fit = fit_gosat_to_oco(data, min_collocations=30)
    assert fit.method == "offset" and fit.slope == 1.0
    assert fit.intercept == pytest.approx(float((data["oco"] - data["gosat"]).mean()))
    assert fit.n_collocations == 10


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


def test_fit_refuses_a_noise_dominated_slope():
    # OCO unrelated to GOSAT: the OLS slope is ~0, which would flatten every mapped GOSAT cell.
    rng = np.random.default_rng(3)
    data = known_bias(200)
    data["oco"] = rng.normal(410.0, 1.0, 200)
    assert fit_gosat_to_oco(data).method == "offset"
    assert fit_gosat_to_oco(data, slope_bounds=None).method == "ols"


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
    fit = GosatFit(-5.0, 1.02, 100, 0.5, 0.9, "ols", (date(2021, 1, 1), date(2021, 1, 31)))
    out = fuse_day(oco, gosat, fit)
    assert list(out.columns) == FUSED_COLUMNS
    assert out.dtypes.astype(str).tolist() == FUSED_DTYPES
    assert out["cell"].tolist() == [1, 2, 3, 10, 11]
    assert out["source"].tolist() == ["oco2", "oco2+oco3", "oco3", "gosat", "gosat"]
    assert out["xco2"].tolist() == pytest.approx(
        [400.0, 402.0, 404.0, -5.0 + 1.02 * 410.0, -5.0 + 1.02 * 412.0]
    )
    assert out["xco2_uncertainty"].tolist()[3:] == pytest.approx([1.5 * 1.02, 1.5 * 1.02])


def test_fuse_day_with_missing_sides():
    fit = GosatFit.identity()
    gosat_only = fuse_day(None, cells([5, 4], [410.0, 411.0]), fit)
    assert gosat_only["cell"].tolist() == [4, 5] and set(gosat_only["source"]) == {"gosat"}
    oco_only = fuse_day(merge_oco(cells([1], [400.0]), None), cells([], []), fit)
    assert oco_only["source"].tolist() == ["oco2"]
    nothing = fuse_day(None, None, fit)
    assert len(nothing) == 0 and nothing.dtypes.astype(str).tolist() == FUSED_DTYPES
