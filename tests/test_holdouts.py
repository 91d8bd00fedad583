"""A retrain's holdouts and what is fitted on them (models/holdouts.py), and the model's side of the
design: a network trained on the anomaly from the background, weighted, exported with the mapping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from models.background import fit_background
from models.holdouts import (NetworkShare, anomaly_scale, detrended_r2, fit_field, holdout_scores, map_predict,
                             split_samples)
from models.validation import spatial_block_ids

START = pd.Timestamp("2020-01-01")


def scattered(n: int, seed: int, n_days: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    days = (START + pd.to_timedelta(rng.integers(0, n_days, n), unit="D")).to_numpy()
    return rng.uniform(28, 32, n), rng.uniform(102, 106, n), days


def test_split_holds_out_whole_days_and_whole_blocks_and_halves_them():
    lat, lon, days = scattered(6000, seed=0)
    split = split_samples(lat, lon, days, 0.15, 50.0, seed=3)
    named = {f.name: set(getattr(split, f.name)) for f in dataclasses.fields(split) if f.name != "spatial_is_blocks"}
    names = list(named)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (named[a] & named[b]), (a, b)
    assert sum(len(s) for s in named.values()) == len(lat)  # no cap: every sample somewhere
    assert split.spatial_is_blocks and all(len(s) for s in named.values())
    used = split.training  # fit, early stopping, random
    day_of = pd.to_datetime(pd.Series(days)).dt.date.to_numpy()
    assert not set(day_of[split.whole_days]) & set(day_of[used])
    blocks = spatial_block_ids(lat, lon, 50.0)
    assert not set(blocks[split.spatial]) & set(blocks[used])
    # The halves: whole days apart, whole blocks apart.
    assert not set(day_of[split.days_calibration]) & set(day_of[split.days_score])
    assert not set(blocks[split.blocks_calibration]) & set(blocks[split.blocks_score])
    assert set(split.gate) == named["blocks_score"] | named["days_score"]
    again = split_samples(lat, lon, days, 0.15, 50.0, seed=3)
    assert all(np.array_equal(getattr(split, f), getattr(again, f)) for f in names)
    other = split_samples(lat, lon, days, 0.15, 50.0, seed=4)
    assert not np.array_equal(split.days_score, other.days_score)


def test_split_caps_and_small_regions():
    lat, lon, days = scattered(6000, seed=1)
    capped = split_samples(lat, lon, days, 0.15, 50.0, seed=0, max_training=300, max_validation=50)
    assert len(capped.fit) == 300
    assert all(len(getattr(capped, f)) <= 50 for f in ("early_stopping", "random", "blocks_calibration",
                                                          "blocks_score", "days_calibration", "days_score"))
    # Smaller than one block, two days: nothing to hold out by area or by day, the random holdout still.
    two_days = np.datetime64("2020-01-01") + np.array([0, 1] * 100).astype("timedelta64[D]")
    tiny = split_samples(np.full(200, 30.01), np.full(200, 104.01), two_days, 0.2, 50.0, 0)
    assert not tiny.spatial_is_blocks and len(tiny.spatial) == 0 and len(tiny.whole_days) == 0
    assert len(tiny.random) == 40 and len(tiny.fit) + len(tiny.early_stopping) == 160


def test_anomaly_scale_is_the_share_held_out_data_support():
    rng = np.random.default_rng(2)
    anomaly = rng.normal(0, 1, 4000)
    weight = rng.uniform(0.2, 2, 4000)
    assert anomaly_scale(anomaly, anomaly, weight) == pytest.approx(1.0)
    assert anomaly_scale(0.5 * anomaly + rng.normal(0, 0.2, 4000), anomaly, weight) == pytest.approx(0.5, abs=0.02)
    assert anomaly_scale(rng.normal(0, 1, 4000), anomaly, weight) < 0.05  # covariates that carry nothing
    assert anomaly_scale(-anomaly, anomaly, weight) == 0.0  # never negative
    assert anomaly_scale(3 * anomaly, anomaly, weight) == 1.0  # never more than the network says
    assert anomaly_scale(anomaly, np.zeros(4000), weight) == 0.0
    # Weight 0: not evidence.
    mixed = np.where(np.arange(4000) < 2000, anomaly, -anomaly)
    assert anomaly_scale(mixed, anomaly, np.where(np.arange(4000) < 2000, 1.0, 0.0)) == pytest.approx(1.0)


def test_detrended_r2_scores_what_the_growth_of_co2_does_not_explain():
    rng = np.random.default_rng(3)
    days = (START + pd.to_timedelta(np.arange(1000) % 900, unit="D")).to_numpy()
    t = np.arange(1000) % 900
    trend = 410 + 2.4 * t / 365.25
    signal = rng.normal(0, 0.5, 1000)
    observed = trend + signal
    from models.evaluation import regression_metrics

    assert regression_metrics(observed, trend)["r2"] > 0.8  # the growth alone flatters plain R2
    assert abs(detrended_r2(observed, trend, days)) < 0.05
    assert detrended_r2(observed, observed, days) == pytest.approx(1.0)
    assert detrended_r2(observed, trend + 0.8 * signal, days) == pytest.approx(0.96, abs=0.02)
    assert np.isnan(detrended_r2(observed[:5], trend[:5], np.full(5, days[0])))


def test_holdout_scores_per_source_and_coverage():
    observed = np.array([410.0, 411.0, 412.0, 413.0])
    predicted = np.array([410.5, 411.0, 411.0, 413.0])
    days = (START + pd.to_timedelta(np.arange(4), unit="D")).to_numpy()
    scores = holdout_scores(observed, predicted, np.full(4, 0.6), days, np.array(["oco2", "oco2", "gosat", "oco2+oco3"]))
    assert scores["coverage68"] == 0.75 and scores["n"] == 4
    assert scores["rmse_gosat"] == pytest.approx(1.0) and scores["n_gosat"] == 1
    assert scores["rmse_oco2"] == pytest.approx(np.sqrt(0.25 / 2)) and scores["n_oco2_oco3"] == 1
    assert "r2_detrended" in scores
    assert "coverage68" not in holdout_scores(observed, predicted, None, days)
    # One sounding counts once: the GOSAT cell outside the band is one of ~80 copies of its sounding.
    weighted = holdout_scores(observed, predicted, np.full(4, 0.6), days, weight=np.array([1.0, 1.0, 1 / 80, 1.0]))
    assert weighted["coverage68"] == pytest.approx(3 / (3 + 1 / 80))


def test_field_fitted_on_training_residuals_is_calibrated_on_the_held_out_halves():
    """Residuals with a shared level per day: the map (model + field) beats the model on held-out
    blocks, and its interval holds ~68% on the scoring halves it never saw."""
    rng = np.random.default_rng(4)
    n = 320  # the ML fit is n^3: small keeps the test fast
    lat, lon, days = scattered(n, seed=5, n_days=20)
    day_index = ((days - START.to_datetime64()) / np.timedelta64(1, "D")).astype(int)
    day_level = rng.normal(0, 1.0, 20)
    residual = day_level[day_index] + 0.3 * np.sin(lon * 3) + rng.normal(0, 0.4, n)
    frame = pd.DataFrame({"latitude": lat, "longitude": lon, "day": days, "weight": np.ones(n)})
    split = split_samples(lat, lon, days, 0.15, 50.0, seed=0)
    fitted = fit_field(frame, residual, split.training, {"spatial blocks": split.blocks_calibration,
                                                          "whole days": split.days_calibration}, seed=0)
    assert set(fitted.calibration_coverage) == {"spatial blocks", "whole days"}
    model = 410.0 + np.zeros(n)
    observed = model + residual
    blocks = split.blocks_score
    predicted, half_width = map_predict(fitted, frame, model[blocks], blocks)
    assert np.sqrt(np.mean((predicted - observed[blocks]) ** 2)) < 0.7 * np.sqrt(np.mean(residual[blocks] ** 2))
    assert 0.55 < np.mean(np.abs(predicted - observed[blocks]) <= half_width) < 0.8
    # The field never sees the held-out residuals: changing them changes nothing it predicts.
    changed = residual.copy()
    changed[split.spatial] += 50.0
    refit = fit_field(frame, changed, split.training, {}, seed=0)
    assert refit.field == dataclasses.replace(fitted.field, interval_scale=1.0, noise_scale=1.0)


# -- the network on the background ---------------------------------------------------------------------

def _covariates(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from tasks.covariates.features import FEATURE_NAMES

    names = list(FEATURE_NAMES)
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, len(names))).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, n)
    X[:, names.index("years_since_2015")] = rng.uniform(5, 6, n)
    X[:, names.index("doy_sin")], X[:, names.index("doy_cos")] = np.sin(angle), np.cos(angle)
    X[:, names.index("latitude")] = rng.uniform(28, 32, n)
    X[:, names.index("longitude")] = rng.uniform(102, 106, n)
    y = (412 + 2.4 * (X[:, names.index("years_since_2015")] - 5) + 2 * np.sin(angle) + 0.5 * X[:, 0]
         + rng.normal(0, 0.3, n)).astype(np.float64)
    return X, y, names


@pytest.fixture(scope="module")
def trained_on_background():
    from models.training import TrainingConfig, train_resnet_lstm

    X, y, names = _covariates(320, seed=6)
    background = fit_background(X[:256], y[:256], names)
    trained = train_resnet_lstm(X[:256], y[:256], X[256:], y[256:], names, "test-v1",
                                TrainingConfig(max_epochs=1, batch_size=128, device="cpu"), background=background)
    return trained, X, names


def test_a_model_on_a_background_exports_it_and_its_mapping(trained_on_background, tmp_path):
    from models.background import Background
    from models.onnx_export import export_onnx
    from models.onnx_session import read_metadata
    from models.residual_field import ResidualField
    from tasks.mapping.onnx_runtime import OnnxPredictor

    trained, X, names = trained_on_background
    field = ResidualField(0.8, 60.0, 3.0, 0.2, 400.0, 20.0, 0.05, 0.1, interval_scale=1.1, clip_ppm=2.0)
    trained = dataclasses.replace(trained, anomaly_scale=0.4, residual_field=field)
    background = trained.background.evaluate_features(X, names)
    network = dataclasses.replace(trained, background=None).predict(X)
    # background + scale x anomaly, anomaly = what the network alone (no background) outputs
    assert np.allclose(trained.predict(X), background + 0.4 * network, atol=1e-3)
    path = export_onnx(trained, tmp_path / "model.onnx")
    onnx_out = OnnxPredictor(path, prefer_cuda=False).run(X)["xco2"]
    assert np.abs(onnx_out - trained.predict(X)).max() < 1e-3
    mapping = read_metadata(path)["mapping"]
    assert mapping["anomaly_scale"] == pytest.approx(0.4)
    assert Background.from_dict(mapping["background"]) == trained.background
    assert ResidualField.from_dict(mapping["residual_field"]) == field


def test_a_sample_of_weight_zero_has_no_influence():
    from models.training import TrainingConfig, train_resnet_lstm

    X, y, names = _covariates(160, seed=7)
    weight = np.ones(128)
    weight[17] = 0.0
    config = TrainingConfig(max_epochs=1, batch_size=64, device="cpu")

    def losses(target_17: float) -> list[tuple[float, float]]:
        y_train = y[:128].copy()
        y_train[17] = target_17
        trained = train_resnet_lstm(X[:128], y_train, X[128:], y[128:], names, "test-v1", config,
                                    sample_weight=weight)
        return [(h["train_loss"], h["val_loss"]) for h in trained.history]

    unchanged = losses(y[17])
    assert unchanged == losses(y[17] + 40.0)
    weight[17] = 1.0  # the same change, counted, does change training
    assert unchanged != losses(y[17] + 40.0)
    for bad in (-weight, 0 * weight):
        with pytest.raises(ValueError, match="sample_weight"):
            train_resnet_lstm(X[:128], y[:128], X[128:], y[128:], names, "test-v1", config, sample_weight=bad)


def _share_candidates(rng: np.random.Generator, n_days: int, per_day: int, gain: float):
    """Three shares over the same held-out points: share 1 removes `gain` of a real anomaly's
    variance, share 0.5 half of it; every day has its own track level (shared by its points)."""
    day = np.repeat(np.arange(n_days, dtype=float), per_day)
    level = rng.normal(0, 1.0, n_days)[day.astype(int)]
    anomaly = rng.normal(0, 1.0, len(day))
    observed = level + np.sqrt(gain) * anomaly + rng.normal(0, 0.5, len(day))
    candidates = [(share, {"whole days": (observed - share * np.sqrt(gain) * anomaly, np.zeros(len(day)))})
                  for share in (0.0, 0.5, 1.0)]
    return candidates, {"whole days": day}


def test_simplest_share_keeps_the_network_only_when_the_data_clearly_prefer_it():
    from models.holdouts import simplest_share

    rng = np.random.default_rng(7)
    # A real anomaly, many days: the network's full share is clearly better.
    candidates, days = _share_candidates(rng, 60, 40, gain=1.0)
    assert simplest_share(candidates, days) == 1.0
    # Nothing real: share 1 only moves the days' errors up and down, 1 % ahead on average by
    # chance: share 0.
    day = np.repeat(np.arange(20, dtype=float), 10)
    e0 = rng.normal(0, 1.0, 20)[day.astype(int)] + rng.normal(0, 0.5, len(day))
    even, odd = np.sum(e0[day % 2 == 0] ** 2), np.sum(e0[day % 2 == 1] ** 2)
    # Even days' errors grow by 20 %; odd days' shrink just enough to put share 1 1 % ahead.
    shrink = 1 - np.sqrt(1 - (0.44 * even + 0.01 * (even + odd)) / odd)
    change = np.where(day % 2 == 0, 0.2, -shrink)
    noise = [(0.0, {"whole days": (e0, np.zeros(len(day)))}),
             (1.0, {"whole days": (e0 * (1 + change), np.zeros(len(day)))})]
    assert np.mean((e0 * (1 + change)) ** 2) < np.mean(e0 ** 2)  # share 1 is ahead...
    assert simplest_share(noise, {"whole days": day}) == 0.0  # ...but not clearly
    # The best share is the smallest one: it is kept.
    assert simplest_share(candidates[:1], days) == 0.0
    with pytest.raises(ValueError):
        simplest_share([], days)


def test_cross_validation_takes_each_folds_residuals_from_a_model_that_never_saw_it():
    """With residual_without, every fold is predicted from residuals of a refit without it: the
    rest handed over never holds a sample of the fold scored, and each fold's residuals are used."""
    rng = np.random.default_rng(8)
    n = 320
    lat, lon, days = scattered(n, seed=9, n_days=20)
    residual = rng.normal(0, 1.0, n)
    frame = pd.DataFrame({"latitude": lat, "longitude": lon, "day": days, "weight": np.ones(n)})
    split = split_samples(lat, lon, days, 0.15, 50.0, seed=0)
    rests = []

    def residual_without(rest: np.ndarray) -> np.ndarray:
        rests.append(np.asarray(rest))
        return residual + 100.0  # a refit that is far off: the calibration must see it

    plain = fit_field(frame, residual, split.training, {}, seed=0, cross_validate=True)
    refit = fit_field(frame, residual, split.training, {}, seed=0, cross_validate=True,
                      residual_without=residual_without)
    assert len(rests) == 6  # 3 folds of blocks, 3 of days
    training = set(split.training)
    for rest in rests:
        assert set(rest) < training and len(rest) < len(training)
    # Per grouping the three rests leave out disjoint folds that together cover the training samples.
    for group in (rests[:3], rests[3:]):
        left_out = [training - set(rest) for rest in group]
        assert set().union(*left_out) == training and sum(len(s) for s in left_out) == len(training)
    # The same field, but the offset residuals sit far outside its predictions: a much wider interval.
    assert refit.field.interval_scale > 10 * plain.field.interval_scale


