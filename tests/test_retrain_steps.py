"""The retrain's choices that are not training (tasks/steps/retrain_results.py), without Prefect: the
training data's minimum, the gate's data, what is logged to MLflow and reported."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from models.holdouts import Holdouts
from tasks.settings import load_settings
from tasks.steps import retrain_results as steps
from tasks.steps.retrain import NotEnoughSamples, training_data


def _split(gate=True) -> Holdouts:
    a = np.arange
    return Holdouts(fit=a(0, 10), early_stopping=a(10, 12), random=a(12, 15),
                    blocks_calibration=a(15, 17) if gate else a(0), blocks_score=a(17, 19) if gate else a(0),
                    days_calibration=a(19, 20) if gate else a(0), days_score=a(20, 22) if gate else a(0),
                    spatial_is_blocks=gate)


SCORES = {"spatial blocks": {"rmse": 1.5, "r2": 0.5, "r2_detrended": 0.4, "slope": 0.9, "mae": 1.2, "bias": 0.1,
                             "n": 4, "coverage68": 0.7},
          "random (optimistic)": {"rmse": 1.0, "r2": 0.8, "r2_detrended": 0.7, "slope": 1.0, "mae": 0.8, "bias": 0.0,
                                  "n": 3}}


def test_the_gate_uses_the_scoring_halves_else_the_random_holdout():
    idx, label = steps.gate_data(_split())
    assert label == "scoring halves of held-out blocks and days" and list(idx) == list(_split().gate)
    idx, label = steps.gate_data(_split(gate=False))
    assert label == "random holdout" and list(idx) == [12, 13, 14]


def test_headline_and_mlflow_metrics():
    assert steps.headline(SCORES) is SCORES["spatial blocks"]
    assert steps.headline({"random (optimistic)": SCORES["random (optimistic)"]})["rmse"] == 1.0
    m = steps.metrics_for_mlflow(SCORES)
    assert m["rmse"] == 1.5 and m["n"] == 4  # the headline, unprefixed
    assert m["blocks_rmse"] == 1.5 and m["random_optimistic_rmse"] == 1.0 and m["blocks_coverage68"] == 0.7
    assert "days_rmse" not in m


def test_heldout_table_labels_and_rounds():
    rows = steps.heldout_table({"spatial blocks": {"rmse": 1.234567, "n": 4}})
    assert rows == [{"holdout": steps.HOLDOUT_LABELS["spatial blocks"], "rmse": 1.2346, "n": 4.0}]


def test_too_few_samples_say_so(tmp_path):
    with pytest.raises(NotEnoughSamples, match="run the daily flow first"):
        training_data(tmp_path)


def test_baseline_params_leave_out_the_network():
    from models.baselines import Budget

    params = steps.baseline_params(["resnet_lstm", "random_forest"], Budget.cpu())
    assert set(params) == {"random_forest"} and params["random_forest"]


@dataclass
class _Trained:
    n_train: int = 10
    n_val: int = 2
    best_epoch: int = 3
    history: list = field(default_factory=lambda: [1, 2, 3, 4])
    anomaly_scale: float = 0.5
    residual_field: object = None
    background: object = "background"


@dataclass
class _Version:
    version: int = 7


@dataclass
class _Decision:
    alias: str = "champion"
    reason: str = "better by 0.2 ppm"


def test_report_says_what_was_trained_scored_and_decided():
    md = steps.report_markdown(load_settings(), _Version(), _Decision(), _Trained(), _split(), SCORES, None, 1e-6,
                               "random holdout", [("loss curves", "s3://x/loss_curves.png")], "| a |")
    assert md.startswith("# Retrain ") and " v7\n" in md.splitlines()[0] + "\n"
    assert "- samples: 10 fit / 2 early stopping / 3 random / 4 in held-out blocks / 3 on held-out days" in md
    assert f"| {steps.HOLDOUT_LABELS['spatial blocks']} | 1.500 | 0.500 | 0.400 | +0.100 | 70.0% | 4 |" in md
    assert "daily-anomaly field: none" in md
    assert "- **network share 0.50: the maps are background + 0.50 x network anomaly** " in md
    assert "alias **champion** (better by 0.2 ppm)" in md
    assert "- [loss curves](s3://x/loss_curves.png)" in md and md.endswith("## Model comparison\n\n| a |\n")


def test_the_run_result_says_whether_the_maps_use_the_network():
    @dataclass
    class Decision(_Decision):
        previous_champion_version: int | None = None

    @dataclass
    class Version(_Version):
        run_id: str = "abc"

    trained = _Trained(anomaly_scale=0.0, residual_field=_Field())
    result = steps.run_result(Version(), Decision(), SCORES, "random holdout", 1e-6, trained, {}, None, [])
    assert result["anomaly_scale"] == 0.0
    assert result["network_share"] == {
        "share": 0.0, "network_used": False,
        "in_map": "no (share 0.00: maps are background + daily-anomaly field)",
        "reading": "network share 0.00: the maps are background + daily-anomaly field (the network is not used)"}


@dataclass
class _Field:
    def to_dict(self) -> dict:
        return {"window_days": 15}


class _GaussianModel:
    """A model whose own interval (no field) is a calibrated sigma of 1 ppm for data of unit noise."""

    spread = "calibrated"

    def predict(self, X):
        return np.zeros(len(X))

    def predict_uncertainty(self, X):
        return np.ones(len(X))


def test_the_reliability_of_both_intervals_on_the_scoring_halves(tmp_path):
    import pandas as pd

    n = 4000
    rng = np.random.default_rng(5)
    a = np.arange
    split = Holdouts(fit=a(0, 10), early_stopping=a(10, 12), random=a(12, 15), blocks_calibration=a(15, 20),
                     blocks_score=a(20, 2000), days_calibration=a(0), days_score=a(2000, n), spatial_is_blocks=True)
    truth = rng.normal(0, 0.6, n)  # the map (0) misses the true column by 0.6 ppm sd
    y = truth + rng.normal(0, 0.8, n)  # and a retrieval adds 0.8 ppm: sd 1, as the model's interval says
    df = pd.DataFrame({"weight": np.ones(n), "cell": a(n), "latitude": rng.uniform(30, 32, n),
                       "longitude": rng.uniform(103, 105, n),
                       "day": np.datetime64("2020-01-01") + rng.integers(0, 10, n).astype("timedelta64[D]")})
    X = np.zeros((n, 1))
    curves = steps.reliability_of_holdouts(_GaussianModel(), None, X, y, df, split)
    # Each 68 % coverage with its chance range over the units that share an error: blocks, days.
    blocks, days = (c.range68 for c in curves)
    assert blocks is not None and blocks.unit == "blocks" and blocks.groups >= 4
    assert days is not None and days.unit == "days" and days.groups == 10
    assert days.low <= curves[1].observed[1] <= days.high
    assert [c.name for c in curves] == ["retrieval interval vs retrievals, spatial blocks",
                                        "retrieval interval vs retrievals, whole days"]
    for c in curves:
        assert c.observed == pytest.approx((0.50, 0.6827, 0.90, 0.95), abs=0.04)
    with_truth = steps.reliability_of_holdouts(_GaussianModel(), None, X, y, df, split,
                                               truth=lambda cells, days: truth[cells],
                                               true_column=lambda idx: np.full(len(idx), 0.6))
    true_curves = [c for c in with_truth if c.name.startswith("true column vs truth")]
    assert len(true_curves) == 2 and all(c.observed == pytest.approx((0.5, 0.6827, 0.9, 0.95), abs=0.04)
                                         for c in true_curves)
    # A model without a calibrated true-column interval: only the retrieval interval is drawn.
    assert len(steps.reliability_of_holdouts(_GaussianModel(), None, X, y, df, split, truth=lambda c, d: truth[c],
                                             true_column=lambda idx: None)) == 2
    png = steps.reliability_figure(with_truth, tmp_path / steps.RELIABILITY_PNG, truth=True)
    assert png.read_bytes()[:4] == b"\x89PNG"
    md = steps.report_markdown(load_settings(), _Version(), _Decision(), _Trained(), _split(), SCORES, None, 1e-6,
                               "random holdout", [], None, with_truth)
    assert "## Reliability of the intervals (scoring halves)" in md
    assert "| true column vs truth, whole days |" in md


def test_the_true_column_defaults_to_the_archive_s_band_3(monkeypatch):
    """With a field, the true column's half-width comes from models.holdouts.map_true_column with
    the model's background (what band 3 of the archive shows)."""
    import pandas as pd

    n = 30
    a = np.arange
    split = Holdouts(fit=a(0, 5), early_stopping=a(0), random=a(0), blocks_calibration=a(0),
                     blocks_score=a(5, 15), days_calibration=a(0), days_score=a(15, n), spatial_is_blocks=True)
    df = pd.DataFrame({"weight": np.ones(n), "cell": a(n), "latitude": np.linspace(30, 31, n),
                       "longitude": np.full(n, 104.0), "day": np.repeat(np.datetime64("2020-01-01"), n)})
    calls = []

    def fake_true_column(field_fit, frame, background, idx):
        calls.append((field_fit, background, tuple(idx)))
        return np.full(len(idx), 0.5)

    monkeypatch.setattr(steps, "archive_view", lambda trained, ff, X, d, idx: (np.zeros(len(idx)), np.ones(len(idx))))
    monkeypatch.setattr(steps, "map_true_column", fake_true_column)
    field_fit = object()
    curves = steps.reliability_of_holdouts(_Trained(), field_fit, np.zeros((n, 1)), np.zeros(n), df, split,
                                           truth=lambda cells, days: np.full(len(cells), 1.0))
    assert [c.name for c in curves][1::2] == ["true column vs truth, spatial blocks", "true column vs truth, whole days"]
    assert calls[0] == (field_fit, "background", tuple(range(5, 15)))
    assert curves[1].observed == (0.0, 0.0, 0.0, 0.0)  # errors of 1 ppm outside 0.5 ppm x 1.96 everywhere


def test_the_logged_parameters_need_the_background_they_name():
    # The retrain's network always learns the anomaly from a background; a model without one is
    # refused by name rather than failing on its missing coefficients.
    with pytest.raises(ValueError, match="background's coefficients"):
        steps.training_params(load_settings(), None, _split(), _Trained(background=None), "fit-1", "random holdout")
