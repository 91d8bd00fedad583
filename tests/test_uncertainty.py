"""The per-cell uncertainty: spread network, calibration, coverage, and its ONNX output."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from models.evaluation import random_split
from models.onnx_contract import INPUT_NAME, OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME
from models.onnx_export import check_onnx_parity, export_onnx
from models.onnx_session import read_metadata
from models.scaling import Scalers
from models.training import TrainingConfig, train_resnet_lstm
from models.uncertainty import NOMINAL_COVERAGE, calibrate, coverage, fit_spread


def heteroscedastic(n: int, seed: int):
    """Residuals whose spread grows with |x0|: the network has to find where errors are large."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)) * np.array([1, 5, 0.1, 1, 1, 20, 1, 1])
    sigma = 0.3 + 0.8 * np.abs(X[:, 0])
    return X, rng.normal(scale=sigma), sigma


def test_spread_learns_where_errors_are_large_and_calibrates_to_68_percent():
    X, r, sigma = heteroscedastic(6000, 0)
    scalers = Scalers.fit(X, r + 400)
    spread = fit_spread(X[:3000], r[:3000], scalers, seed=1, epochs=40)
    spread = calibrate(spread, X[3000:4500], r[3000:4500], scalers)
    u = spread.uncertainty(X[4500:], scalers)
    assert np.corrcoef(u, sigma[4500:])[0, 1] > 0.8
    assert 0.60 <= coverage(r[4500:], u) <= 0.76
    # A constant interval of the same average width covers the large errors worse: the
    # heteroscedastic one is the sounder statement per cell.
    constant = np.full_like(u, np.quantile(np.abs(r[3000:4500]), NOMINAL_COVERAGE))
    big = np.abs(X[4500:, 0]) > 1.5
    assert coverage(r[4500:][big], u[big]) > coverage(r[4500:][big], constant[big])


def test_calibration_and_coverage_reject_bad_input():
    X, r, _ = heteroscedastic(200, 1)
    scalers = Scalers.fit(X, r)
    spread = fit_spread(X, r, scalers, epochs=2)
    with pytest.raises(ValueError, match="calibration needs"):
        calibrate(spread, X[:5], r[:5], scalers)
    with pytest.raises(ValueError, match="non-finite"):
        fit_spread(X, np.where(np.arange(200) == 3, np.nan, r), scalers)
    with pytest.raises(ValueError, match="must match"):
        coverage(r[:10], r[:9])


def test_onnx_export_carries_the_calibrated_uncertainty_as_a_second_output(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 20)).astype(np.float32)
    y = 410 + X[:, 0] + rng.normal(scale=0.2, size=400)
    fit, val = random_split(len(y), 0.25, seed=2)
    names = [f"cov_{i}" for i in range(20)]
    trained = train_resnet_lstm(X[fit], y[fit], X[val], y[val], names, "toy-v1",
                                TrainingConfig(max_epochs=2, batch_size=64))
    residuals = y[val] - trained.predict(X[val])
    spread = calibrate(fit_spread(X[val], residuals, trained.scalers, epochs=5), X[val], residuals, trained.scalers)
    with_uncertainty = dataclasses.replace(trained, spread=spread)

    path = export_onnx(with_uncertainty, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, UNCERTAINTY_OUTPUT_NAME]
    xco2, uncertainty = session.run(None, {INPUT_NAME: X[:13]})
    assert xco2.shape == uncertainty.shape == (13,)
    assert (uncertainty > 0).all()
    np.testing.assert_allclose(uncertainty, with_uncertainty.predict_uncertainty(X[:13]), atol=1e-4)
    assert check_onnx_parity(with_uncertainty, path, X[:50]) <= 1e-3
    assert read_metadata(path)["uncertainty"]["scale"] == pytest.approx(spread.scale)

    plain = export_onnx(trained, tmp_path / "plain.onnx")  # no spread model: one output, as before
    assert [o.name for o in ort.InferenceSession(str(plain)).get_outputs()] == [OUTPUT_NAME]
    assert read_metadata(plain)["uncertainty"] is None