def test_the_deployed_background_never_sees_the_gate(trained_on_background):
    """background_for_maps refits the background on every sample but the scoring halves: changing
    the gate's observations changes nothing deployed, changing any other sample's does."""
    from models.holdouts import Holdouts, fit_field
    from tasks.steps.retrain import background_for_maps

    trained, X, names = trained_on_background
    n = len(X)
    rng = np.random.default_rng(10)
    idx = rng.permutation(n)
    split = Holdouts(fit=np.sort(idx[:160]), early_stopping=np.sort(idx[160:200]), random=np.sort(idx[200:220]),
                     blocks_calibration=np.sort(idx[220:250]), blocks_score=np.sort(idx[250:280]),
                     days_calibration=np.sort(idx[280:300]), days_score=np.sort(idx[300:]), spatial_is_blocks=True)
    assert set(split.all_but_gate) == set(range(n)) - set(split.gate)
    days = (START + pd.to_timedelta(rng.integers(0, 30, n), unit="D")).to_numpy()
    frame = pd.DataFrame({"latitude": X[:, names.index("latitude")], "longitude": X[:, names.index("longitude")],
                          "day": days, "weight": np.ones(n)})
    _, y, _ = _covariates(320, seed=6)
    field_fit = fit_field(frame, y - trained.predict(X), split.training, {}, seed=0)

    def deployed(y_now: np.ndarray):
        model, fit = background_for_maps(trained, field_fit, X, y_now, frame, split)
        return model.background, fit.observations

    before, obs = deployed(y)
    assert before != trained.background and before.n_fit == len(split.all_but_gate)
    assert len(obs) > len(field_fit.observations)  # the calibration halves now inform the field too
    gate_changed = y.copy()
    gate_changed[split.gate] += 30.0
    after, obs_after = deployed(gate_changed)
    assert after == before and np.array_equal(obs_after.residual, obs.residual)
    other_changed = y.copy()
    other_changed[split.days_calibration] += 30.0
    assert deployed(other_changed)[0] != before


def test_the_network_share_reads_in_plain_words():
    # Share 0, as on every real box measured: the maps leave the network out, and every reading says so.
    unused = NetworkShare(0.0, with_field=True)
    assert not unused.network_used
    assert unused.reading == ("network share 0.00: the maps are background + daily-anomaly field "
                              "(the network is not used)")
    assert unused.in_map == "no (share 0.00: maps are background + daily-anomaly field)"
    assert unused.sentence == ("Network share 0.00: this version's maps are background + daily-anomaly field; "
                               "its network is not used.")
    half = NetworkShare(0.5, with_field=True)
    assert half.network_used
    assert half.reading == ("network share 0.50: the maps are background + 0.50 x network anomaly + "
                            "daily-anomaly field")
    assert half.in_map == "yes (share 0.50: maps are background + 0.50 x network anomaly + daily-anomaly field)"
    # Too few observations for a field: the model maps alone.
    assert NetworkShare(0.0, with_field=False).reading == ("network share 0.00: the maps are background "
                                                           "(the network is not used)")
    # Without a background the network is the whole map, whatever its share says.
    alone = NetworkShare(1.0, with_field=False, with_background=False)
    assert alone.network_used and alone.in_map == "yes (share 1.00: maps are network)"
    assert half.to_dict() == {"share": 0.5, "network_used": True, "in_map": half.in_map, "reading": half.reading}


def test_the_network_share_of_a_trained_model():
    @dataclasses.dataclass
    class Trained:
        anomaly_scale: float = 0.0
        residual_field: object = "field"
        background: object = "background"

    assert NetworkShare.of(Trained()) == NetworkShare(0.0, with_field=True, with_background=True)
    assert NetworkShare.of(Trained(1.0, None, None)) == NetworkShare(1.0, with_field=False, with_background=False)
